"""A producer process of the fault battery: defers jobs of the ledger app in batches.

``python -m tests.faults._producer DEFINITION COUNT [--batch N] [--fail-every K]``
defers ``COUNT`` jobs of ``DEFINITION`` with ``defer_many``, ``N`` per
statement, on the Config of :mod:`tests.faults._ledger_app` (so from the same
environment as the daemons: the DSN, the schema, transaction pooling), and
writes their ids to stdout, one per line. Every ``K``-th job fails its first
attempt on purpose (``fail_attempts``), so that retries run too.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any


def payloads(count: int, fail_every: int) -> list[dict[str, Any]]:
    """The jobs' payloads: empty, but every ``fail_every``-th fails its first attempt."""
    return [
        {"fail_attempts": 1} if fail_every and i % fail_every == fail_every - 1 else {}
        for i in range(count)
    ]


def main(argv: list[str] | None = None) -> None:
    """Defer the jobs, print their ids."""
    parser = argparse.ArgumentParser(prog="python -m tests.faults._producer")
    parser.add_argument("definition")
    parser.add_argument("count", type=int)
    parser.add_argument("--batch", type=int, default=500)
    parser.add_argument("--fail-every", type=int, default=0)
    args = parser.parse_args(argv)

    # Imported here, after the arguments are read: it builds its Config from the environment.
    from tests.faults._ledger_app import config

    definition = config.definitions[args.definition]
    todo = payloads(args.count, args.fail_every)
    try:
        for start in range(0, len(todo), args.batch):
            handles = definition.defer_many(todo[start : start + args.batch])
            sys.stdout.write("".join(f"{handle.id}\n" for handle in handles))
        sys.stdout.flush()
    finally:
        config.close()


if __name__ == "__main__":
    main()
