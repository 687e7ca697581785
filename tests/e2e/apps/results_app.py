"""The e2e app of the result-waiting tests, and the requester it runs as a process.

As an app (``--app tests.e2e.apps.results_app:config``) it registers the
definitions of :mod:`tests.e2e.apps._jobs` on the schema named by
``E2E_SCHEMA``. As a program it plays the requester:

* ``python -m tests.e2e.apps.results_app request DEFINITION GATE`` defers
  ``{"gate": GATE}`` to DEFINITION, prints ``job <id>``, then waits for the
  result without a timeout and prints ``result <json>``;
* ``python -m tests.e2e.apps.results_app ask JOB_ID TIMEOUT_S`` waits for
  the result of an existing job by id and prints ``result <json>``, or
  ``failed <status> <error>``.
"""

from __future__ import annotations

import json
import os
import sys

from orchestra import Config, JobHandle
from orchestra.errors import JobFailed
from tests.e2e.apps._jobs import define

config = Config(os.environ["ORCHESTRA_TEST_DSN"], schema=os.environ["E2E_SCHEMA"])
definitions = define(config)


def request(definition: str, gate: str) -> None:
    """Defer a gated job, print its id, then block until its result comes."""
    handle = definitions[definition].defer({"gate": gate})
    print(f"job {handle.id}", flush=True)
    value = handle.result()
    print(f"result {json.dumps(value, sort_keys=True)}", flush=True)


def ask(job_id: int, timeout_s: float) -> None:
    """Wait for the result of job ``job_id`` and print it."""
    try:
        value = JobHandle(job_id, config).result(timeout=timeout_s)
    except JobFailed as exc:
        print(f"failed {exc.status} {exc.error}", flush=True)
        return
    print(f"result {json.dumps(value, sort_keys=True)}", flush=True)


def main(argv: list[str]) -> int:
    """Dispatch ``request`` and ``ask``."""
    try:
        if argv[:1] == ["request"] and len(argv) == 3:
            request(argv[1], argv[2])
        elif argv[:1] == ["ask"] and len(argv) == 3:
            ask(int(argv[1]), float(argv[2]))
        else:
            print(__doc__, file=sys.stderr)
            return 2
    finally:
        config.close()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
