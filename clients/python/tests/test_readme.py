"""Every Python example of the README runs, against a server of its own."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"
# The project's README shows the client too; its examples must run as well.
ROOT_README = Path(__file__).resolve().parents[3] / "README.md"
EXAMPLES = [
    example
    for readme in (README, ROOT_README)
    for example in re.findall(r"```python\n(.*?)```", readme.read_text(), flags=re.S)
]


def test_the_readme_has_examples() -> None:
    assert len(EXAMPLES) >= 9


@pytest.mark.parametrize("example", EXAMPLES, ids=[f"example-{i}" for i in range(len(EXAMPLES))])
def test_the_readme_example_runs(example: str, make_server) -> None:  # type: ignore[no-untyped-def]
    server = make_server("memory://")
    code = example.replace("http://127.0.0.1:7700", server.url)
    exec(compile(code, str(README), "exec"), {"__name__": "readme_example"})
