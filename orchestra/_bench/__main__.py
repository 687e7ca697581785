"""``python -m orchestra._bench worker|pgqueuer-worker``: the bench's worker processes."""

from __future__ import annotations

import sys

from orchestra._bench._runner import worker_main


def main(argv: list[str]) -> None:
    """Run the worker process the first argument names."""
    if argv[:1] == ["worker"]:
        worker_main(argv[1:])
    elif argv[:1] == ["pgqueuer-worker"]:
        # PgQueuer is an optional extra: imported only by its own workers.
        from orchestra._bench._pgqueuer import worker_main as pgqueuer_worker_main  # noqa: PLC0415

        pgqueuer_worker_main(argv[1:])
    else:
        sys.exit(
            "usage: python -m orchestra._bench worker|pgqueuer-worker --schema S --concurrency N"
        )


if __name__ == "__main__":
    main(sys.argv[1:])
