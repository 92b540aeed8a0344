"""The Python agent of the interop test, doing what ``crates/swarmstate/examples/interop_agent.rs``
does, with this package's helpers:

    python interop_agent.py URL NAME PREFIX ROUNDS

1. ``ROUNDS`` times: hold the lock ``PREFIX.lock``, read the counter ``PREFIX.counter`` and
   write it plus one with the log entry ``PREFIX.log.<new value>`` = ``<token> <NAME>`` in one
   fenced transaction. Prints ``increment <new value> token <token>``.
2. Work the queue ``PREFIX.jobs`` until nothing is claimable for two seconds, completing each
   item with ``PREFIX.done.<id>`` = ``NAME`` created only if absent. Prints ``done <id>``.
"""

from __future__ import annotations

import sys

import swarmstate
from swarmstate import Put


def main(url: str, name: str, prefix: str, rounds: int) -> None:
    with swarmstate.Client(url) as client:
        for _ in range(rounds):
            with client.lock(f"{prefix}.lock", ttl=5, wait=60, owner=name) as lock:
                entry = client.get(f"{prefix}.counter")
                following = (int(entry.value) if entry else 0) + 1
                lock.fenced_txn([
                    Put(f"{prefix}.counter", str(following)),
                    Put(f"{prefix}.log.{following}", f"{lock.token} {name}", if_absent=True),
                ])
            print(f"increment {following} token {lock.token}", flush=True)

        for job in client.worker(f"{prefix}.jobs", name, lease=10, idle=2):
            with job:
                job.complete([Put(f"{prefix}.done.{job.id}", name, if_absent=True)])
            print(f"done {job.id}", flush=True)


if __name__ == "__main__":
    url, name, prefix, rounds = sys.argv[1:]
    main(url, name, prefix, int(rounds))
