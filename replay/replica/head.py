"""head.json, the one replaced object of a replica, and the local record of who may write it.

FORMAT.md ("Objects", "Fencing"): head.json names the end of the replica's chain and the
owner that wrote it; every write of it is conditional (`put_if_match`), so a writer that
was taken over learns it from its next write. ``DIR/replica.json`` records, in the journal
directory, which owner this journal writes as (or which head it was restored from).
"""

from __future__ import annotations

import json
import os
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from .. import jsonfile, layout
from .errors import (ObjectNotFoundError, ObjectTooLargeError, PreconditionFailedError, ReplicaDamageError,
                     ReplicaFencedError)

HEAD_KEY = "head.json"
HEAD_FORMAT = 1
MAX_HEAD_BYTES = 64 << 10
RECORD_FILE = layout.REPLICA_FILE  # DIR/replica.json
_KEYS = {"format", "term", "owner", "index", "checksum", "time"}
_MAX_U64 = 2**64 - 1


@dataclass(frozen=True)
class Head:
    """The content of head.json: the replica reproduces the state at `index` (checksum `checksum`)."""

    term: int
    owner: str
    index: int
    checksum: int
    time: float

    def encode(self) -> bytes:
        return json.dumps({"format": HEAD_FORMAT, "term": self.term, "owner": self.owner, "index": self.index,
                           "checksum": self.checksum, "time": self.time}, sort_keys=True).encode()


