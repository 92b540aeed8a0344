"""Python and Rust processes share one lock and one queue through one server: no increment is
lost or doubled, fencing tokens strictly increase, and every item is done exactly once."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

import swarmstate

from conftest import cargo_binary

HERE = Path(__file__).resolve().parent
AGENTS_PER_LANGUAGE = 2
ROUNDS = 8
ITEMS = 30


@pytest.fixture(scope="session")
def rust_agent() -> Path:
    return cargo_binary("SWARMSTATE_INTEROP_AGENT",
                        ["-p", "swarmstate", "--example", "interop_agent"],
                        "examples/interop_agent")


def test_python_and_rust_agents_share_one_lock_and_one_queue(make_server, rust_agent: Path) -> None:  # type: ignore[no-untyped-def]
    server = make_server()
    prefix = "interop"
    with swarmstate.Client(server.url) as client:
        for i in range(ITEMS):
            assert client.enqueue(f"{prefix}.jobs", f"item-{i:02}", f"payload {i}")

    commands = {}
    for n in range(AGENTS_PER_LANGUAGE):
        commands[f"rust-{n}"] = [str(rust_agent), server.url, f"rust-{n}", prefix, str(ROUNDS)]
        commands[f"python-{n}"] = [sys.executable, str(HERE / "interop_agent.py"), server.url,
                                   f"python-{n}", prefix, str(ROUNDS)]
    processes = {
        name: subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for name, command in commands.items()
    }
    outputs = {}
    for name, process in processes.items():
        out, err = process.communicate(timeout=100)
        assert process.returncode == 0, f"{name} exited {process.returncode}: {err}"
        outputs[name] = out.splitlines()

    increments = sorted(
        int(line.split()[1]) for out in outputs.values() for line in out
        if line.startswith("increment ")
    )
    total = 2 * AGENTS_PER_LANGUAGE * ROUNDS
    assert increments == list(range(1, total + 1)), "an increment was lost or doubled"

    done = sorted(line.split()[1] for out in outputs.values() for line in out
                  if line.startswith("done "))
    assert done == [f"item-{i:02}" for i in range(ITEMS)], "an item was done twice or never"

    with swarmstate.Client(server.url) as client:
        assert client.get(f"{prefix}.counter").value == str(total).encode()  # type: ignore[union-attr]
        log = [client.get(f"{prefix}.log.{n}") for n in range(1, total + 1)]
        tokens = [int(entry.text.split()[0]) for entry in log if entry]
        holders = {entry.text.split()[1].split("-")[0] for entry in log if entry}
        assert len(tokens) == total and tokens == sorted(set(tokens)), "tokens must strictly increase"
        assert holders == {"rust", "python"}
        items = client.queue_items(f"{prefix}.jobs")
        assert [item.state for item in items] == ["done"] * ITEMS
        assert all(item.attempts == 1 for item in items)
        results = list(client.iter_entries(f"{prefix}.done.*"))
        assert len(results) == ITEMS
