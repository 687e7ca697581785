"""Transactional enqueue: a job exists only if the transaction that deferred it commits.

Run: python examples/transactional_defer.py
"""

from __future__ import annotations

import os

from orchestra import Config, JobDefinition

config = Config(schema=os.environ.get("EXAMPLE_SCHEMA", "example_transactional"))
welcome = JobDefinition(config, name="welcome", job_function=lambda payload: None)


def main() -> None:
    config.prepare_schema()
    with config.connect() as conn:
        conn.execute("CREATE TABLE IF NOT EXISTS example_users (email text PRIMARY KEY)")
        # Committed: the user row and the job appear together.
        with conn.transaction():
            conn.execute(
                "INSERT INTO example_users VALUES ('ada@example.com') ON CONFLICT DO NOTHING"
            )
            kept = welcome.defer({"email": "ada@example.com"}, conn=conn)
        # Rolled back: neither the user nor the job exists afterwards.
        try:
            with conn.transaction():
                conn.execute("INSERT INTO example_users VALUES ('eve@example.com')")
                dropped = welcome.defer({"email": "eve@example.com"}, conn=conn)
                raise RuntimeError("signup failed after the defer")
        except RuntimeError:
            pass
        conn.execute("DROP TABLE example_users")
    print("committed job:", kept.status())
    try:
        dropped.status()
    except LookupError:
        print("rolled-back job: does not exist")
    config.close()


if __name__ == "__main__":
    main()
