"""The object-store interface every replica backend implements, and the key rules they share.

An ``ObjectStore`` is one bucket/prefix or one directory. Keys are ``"a/b/c"`` strings of
parts made of ``[A-Za-z0-9._-]`` that do not start with ``.`` (so ``..``, ``.``, hidden
names, empty parts and absolute paths are refused with ValueError naming the key); the
same rule holds on every backend, so a replica's layout is portable between them.

Etags: an opaque string that changes when the object's bytes change. The directory
backend uses the xxh3-128 hex digest of the content; S3 uses the server's ETag. Both
are content-derived for a plain put, so writing the very same bytes again keeps the
etag: callers that fence with ``put_if_match`` (head.json) put something unique in the
content (term, owner, time).
"""

from __future__ import annotations

import abc
import re

import xxhash

_PART = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]{0,254}")
_PREFIX = re.compile(r"[A-Za-z0-9._/-]*")
MAX_KEY = 1024


def check_key(key: str) -> str:
    """Return `key` if it is a valid object key; ValueError naming it otherwise.

    Refused: non-strings, "", a leading or trailing "/", empty parts ("a//b"), parts that
    start with "." (".", "..", hidden names), characters outside [A-Za-z0-9._-] and keys
    over 1024 characters.
    """
    if not isinstance(key, str) or not key or len(key) > MAX_KEY:
        raise ValueError(f"invalid object key {key!r}: must be a non-empty string of at most {MAX_KEY} characters")
    for part in key.split("/"):
        if not _PART.fullmatch(part):
            raise ValueError(f"invalid object key {key!r}: part {part!r} must match [A-Za-z0-9_-][A-Za-z0-9._-]* "
                             "(no empty parts, no leading '/' or '.', no '..')")
    return key


def check_prefix(prefix: str) -> str:
    """Return `prefix` if it could begin a valid key ("" lists everything); ValueError otherwise."""
    if not isinstance(prefix, str) or not _PREFIX.fullmatch(prefix) or prefix.startswith("/") \
            or "//" in prefix or any(p.startswith(".") for p in prefix.split("/")[:-1]) \
            or prefix.split("/")[-1].startswith("."):
        raise ValueError(f"invalid key prefix {prefix!r}: must be the beginning of a valid object key")
    return prefix


def content_etag(data) -> str:
    """The directory backend's etag: xxh3-128 of the bytes, 32 hex digits."""
    return xxhash.xxh3_128_hexdigest(data)


def _valid_key(key: str) -> bool:
    try:
        check_key(key)
        return True
    except ValueError:
        return False


class ObjectStore(abc.ABC):
    """One bucket/prefix or one directory of immutable-by-default objects. Thread-safe.

    Every method validates its key first (ValueError naming it) and raises
    ReplicaUnavailableError when the store cannot be reached.
    """

    url: str

    @abc.abstractmethod
    def put_if_absent(self, key: str, data: bytes) -> bool:
        """Create `key` holding `data` unless it exists: True if created, False if it existed
        (the existing object is never overwritten, whatever it holds). A reader never sees a
        partial object; two concurrent calls for one key: exactly one returns True."""

    @abc.abstractmethod
    def put_if_match(self, key: str, data: bytes, etag: str | None) -> str:
        """Conditional write; returns the new etag.

        etag None: create only; PreconditionFailedError if `key` exists. Otherwise replace
        only if the object's current etag equals `etag`; PreconditionFailedError if it does
        not or if the object is missing. Of concurrent writers with the same etag at most one
        succeeds. A write whose answer was lost (ReplicaUnavailableError, or a client retry of
        a write that had landed, which then reads as PreconditionFailedError) may or may not
        have happened: a caller that must know reads the object back and compares content."""

    @abc.abstractmethod
    def get(self, key: str, limit: int) -> tuple[bytes, str]:
        """(data, etag) of `key`. ObjectNotFoundError if missing; ObjectTooLargeError if it holds
        more than `limit` bytes (never reads more than limit + 1); ReplicaDamageError if the
        object is not a plain object (directory backend: a symlink, FIFO, device, directory)."""

    @abc.abstractmethod
    def open_reader(self, key: str, limit: int) -> "ObjectReader":
        """A reader of `key`'s bytes in order, for objects too large to hold twice (segments):
        its `size` is known before any byte is read, so a caller checks a header against it
        and streams the rest (close it, or use it as a context manager). Errors as `get`:
        ObjectNotFoundError if missing, ReplicaDamageError if not a plain object,
        ObjectTooLargeError at once if `size` > `limit` (no body byte read) and from `read`
        if more than `limit` bytes arrive (a server sending more than it declared)."""

    @abc.abstractmethod
    def list(self, prefix: str) -> list[str]:
        """Keys that start with `prefix` (a plain string prefix, "" for all), sorted; [] if none.
        Names that are not valid keys are not listed (S3: a foreign key obstore cannot even
        parse, with a "..", "." or empty part, makes the listing ReplicaDamageError naming it)."""

    @abc.abstractmethod
    def delete(self, key: str) -> None:
        """Remove `key`; a missing key is fine (no error)."""

    def close(self) -> None:
        """Release the client; idempotent. The store may not be used afterwards."""

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __repr__(self):
        return f"{type(self).__name__}({self.url!r})"


class ObjectReader(abc.ABC):
    """One object's bytes, read in order (ObjectStore.open_reader). `key`, `size` (bytes the
    object holds, as the store states it before the body is read)."""

    key: str
    size: int

    @abc.abstractmethod
    def read(self, n: int) -> bytes:
        """At most `n` (> 0) bytes, b"" at the end; ObjectTooLargeError past the reader's limit."""

    @abc.abstractmethod
    def close(self) -> None:
        """Release the file or connection; idempotent."""

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
