"""``replay run --metrics PATH``: a Prometheus textfile (node_exporter's textfile collector).

Written with prometheus_client's exposition (`write_to_textfile`: a temp file renamed
over PATH, so the collector never reads half a file) every REFRESH seconds while a job
runs and after every attempt. Metrics:

- ``replay_run_attempts_total{class="..."}``: attempts that ended, by class.
- ``replay_run_durable_index``: the journal's durable index (the minimum over ranks).
- ``replay_run_seconds_since_progress``: seconds since the durable index last moved.
- ``replay_run_last_recovery_seconds``: how long the last attempt took from start until
  its journal had opened (recovery included).
- ``replay_run_up``: 1 while an attempt runs, 0 between attempts and after the last.

Where the journal has a replica (it publishes ``replica-a<attempt>-p<pid>.json``:
replica_status.py; the replica's store is never opened here), also, over every process of
the attempt (every rank):

- ``replay_run_replica_lag_seconds``: the largest lag in seconds (how long settled
  entries have waited to ship), plus the age of that process's status when its lag is not 0.
- ``replay_run_replica_lag_entries``: the largest lag in entries.
- ``replay_run_replica_index``: the smallest replica index (a restore reproduces it).
- ``replay_run_replica_fenced``: 1 when another writer holds a replica.

They appear once a status is read and keep their last values between attempts.

An alert rule for "no progress in 10 minutes" is in the README.
"""

from __future__ import annotations

import time
from pathlib import Path

from .vocabulary import CLASSES

REFRESH = 5.0


def _client():
    try:
        import prometheus_client
    except ImportError:
        raise ValueError("--metrics needs prometheus_client: pip install prometheus_client "
                         "(or the package's [supervisor] extra)") from None
    return prometheus_client


class MetricsFile:
    """The textfile at `path`; `update` is called from the supervisor's loop (one thread)."""

    def __init__(self, path: str | Path):
        client = _client()
        self.path = str(path)
        self._write = client.write_to_textfile
        self.registry = client.CollectorRegistry()
        self._attempts = client.Counter("replay_run_attempts", "attempts of replay run that ended, by class",
                                        ["class"], registry=self.registry)
        for name in CLASSES:
            self._attempts.labels(name)  # every class shows, at 0 until it happens
        self._index = client.Gauge("replay_run_durable_index", "the journal's durable index", registry=self.registry)
        self._since = client.Gauge("replay_run_seconds_since_progress", "seconds since the durable index moved",
                                   registry=self.registry)
        self._recovery = client.Gauge("replay_run_last_recovery_seconds",
                                      "seconds from the last attempt's start until its journal opened",
                                      registry=self.registry)
        self._up = client.Gauge("replay_run_up", "1 while an attempt runs", registry=self.registry)
        self._client = client
        self._replica = None  # the replica gauges, registered once a journal publishes a status
        self._progress_index = -1
        self._progress_at = time.monotonic()
        self._written = 0.0

    def update(self, *, index: int, running: bool, recovery_seconds: float | None = None,
               ended: str | None = None, force: bool = False, replica: list[dict] | None = None) -> None:
        """Record the attempt's state; write the file when REFRESH has passed since the last
        write, or an attempt `ended`, or `force`. `replica`: the replica statuses read for this
        attempt (replica_status.read), [] or None when none."""
        now = time.monotonic()
        if index != self._progress_index:
            self._progress_index, self._progress_at = index, now
        if ended is not None:
            self._attempts.labels(ended).inc()
        if recovery_seconds is not None:
            self._recovery.set(recovery_seconds)
        if not force and ended is None and now - self._written < REFRESH:
            return
        self._index.set(index)
        self._since.set(now - self._progress_at)
        self._up.set(1 if running else 0)
        if replica:
            self._set_replica(replica)
        self._write(self.path, self.registry)
        self._written = now

    def _set_replica(self, statuses: list[dict]) -> None:
        if self._replica is None:
            gauge = self._client.Gauge
            self._replica = (
                gauge("replay_run_replica_lag_seconds", "seconds the replica lags the settled log (largest over "
                      "processes)", registry=self.registry),
                gauge("replay_run_replica_lag_entries", "entries the replica lags the settled log (largest over "
                      "processes)", registry=self.registry),
                gauge("replay_run_replica_index", "the replica index: a restore reproduces the state there "
                      "(smallest over processes)", registry=self.registry),
                gauge("replay_run_replica_fenced", "1 when another writer holds the replica", registry=self.registry))
        seconds, entries, index, fenced = self._replica
        wall = time.time()
        seconds.set(max(s["lag_seconds"] + (max(0.0, wall - s["time"]) if s["lag_entries"] else 0.0)
                        for s in statuses))
        entries.set(max(s["lag_entries"] for s in statuses))
        index.set(min(s["index"] for s in statuses))
        fenced.set(1 if any(s["fenced"] for s in statuses) else 0)
