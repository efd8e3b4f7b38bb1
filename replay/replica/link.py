"""A journal's replica as the journal sees it: one `ReplicaLink`, or `NoReplica` when none is configured.

The journal never asks which it holds. Call sequence (replay/assembly.py makes the
first four calls, the Journal the rest; all from the journal's thread):

1. `ReplicaLink.open(url, options, rank)`: the object store (nothing read yet).
2. `restore_if_empty(root)`, before anything else touches `root` (a new machine: the
   directory is missing or empty and the replica has a head, so the journal is
   rebuilt from the replica, then recovers as usual).
3. `start(root, log, snapshots, settled, ...)` once the journal is open: a Shipper
   thread ships what `settled()` allows (replay.replica.shipper; format FORMAT.md).
4. `await_claim(root, last_index, cut_through)` before open returns: the claim on the
   replica is decided there (won, or ReplicaFencedError).
5. `gate(path, op, index)` before every append: ReplicaLagError past max_lag,
   ReplicaFencedError once another writer holds the replica (nothing appended).
6. `wait(index, timeout)` for ``flush(replica=True)``; `index`, `status()`, `collect()`.
7. `close(deadline, grace)`: one last round within `final_round_timeout`; `release()`
   (idempotent, bounded) stops everything, whether or not it was started.

A multi-rank journal replicates each rank's directory under the URL's ``rank-<r>``.
"""

from __future__ import annotations

import os
import time
import warnings
from pathlib import Path
from typing import Callable

from ..layout import SUPERVISOR_DIR
from .errors import ObjectNotFoundError, ReplicaFencedError
from .objects import ObjectStore, open_store
from .restore import RestoreReport, restore
from .shipper import Shipper
from .status import ReplicaLagError

CLOSE_TIMEOUT = 30.0  # seconds close() lets the last shipping round run before giving up on it
CLAIM_TIMEOUT = 30.0  # seconds open() waits for the replica to decide the claim before going on locally
CLOSE_RESERVE = 2.0  # at most this much of a deadline is kept for what follows the last round (release, exit)
CLOSE_RESERVE_FRACTION = 0.2  # ... and at most this fraction of the grace it came from


def rank_url(url: str, rank: int | None) -> str:
    """The replica URL of rank `rank`'s directory (the URL itself for a single-process journal)."""
    return url if rank is None else f"{url.rstrip('/')}/rank-{rank}"


def restore_if_empty(root: Path, store: ObjectStore) -> RestoreReport | None:
    """Restore the replica into `root` when `root` is missing or empty and the replica holds a
    journal; the report, or None when nothing was restored (a journal is there already, or
    the replica is new). The replica's errors (damage, unreachable) are raised: opening an
    empty directory as a new journal while its replica cannot be read would start over."""
    if root.is_dir() and any(p.name != SUPERVISOR_DIR for p in root.iterdir()):
        return None  # (replay run's records alone do not make a journal)
    if root.exists() and not root.is_dir():
        return None  # refused later by the journal itself, naming the path
    try:
        return restore(store, root)
    except ObjectNotFoundError:
        return None  # no head.json: nothing was ever shipped, so this is a new journal


def open_replica(url: str, options: dict | None) -> ObjectStore:
    """The ObjectStore for `url` (replay.replica.objects.open_store: ValueError for an unsupported one)."""
    if not isinstance(url, (str, os.PathLike)):
        raise TypeError(f"replica must be a URL string (s3://bucket/prefix, file:///dir), got {type(url).__name__}")
    return open_store(str(url), options)


def final_round_timeout(deadline: float | None, grace: float | None, now: float) -> float:
    """Seconds close() lets the shipper's last round run: CLOSE_TIMEOUT without a deadline;
    with one (a preemption's: `deadline` is the monotonic time its `grace` seconds end), what
    is left of it less a reserve for the release and the exit (CLOSE_RESERVE, at most
    CLOSE_RESERVE_FRACTION of the grace), never more than CLOSE_TIMEOUT and never below 0.
    Entries the round cannot ship stay durable locally, as after any close."""
    if deadline is None:
        return CLOSE_TIMEOUT
    reserve = min(CLOSE_RESERVE, CLOSE_RESERVE_FRACTION * grace) if grace is not None else CLOSE_RESERVE
    return max(0.0, min(CLOSE_TIMEOUT, deadline - now - reserve))


def await_claim(shipper: Shipper, root: Path, last_index: int, cut_through: int = 0,
                timeout: float = CLAIM_TIMEOUT) -> None:
    """Journal.open's claim on the replica (FORMAT.md, "Fencing"), decided before open returns.

    Won: returns; with a RuntimeWarning when this same journal's head.json is ahead of
    `last_index` (this copy's last entry) for a reason other than this open's multi-rank
    cut (entries through `cut_through` dropped): the directory went back in time or an
    operator truncated it, and the replica moves back to this copy's history. Lost:
    ReplicaFencedError naming the head's owner, term and index and this copy's owner and
    last index, with the remedy (restore into a new directory, or open without replica=).
    Undecided (the store failed or did not answer within `timeout`): a RuntimeWarning, and
    the journal opens anyway, since the local journal is the source of truth while it
    lives; the shipper retries the claim every round, and if it turns out lost, `apply`
    raises ReplicaFencedError before appending."""
    if shipper.wait_claimed(timeout):
        head = shipper.claimed_head
        if head is not None and head.index > max(last_index, cut_through):
            warnings.warn(f"journal {root}: replica {shipper.url} holds this journal's entries through index "
                          f"{head.index}, beyond its last index {last_index} here (the directory went back in time, "
                          f"or was truncated by an operator): the replica moves back to this copy's history and "
                          f"abandons entries {last_index + 1}..{head.index}", RuntimeWarning, stacklevel=5)
        return
    reason = shipper.status().last_error or f"no answer in {timeout} s"
    warnings.warn(f"journal {root}: replica {shipper.url} could not decide the claim at open ({reason}); training "
                  "goes on locally, the claim is retried in the background, and apply raises ReplicaFencedError "
                  "if another writer turns out to hold the replica", RuntimeWarning, stacklevel=5)


