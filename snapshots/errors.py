"""Errors raised by the snapshot store, one sentence each on when.

Damage (a file is not what a writer wrote) is every error with the shared base
`DamageError`; `ClosedError` and `LockedError` have the shared kinds of the same names as
extra bases (torch_eventlog.errors; the table is in replay/INVARIANTS.md).
"""

from __future__ import annotations

from torch_eventlog import errors as kinds

DamageError = kinds.DamageError


class SnapshotError(Exception):
    """Base class of every error this package raises on purpose."""


class SnapshotNotFoundError(SnapshotError, LookupError):
    """Raised when a snapshot is asked for by id but no committed manifest has that name
    (never saved, or deleted by `prune`)."""


class CorruptSnapshotError(SnapshotError, kinds.DamageError):
    """Raised when loading a snapshot whose manifest or one of whose chunks fails a check
    (checksum, schema, length, hash); `manifest` names the snapshot and `chunk` the
    chunk id (None when the manifest itself is bad)."""

    def __init__(self, manifest: str, chunk: str | None, reason: str):
        self.manifest = manifest
        self.chunk = chunk
        self.reason = reason
        where = f"chunk {chunk} of snapshot {manifest}" if chunk else f"manifest of snapshot {manifest}"
        super().__init__(f"{where} is corrupt: {reason}")


class StateMismatchError(SnapshotError, ValueError):
    """Raised by `load_into` when the live state cannot take the snapshot in place (missing
    key, wrong container, tensor dtype or shape differs); `key` is the key path."""

    def __init__(self, key: str, reason: str):
        self.key = key
        self.reason = reason
        super().__init__(f"state mismatch at {key}: {reason}")


class ComponentNotFoundError(SnapshotError, LookupError):
    """Raised by `load` / `load_into` with `only=` when a selector names nothing in the
    snapshot; `selector` is it and `available` the snapshot's top-level components."""

    def __init__(self, selector: str, available: list[str]):
        self.selector = selector
        self.available = available
        super().__init__(f"{selector!r} is not in the snapshot (its components: {', '.join(available) or 'none'})")

    def __str__(self) -> str:  # LookupError's str() would quote the whole message
        return self.args[0]


class LockedError(SnapshotError, kinds.LockedError):
    """Raised when another live process (or another open store in this one) holds the
    store's writer lock, by the first write (`save`, `save_async`, `prune`)."""


class ClosedError(SnapshotError, kinds.ClosedError):
    """Raised when a store is used after `close()`."""


class UnsupportedPlatformError(SnapshotError):
    """Raised when opening a store on a host whose byte order is not little-endian."""


class CorruptFileError(CorruptSnapshotError):
    """Raised by the transfer functions (snapshots.transfer) when one manifest or chunk file,
    or bytes handed in as one, fails a check: `manifest` or `chunk` names it (the other is
    None), `reason` says which check (symlink or not a regular file, size, schema, hash)."""

    def __init__(self, manifest: str | None, chunk: str | None, reason: str):
        super().__init__(manifest or "", chunk, reason)
        self.manifest = manifest
        where = f"chunk {chunk}" if chunk else f"manifest {manifest}"
        self.args = (f"{where} is corrupt: {reason}",)
