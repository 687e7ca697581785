"""``orchestra bench``: how fast orchestra moves jobs, next to the lean floor.

Every figure is measured in the same run through orchestra and through the
*lean floor* (:mod:`._floor`): the least a ``SKIP LOCKED`` queue can do, on a
table of the bench's own. The ratio to it is what orchestra's definitions,
channels, priorities, attempts, leases and kept rows cost. The machine is
shared and noisy: compare ratios across runs, not absolute rates.

Runs, on a throwaway schema dropped at the end (:mod:`._runner`):

* enqueue: ``defer`` one job per transaction vs one INSERT, autocommit;
  ``defer_many`` in batches vs one COPY;
* processing: N no-op jobs drained by worker processes (``--processes``,
  ``--concurrency``) vs one connection claiming 100 with ``SKIP LOCKED``,
  calling a no-op per row and deleting the 100; end to end (from starting
  the workers) and steady state (10 % to 90 % done);
* latency: jobs deferred at a fixed low rate to an idle worker, from the
  enqueueing call to the start of the job function (p50, p95, p99), vs an
  INSERT + NOTIFY woken listener that claims the job;
* idle: CPU and statements of a worker with nothing to do.

With ``peers=("pgqueuer",)`` the same workloads also run through PgQueuer
(:mod:`._pgqueuer`, the ``bench`` extra), in a schema of its own.

Worker processes run ``python -m orchestra._bench worker`` (orchestra) or
``pgqueuer-worker`` (PgQueuer). The bench's queries live in ``bench.sql``
beside these modules, not in ``orchestra/sql``: this package is imported by the
``orchestra bench`` command alone, so nothing of it is loaded at run time.
"""

from __future__ import annotations

from orchestra._bench._measure import PEERS, Settings
from orchestra._bench._runner import Bench, Figure, figures_as_json

__all__ = ["PEERS", "Bench", "Figure", "Settings", "figures_as_json"]
