"""Waiting and status: what a Shipper reports (`ReplicaStatus`), the error a lag beyond its
bound becomes, and `Progress`, the state its thread shares with the threads that wait on it."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass

from .errors import ReplicaError, ReplicaFencedError


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


class Progress:
    """What the shipper's thread has achieved, read and waited on by other threads.

    The shipper's thread writes `index` (the replica index), `synced_as_of` (every entry
    settled before this monotonic time is on the replica), `last_error`, `fenced` and the
    upload counters, then calls `notify`; any thread reads them (single attribute reads)
    and waits with `wait_for`. `settled()` is the newest index that may ship."""

    def __init__(self, url: str, settled, max_lag: float | None):
        self.url = url
        self.index = 0
        self.synced_as_of = time.monotonic()
        self.last_error: str | None = None
        self.fenced: ReplicaFencedError | None = None
        self.uploads = 0
        self.bytes = 0
        self.settled = settled
        self._max_lag = max_lag
        self._changed = threading.Condition()

    def uploaded(self, nbytes: int = 0) -> None:
        """Count one object stored (`nbytes` of data; 0 for head.json, counted as an upload only)."""
        self.uploads += 1
        self.bytes += nbytes

    def notify(self) -> None:
        """Wake every `wait_for` to look again."""
        with self._changed:
            self._changed.notify_all()

    @property
    def error(self) -> BaseException | None:
        """ReplicaFencedError once fenced; ReplicaLagError while the replica index trails the
        settled index and the oldest entry not shipped has been settled more than `max_lag`
        seconds; None otherwise (and always None without a `max_lag`). Cheap."""
        if self.fenced is not None:
            return self.fenced
        if self._max_lag is None or self.index >= self.settled():
            return None
        lag = time.monotonic() - self.synced_as_of
        if lag <= self._max_lag:
            return None
        return ReplicaLagError(self.url, lag, self._max_lag, self.index, self.settled(), self.last_error)

    def wait_for(self, done, timeout: float | None, *, running, stop=lambda: False, what=lambda: "") -> bool:
        """Block until `done()` (True) or `timeout` seconds pass (False; None: no limit).

        Edge cases first, checked in this order before every wait: `stop()` may raise (a
        fence, a lag) or return True (give up now: False); RuntimeError ("the shipper is not
        running", then `what()`) unless `running()`. Woken by `notify`, and every 50 ms."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._changed:
            while not done():
                if stop():
                    return False
                if not running():
                    raise RuntimeError(f"replica {self.url}: the shipper is not running{what()}")
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return False
                self._changed.wait(0.05 if remaining is None else min(remaining, 0.05))
        return True

    def status(self, collected=None, collect_error: str | None = None) -> ReplicaStatus:
        """A ReplicaStatus of now."""
        index, settled = self.index, self.settled()
        behind = settled > index
        return ReplicaStatus(self.url, index, settled, max(0, settled - index),
                             time.monotonic() - self.synced_as_of if behind else 0.0, self.fenced is not None,
                             self.last_error, self.error, self.uploads, self.bytes, collected, collect_error)
