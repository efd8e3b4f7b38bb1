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
        self._progress_index = -1
        self._progress_at = time.monotonic()
        self._written = 0.0

    def update(self, *, index: int, running: bool, recovery_seconds: float | None = None,
               ended: str | None = None, force: bool = False) -> None:
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
        self._write(self.path, self.registry)
        self._written = now