def start_shipping(store: ObjectStore, root: Path, log, snapshots, settled: Callable[[], int], *,
                   interval: float, max_lag: float | None, keep_extra: int = 0) -> Shipper:
    """A running Shipper for the journal at `root`; its first round claims the replica's
    head.json for the log's current term (a stale writer elsewhere is fenced from then on;
    `await_claim` waits for the outcome). The replica keeps
    the snapshots the local store keeps, plus `keep_extra` older ones (replay.replica.retention)."""
    shipper = Shipper(store, root, log, snapshots, settled, interval=interval, term=log.term, max_lag=max_lag,
                      keep_extra=keep_extra)
    shipper.start()
    return shipper


class ReplicaLink:
    """A configured replica, for one open journal (module doc: the call sequence)."""

    def __init__(self, store: ObjectStore):
        self._store = store
        self._shipper: Shipper | None = None
        self.url = store.url

    @classmethod
    def open(cls, url, options: dict | None, rank: int | None = None) -> "ReplicaLink":
        """The link to `url` (rank `rank`'s share of it for a multi-rank journal); ValueError /
        TypeError for a URL that names no supported store. Nothing is read yet."""
        return cls(open_replica(url if rank is None else rank_url(url, rank), options))

    def restore_if_empty(self, root: Path) -> RestoreReport | None:
        """`restore_if_empty(root, store)` (this module); on a failure the store is released."""
        try:
            return restore_if_empty(root, self._store)
        except BaseException:
            self.release()
            raise

    def start(self, root: Path, log, snapshots, settled: Callable[[], int], *, interval: float,
              max_lag: float | None, keep_extra: int) -> None:
        """Start shipping (`start_shipping`): from now on the Shipper owns the store."""
        self._shipper = start_shipping(self._store, root, log, snapshots, settled, interval=interval,
                                       max_lag=max_lag, keep_extra=keep_extra)

    def await_claim(self, root: Path, last_index: int, cut_through: int = 0) -> None:
        """`await_claim` (this module): won, a RuntimeWarning if undecided, or ReplicaFencedError."""
        await_claim(self._shipper, root, last_index, cut_through)

    def gate(self, path, op: str, index: int) -> None:
        """Before appending `op` after `index`: ReplicaLagError past max_lag, ReplicaFencedError
        (naming the journal, the op and the index) once fenced; nothing else. Cheap."""
        refused = self._shipper.error if self._shipper is not None else None
        if isinstance(refused, ReplicaLagError):
            raise refused  # max_replica_lag: refused before anything is appended
        if isinstance(refused, ReplicaFencedError):  # never a silent fork: refused before appending
            raise ReplicaFencedError(refused.url, f"{refused.detail}. Journal {path}: apply({op!r}) refused "
                                                  f"at index {index}, nothing appended", owner=refused.owner,
                                     index=refused.index, term=refused.term) from refused

    def check_waitable(self, path) -> None:
        """``flush(replica=True)`` may wait here (NoReplica: ValueError)."""

    def wait(self, index: int, timeout: float | None) -> int:
        """Block until the replica index reaches `index` (Shipper.wait: TimeoutError, fenced, lag)."""
        return self._shipper.wait(index, timeout)

    @property
    def index(self) -> int | None:
        """The newest index a restore from the replica alone reproduces."""
        return self._shipper.index

    def status(self):
        """The replica's state now (replay.replica.status.ReplicaStatus)."""
        return self._shipper.status()

    def collect(self, timeout: float | None = None):
        """Run a garbage-collection sweep now (Shipper.collect)."""
        return self._shipper.collect(timeout)

    def close(self, deadline: float | None = None, grace: float | None = None) -> None:
        """One last shipping round (the final snapshot too), given `final_round_timeout(deadline, grace)`."""
        if self._shipper is not None:
            self._shipper.close(final_round_timeout(deadline, grace, time.monotonic()))

    def release(self) -> None:
        """Stop shipping (waiting at most a second: idempotent after `close`'s round) or, never
        started, close the store."""
        if self._shipper is not None:
            self._shipper.close(1.0)
        else:
            self._store.close()


class NoReplica:
    """No replica configured: nothing is restored, shipped, gated or waited for."""

    url = None
    index = None

    def restore_if_empty(self, root: Path) -> None:
        return None

    def start(self, *args, **kwargs) -> None:
        pass

    def await_claim(self, *args) -> None:
        pass

    def gate(self, path, op: str, index: int) -> None:
        pass

    def check_waitable(self, path) -> None:
        raise ValueError(f"journal {path}: flush(replica=True) needs Journal.open(replica=...)")

    def wait(self, index: int, timeout: float | None) -> int:  # pragma: no cover - check_waitable refuses first
        raise ValueError("no replica")

    def status(self) -> None:
        return None

    def collect(self, timeout: float | None = None) -> None:
        return None

    def close(self, deadline: float | None = None, grace: float | None = None) -> None:
        pass

    def release(self) -> None:
        pass
