"""The error vocabulary shared by `eventlog`, `snapshots` and `replay`: four kinds.

Each package keeps its own root (LogError, SnapshotError, ReplayError, ReplicaError) and
its own names; these kinds are extra bases, so one ``except`` or ``isinstance`` sees
the same kind from every package:

- `DamageError`: something in a file (or a replica object) is not what a writer wrote;
  the named file must be restored or the damage removed. ``replay.audit.is_damage`` is
  ``isinstance(exc, DamageError)``; the CLI exits 1 for it.
- `ClosedError`: an object was used after its close().
- `LockedError`: another live process holds the writer lock this call needs.
- `UnsafeFileError`: a file anyone may have replaced is not a regular file (symlink,
  FIFO, device, directory) or is larger than its reader allows. A kind of damage.

Why a shared leaf, not one marker per package joined by ``abc.ABC.register``: Python's
``except`` clause ignores virtual subclasses (``__subclasscheck__`` is not consulted),
so ``except replay.DamageError`` would silently miss an ``eventlog`` error registered
into it; and a duplicated module "kept equal by contract" is two classes, which no
isinstance can join. One class object, inherited for real, is the only way
``except DamageError`` means the same thing in every package. Each package re-exports
`DamageError` (``eventlog.DamageError is snapshots.DamageError is replay.DamageError``).

The table of every error, its package, meaning and exit status is in
replay/INVARIANTS.md ("One error vocabulary").
"""

from __future__ import annotations

__all__ = ["DamageError", "ClosedError", "LockedError", "UnsafeFileError"]


class DamageError(Exception):
    """Something in a file (or a replica object) is not what a writer wrote; the message names it."""


class ClosedError(Exception):
    """An object was used after its close()."""


class LockedError(Exception):
    """Another live process holds the writer lock this call needs; the message names it (and its pid when known)."""


class UnsafeFileError(DamageError):
    """A file is not a regular file (symlink, FIFO, device, directory, socket) or is larger than
    its reader allows; the message says which. It is damage: a writer never leaves one."""
