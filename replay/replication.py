"""A journal's replica: restoring an empty directory from it on open, and shipping to it while open.

``Journal.open(path, ..., replica=URL)`` calls `restore_if_empty` before anything else
touches `path` (a new machine: the directory is missing or empty and the replica has a
head, so the journal is rebuilt from the replica, then recovers as usual),
`start_shipping` once the journal is open, and `await_claim` before open returns (the
claim on the replica is decided there: won, or ReplicaFencedError). `close` gives the
last shipping round `final_round_timeout`. The shipping itself (what ships, in which
order, fencing) is replay.replica.shipper's; its format is replay/replica/FORMAT.md.

A multi-rank journal replicates each rank's directory under the URL's ``rank-<r>``.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Callable

from .replica.errors import ObjectNotFoundError
from .replica.objects import ObjectStore, open_store
from .replica.restore import RestoreReport, restore
from .replica.shipper import Shipper
from .supervisor.layout import SUPERVISOR_DIR

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
                          f"abandons entries {last_index + 1}..{head.index}", RuntimeWarning, stacklevel=3)
        return
    reason = shipper.status().last_error or f"no answer in {timeout} s"
    warnings.warn(f"journal {root}: replica {shipper.url} could not decide the claim at open ({reason}); training "
                  "goes on locally, the claim is retried in the background, and apply raises ReplicaFencedError "
                  "if another writer turns out to hold the replica", RuntimeWarning, stacklevel=3)


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
