"""The claim: may this journal write the replica's head.json? (FORMAT.md, "Fencing").

`claim` decides from DIR/replica.json (who this journal writes as, or which head it was
restored from) and head.json, and every decision against a present head.json ends in a
conditional write of it, so a journal that claimed has won at that moment against every
other writer, and one that did not gets a `ReplicaFencedError` saying who holds the
replica, who this copy is, and how to go on (`refusal`).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from .errors import PreconditionFailedError, ReplicaError, ReplicaFencedError
from .head import (CLAIMED, HEAD_KEY, THIS, Head, Record, new_owner, ownership, read_head, read_record, take_over,
                   write_record)


@dataclass(frozen=True)
class Claimed:
    """A won claim: write head.json as `owner`, conditionally on `etag` (None: create-only,
    the replica has no head yet); `head` is the head it continues from (None when none)."""

    owner: str
    etag: str | None
    head: Head | None


def claim(store, root: Path, term: int, last_index) -> Claimed:
    """Claim the replica `store` for the journal at `root` (log term `term`); a Claimed.

    Edge cases first: no head.json: the recorded owner (a fresh one, recorded durably
    first) will create it with its first segment, create-only; nothing is written now.
    head.json of the recorded owner: rewritten at once with `term` (same index and
    checksum), conditionally on the etag read. Another owner, and DIR/replica.json's
    claim equal to its etag (restored from exactly that head): taken over (`take_over`).
    Otherwise, a head of a newer term than `term`, or a conditional write refused:
    ReplicaFencedError (`refusal`; `last_index()` gives this copy's last index for it).
    The store's own errors (unreachable, a damaged head.json) propagate: undecided."""
    record = read_record(root, store.url)
    current = read_head(store)
    if current is None:
        owner = record.owner or new_owner()
        if owner != record.owner:
            write_record(root, Record(store.url, owner, None))
        return Claimed(owner, None, None)
    head, etag = current
    if ownership(record, head, etag) == THIS:
        if head.term > term:
            raise refusal(store, root, record, last_index, f"has log term {term}, older than head.json's: a newer "
                                                           "writer of this lineage wrote it", head)
        renewed = Head(term, head.owner, head.index, head.checksum, time.time())
        try:
            return Claimed(head.owner, store.put_if_match(HEAD_KEY, renewed.encode(), etag), head)
        except PreconditionFailedError:
            landed = _landed(store, lambda now: now == renewed)
            if landed is not None:
                return Claimed(head.owner, landed, head)
            raise refusal(store, root, record, last_index, "lost the replica while claiming it: another writer "
                                                           "wrote head.json since it was read") from None
    restored = ("was restored from an earlier head.json, and its writer has written it since: that writer is still "
                "shipping (this directory holds only that restore: once the writer has stopped, remove it and open "
                "again)")
    if ownership(record, head, etag) == CLAIMED:
        owner = new_owner()
        write_record(root, Record(store.url, owner, etag))  # first: a crash retries the claim
        try:
            return Claimed(owner, take_over(store, term, owner=owner, etag=etag), head)
        except ReplicaFencedError:
            landed = _landed(store, lambda now: now.owner == owner)  # a fresh uuid: only this claim writes it
            if landed is not None:
                return Claimed(owner, landed, head)
            write_record(root, record)  # the takeover did not happen: this directory is still only a restore
            raise refusal(store, root, record, last_index, restored) from None
    if record.owner is not None:
        why = ("no longer writes it: another journal wrote head.json since (a restore elsewhere took the replica "
               "over, or another run writes this URL)")
    elif record.claim is not None:
        why = restored
    else:
        why = "never wrote this replica"
    raise refusal(store, root, record, last_index, why, head)


def _landed(store, ours) -> str | None:
    """The etag of head.json when `ours(head)` says it is the write this claim just made (a
    refused conditional write may be a client retry of one that landed: objects.ObjectStore
    .put_if_match), else None."""
    found = read_head(store)
    return found[1] if found is not None and ours(found[0]) else None


def refusal(store, root: Path, record: Record, last_index, why: str, head: Head | None = None) -> ReplicaFencedError:
    """The ReplicaFencedError of a lost claim: the head that holds the replica (read again when
    not given; best effort), this copy's owner and last index (`last_index()`), `why`, and
    the two ways on (restore into a new directory, or open without the replica)."""
    if head is None:
        try:
            found = read_head(store)
        except ReplicaError:
            found = None
        head = found[0] if found is not None else None
    try:
        last = last_index()
    except Exception:  # noqa: BLE001 - the message names what it can (a closed log after close)
        last = None
    mine = (f"this copy ({root}, owner {record.owner or 'none recorded'}, last index "
            f"{'unknown' if last is None else last})")
    if head is None:
        return ReplicaFencedError(store.url, f"head.json changed and cannot be read back; {mine} {why}. Restore the "
                                             "replica into a new directory to go on from it, or open this directory "
                                             "without replica= to go on from its own history")
    ahead = f", {head.index - last} entries ahead of this copy" if last is not None and head.index > last else ""
    return ReplicaFencedError(
        store.url,
        f"head.json is owned by {head.owner} (term {head.term}, replica index {head.index}{ahead}); {mine} {why}. "
        f"To go on from the replica's index {head.index}, restore it into a new directory (Journal.open of an "
        f"empty directory with this replica, or `replay restore {store.url} NEWDIR`); to go on from this copy's "
        "own history, open it without replica= (nothing of it ships then)",
        owner=head.owner, index=head.index, term=head.term)


class HeadOwner:
    """Claim and fencing for one shipper: whether it holds head.json, and every write of it.

    `claim()` decides the claim (`claim`); from then on `write(end)` rewrites head.json
    conditionally on the etag of this writer's last write, so a write after anyone else's
    is refused: ReplicaFencedError (`refusal`), and the shipper stops for good. Used by the
    shipper's thread; other threads read `won`, `claim_failures` and `claimed_head`.

    Attributes: `won` (this shipper holds head.json), `claim_failures` (claim attempts that
    ended in a store error: undecided), `claimed_head` (the head.json the won claim
    continued from; None before it, or when the replica had none), `head_at` ((index,
    checksum) head.json names, as written or read; None before any), `writes` (head writes)."""

    def __init__(self, store, root: Path, term: int, last_index):
        self._store = store
        self._root = Path(root)
        self._term = term
        self._last_index = last_index
        self._owner: str | None = None
        self._etag: str | None = None
        self.won = False
        self.claim_failures = 0
        self.claimed_head: Head | None = None
        self.head_at: tuple[int, int] | None = None
        self.writes = 0

    @property
    def etag(self) -> str | None:
        """The etag of this writer's last head.json write (None: head.json is to be created)."""
        return self._etag

    def claim(self) -> Head | None:
        """Decide the claim (`claim`; its errors propagate); the head it continues from, if any."""
        claimed = claim(self._store, self._root, self._term, self._last_index)
        self._owner, self._etag = claimed.owner, claimed.etag
        self.claimed_head = claimed.head
        if claimed.head is not None:
            self.head_at = (claimed.head.index, claimed.head.checksum)
        self.won = True
        return claimed.head

    def failed(self) -> None:
        """Count a round that failed before the claim was won (the claim is still undecided)."""
        if not self.won:
            self.claim_failures += 1

    def write(self, end: tuple[int, int]) -> None:
        """Write head.json naming `end` = (index, checksum), conditionally on the last etag
        (create-only when None). ReplicaFencedError when another writer wrote it since."""
        index, checksum = end
        head = Head(self._term, self._owner, index, checksum, time.time())
        try:
            self._etag = self._store.put_if_match(HEAD_KEY, head.encode(), self._etag)
        except PreconditionFailedError:
            raise refusal(self._store, self._root, read_record(self._root, self._store.url), self._last_index,
                          "lost the replica: another writer wrote head.json since this copy's last write (a restore "
                          "elsewhere took it over)") from None
        self.writes += 1
        self.head_at = end
