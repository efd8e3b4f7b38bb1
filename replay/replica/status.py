"""What a Shipper reports: `ReplicaStatus`, and the error a lag beyond its bound becomes."""

from __future__ import annotations

from dataclasses import dataclass

from .errors import ReplicaError


class ReplicaLagError(ReplicaError):
    """The replica fell further behind the settled log than the shipper's `max_lag` allows."""

    def __init__(self, url: str, lag_seconds: float, max_lag: float, index: int, settled: int, reason: str | None):
        self.url = url
        self.lag_seconds = lag_seconds
        self.max_lag = max_lag
        super().__init__(f"replica {url} is {lag_seconds:.1f} s behind (max_lag {max_lag} s): replica index "
                         f"{index}, settled index {settled}" + (f"; last error: {reason}" if reason else ""))


@dataclass(frozen=True)
class ReplicaStatus:
    """A Shipper's state at one moment.

    index: the replica index (a restore reproduces the state at it); settled: the local
    index the shipper may ship up to (min of durable and applied); lag_entries: settled -
    index (0 when caught up); lag_seconds: how long entries have been settled and not on
    the replica (0 when caught up); fenced: another writer holds the replica (shipping has
    stopped for good); last_error: the newest failure, as text (None after a round that
    succeeded); error: the exception `wait` raises (ReplicaFencedError, ReplicaLagError)
    or None; uploads / bytes: objects and bytes this shipper has stored; collected: the
    replica's garbage collection so far (replay.replica.retention.Collected: sweeps and the
    manifests, segments and chunks deleted); collect_error: the last sweep's failure, as
    text (None after one that succeeded).
    """

    url: str
    index: int
    settled: int
    lag_entries: int
    lag_seconds: float
    fenced: bool
    last_error: str | None
    error: BaseException | None
    uploads: int
    bytes: int
    collected: object = None
    collect_error: str | None = None