def _is_uint(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= _MAX_U64


def parse_head(data: bytes, url: str | None = None) -> Head:
    """Head of head.json bytes; ReplicaDamageError("head.json") naming what is wrong."""
    try:
        doc = jsonfile.parse(data)
    except jsonfile.JsonFileError as exc:
        raise ReplicaDamageError(HEAD_KEY, f"not strict JSON: {exc}", url) from None
    if not isinstance(doc, dict):
        raise ReplicaDamageError(HEAD_KEY, f"a JSON {type(doc).__name__}, not an object", url)
    if set(doc) != _KEYS:
        missing, extra = sorted(_KEYS - set(doc)), sorted(set(doc) - _KEYS)
        raise ReplicaDamageError(HEAD_KEY, f"keys missing {missing}, unknown {extra}", url)
    if doc["format"] != HEAD_FORMAT or isinstance(doc["format"], bool):
        raise ReplicaDamageError(HEAD_KEY, f"format {doc['format']!r} is not {HEAD_FORMAT}", url)
    for field in ("term", "index", "checksum"):
        if not _is_uint(doc[field]):
            raise ReplicaDamageError(HEAD_KEY, f"field {field!r}: {doc[field]!r} is not an int in [0, 2^64)", url)
    owner = doc["owner"]
    if not isinstance(owner, str) or not 1 <= len(owner) <= 64 or not owner.isalnum():
        raise ReplicaDamageError(HEAD_KEY, f"field 'owner': {owner!r} is not an owner id", url)
    stamp = doc["time"]
    if isinstance(stamp, bool) or not isinstance(stamp, (int, float)) or not stamp >= 0:
        raise ReplicaDamageError(HEAD_KEY, f"field 'time': {stamp!r} is not a time >= 0", url)
    return Head(doc["term"], owner, doc["index"], doc["checksum"], float(stamp))


def read_head(store) -> tuple[Head, str] | None:
    """(head, etag) of the replica, None when it has no head.json yet; ReplicaDamageError
    for one that is not a head (too large, not strict JSON, another schema)."""
    try:
        data, etag = store.get(HEAD_KEY, MAX_HEAD_BYTES)
    except ObjectNotFoundError:
        return None
    except ObjectTooLargeError:
        raise ReplicaDamageError(HEAD_KEY, f"larger than {MAX_HEAD_BYTES} bytes", store.url) from None
    return parse_head(data, store.url), etag


def new_owner() -> str:
    return uuid.uuid4().hex


def take_over(store, term: int, *, owner: str | None = None, etag: str | None = None) -> str:
    """Claim the replica's head.json for a writer of log term `term`; its new etag.

    Edge cases first: `term` not an int >= 0: ValueError. No head.json: it is created
    (create-only) at index 0. `etag` given: the claim succeeds only if head.json's
    current etag is `etag` (the head a restore started from), else ReplicaFencedError;
    `etag` None: the current head is read and claimed whatever it is (an operator's
    explicit takeover). A head of a newer term than `term`: ReplicaFencedError. The new
    head keeps the old index and checksum (the chain is unchanged) and names `owner`
    (a fresh id when None) and `term`. A concurrent write between the read and the
    claim: ReplicaFencedError (someone else claimed it)."""
    if isinstance(term, bool) or not isinstance(term, int) or term < 0:
        raise ValueError(f"take_over: term must be an int >= 0, got {term!r}")
    owner = owner or new_owner()
    current = read_head(store)
    if current is None:
        if etag is not None:
            raise ReplicaFencedError(store.url, "head.json vanished since the restore read it")
        head, expected = Head(term, owner, 0, 0, time.time()), None
    else:
        old, expected = current
        if etag is not None and expected != etag:
            raise ReplicaFencedError(store.url, f"head.json was rewritten since the restore read it "
                                                f"(now owner {old.owner}, term {old.term}, index {old.index})")
        if old.term > term:
            raise ReplicaFencedError(store.url, f"head.json has term {old.term}, newer than this writer's {term}")
        head = Head(term, owner, old.index, old.checksum, time.time())
    try:
        return store.put_if_match(HEAD_KEY, head.encode(), expected)
    except PreconditionFailedError:
        raise ReplicaFencedError(store.url, "another writer wrote head.json during the takeover") from None


# ---------------------------------------------------------------------- DIR/replica.json


@dataclass(frozen=True)
class Record:
    """What DIR/replica.json says: the owner this journal writes head.json as (None: none yet),
    and `claim`, the etag of the head it was restored from (None: not restored)."""

    url: str
    owner: str | None
    claim: str | None


def read_record(root: Path, url: str) -> Record:
    """The record for replica `url` (an empty one when the file is missing or names another URL);
    ReplicaDamageError-free: a damaged record is treated as missing (the shipper is then fenced
    by any foreign head, never wrongly allowed to write)."""
    try:
        doc = jsonfile.read_small(layout.replica_file(root), 64 << 10)
    except jsonfile.JsonFileError:
        doc = None
    if not isinstance(doc, dict) or doc.get("url") != url or doc.get("format") != 1:
        return Record(url, None, None)
    owner, claim = doc.get("owner"), doc.get("claim")
    return Record(url, owner if isinstance(owner, str) and owner.isalnum() else None,
                  claim if isinstance(claim, str) else None)


def write_record(root: Path, record: Record) -> None:
    """Write DIR/replica.json durably (temp, fsync, rename, directory fsync)."""
    os.makedirs(root, exist_ok=True)
    jsonfile.write_durably(layout.replica_file(root),
                           {"format": 1, "url": record.url, "owner": record.owner, "claim": record.claim})


def recorded_url(root: Path) -> str | None:
    """The replica URL DIR/replica.json names (the journal replicates there); None when the
    file is missing. ValueError naming the file when it is not a replica record or names no
    URL (a reader reports it; `read_record` treats such a file as missing)."""
    path = layout.replica_file(root)
    if not path.exists():
        return None
    try:
        doc = jsonfile.read_small(path, 64 << 10)
    except jsonfile.JsonFileError:
        raise ValueError(f"{path} is not a replica record") from None
    url = doc.get("url") if isinstance(doc, dict) else None
    if not isinstance(url, str):
        raise ValueError(f"{path} names no replica URL")
    return url


THIS, CLAIMED, ANOTHER = "this", "claimed", "another"


def ownership(record: Record, head: Head, etag: str) -> str:
    """Who may write the replica whose head.json is `head` (read with `etag`), for the journal
    whose DIR/replica.json is `record`: THIS journal writes it (the head names its owner);
    CLAIMED (the journal was restored from exactly that head and takes it over when it
    opens); else ANOTHER writer holds it (the journal is fenced). The rule `claim` acts on."""
    if head.owner == record.owner:
        return THIS
    if record.claim is not None and record.claim == etag:
        return CLAIMED
    return ANOTHER
