"""Fixtures: a real ``swarmstate serve`` process on a free loopback port, stopped by PID.

The binary is ``$SWARMSTATE_BIN``, or built with ``cargo build -p swarmstate-cli`` into
``$CARGO_TARGET_DIR`` (or the workspace's ``target``).
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import time
import uuid
from pathlib import Path
from typing import Callable, Iterator, TypeVar

import httpx
import pytest

import swarmstate

WORKSPACE = Path(__file__).resolve().parents[3]
T = TypeVar("T")


def cargo_binary(env_var: str, build_args: list[str], relative: str) -> Path:
    """A binary named by ``env_var``, or built by cargo."""
    given = os.environ.get(env_var)
    if given:
        return Path(given)
    subprocess.run(["cargo", "build", "--locked", *build_args], cwd=WORKSPACE, check=True)
    target = Path(os.environ.get("CARGO_TARGET_DIR", WORKSPACE / "target"))
    return target / "debug" / relative


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_until(condition: Callable[[], T], timeout: float = 20.0, interval: float = 0.02) -> T:
    """Polls ``condition`` until it returns something truthy; fails after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout} s")
        time.sleep(interval)


class Server:
    """A ``swarmstate serve`` process. ``restart`` starts it again on the same store and
    port, as an operator restarting it would."""

    def __init__(self, binary: Path, store: str, port: int | None = None) -> None:
        self.binary = binary
        self.store = store
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> Server:
        self.process = subprocess.Popen(
            [str(self.binary), "serve", "--store", self.store,
             "--listen", f"127.0.0.1:{self.port}"],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        )
        deadline = time.monotonic() + 60
        while True:
            if self.process.poll() is not None:
                err = self.process.stderr.read().decode() if self.process.stderr else ""
                raise RuntimeError(f"swarmstate serve exited with {self.process.returncode}: {err}")
            try:
                if httpx.get(f"{self.url}/healthz", timeout=2).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                self.kill()
                raise RuntimeError("swarmstate serve did not answer /healthz within 60 s")
            time.sleep(0.05)

    def kill(self, sig: int = signal.SIGKILL) -> None:
        """Stops the process by its PID (SIGKILL by default: a crash) and waits for it."""
        process, self.process = self.process, None
        if process is None:
            return
        if process.poll() is None:
            os.kill(process.pid, sig)
        process.wait(timeout=30)
        if process.stderr:
            process.stderr.close()

    def restart(self) -> None:
        self.kill()
        self.start()


@pytest.fixture(scope="session")
def swarmstate_bin() -> Path:
    return cargo_binary("SWARMSTATE_BIN", ["-p", "swarmstate-cli"], "swarmstate")


@pytest.fixture(scope="session")
def shared_server(swarmstate_bin: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """One durable server for the tests that only need a store; each test uses its own keys."""
    data = tmp_path_factory.mktemp("shared-data")
    server = Server(swarmstate_bin, f"file://{data}").start()
    yield server
    server.kill()


@pytest.fixture
def make_server(swarmstate_bin: Path, tmp_path: Path) -> Iterator[Callable[..., Server]]:
    """Starts servers of the test's own (``memory://`` or a fresh data directory)."""
    servers: list[Server] = []

    def make(store: str | None = None) -> Server:
        server = Server(swarmstate_bin, store or f"file://{tmp_path / f'data-{len(servers)}'}")
        servers.append(server)
        return server.start()

    yield make
    for server in servers:
        server.kill()


@pytest.fixture
def ns(request: pytest.FixtureRequest) -> str:
    """A key prefix of the test's own, so tests sharing a server never meet."""
    name = re.sub(r"[^A-Za-z0-9_-]", "-", request.node.name)[:60]
    return f"t-{name}-{uuid.uuid4().hex[:6]}"


@pytest.fixture
def client(shared_server: Server) -> Iterator[swarmstate.Client]:
    with swarmstate.Client(shared_server.url) as c:
        yield c


@pytest.fixture
async def aclient(shared_server: Server):  # type: ignore[no-untyped-def]
    async with swarmstate.AsyncClient(shared_server.url) as c:
        yield c
