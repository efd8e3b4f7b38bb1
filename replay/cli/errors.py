"""Errors and exit statuses of the audit CLI, and which failure is which.

Exit statuses (every subcommand):
  0  done; for `verify`, everything checked is sound
  1  damage found: a corrupt entry or chunk, a divergence, a snapshot that does not
     verify, a log file that is cut short or structurally corrupt, a damaged meta record
     (term, first index, boundary, format). Reported as one line naming the file (and
     the index where there is one), never as a traceback.
  2  bad command-line input: a path that is not a journal, a compacted or out-of-range
     index, an ops spec that does not import, a writer holding the journal, a usage error
  3  an unexpected internal error (a bug): one line naming the exception; `--debug`
     shows the traceback

Design choice: once the path holds a ``data.mdb`` (the user pointed at an event log),
anything that keeps it from being read as one is damage (1), whatever eventlog calls it:
`FormatError` included, since a damaged ``format`` or ``term`` record reads exactly like
a file that is not a log, and 4 bytes of garbage in ``format`` like a newer version.
Exit 2 is kept for what the user can fix on the command line.
"""

from __future__ import annotations

import errno
import struct

import lmdb

import snapshots
from eventlog import CorruptEntryError, DamagedLogError, FormatError, LogError
from replay.errors import DivergenceError, ReplayError

EXIT_OK, EXIT_DAMAGE, EXIT_BAD_INPUT, EXIT_INTERNAL = 0, 1, 2, 3

# LMDB's own words for a damaged file. eventlog is to turn these into DamagedLogError /
# CorruptEntryError on every read path; until every path does, a raw one reaching the
# command boundary is still damage, not a crash.
_LMDB_DAMAGE = (lmdb.CorruptedError, lmdb.PageNotFoundError, lmdb.InvalidError, lmdb.PanicError,
                lmdb.IncompatibleError, lmdb.BadChecksumError, lmdb.BadValsizeError, lmdb.ProblemError,
                lmdb.DiskError)
_DAMAGE = (CorruptEntryError, DamagedLogError, FormatError, snapshots.CorruptSnapshotError, DivergenceError,
           *_LMDB_DAMAGE,
           struct.error)  # only eventlog unpacks stored bytes with struct: a short record is damage
_BAD_INPUT = (LogError, snapshots.SnapshotError, ReplayError, IndexError, KeyError, ValueError, TypeError,
              OSError)


class CliError(Exception):
    """Bad input the user can fix; printed as one line, exit status 2 (or `status`)."""

    def __init__(self, message: str, status: int = EXIT_BAD_INPUT):
        super().__init__(message)
        self.status = status


def is_damage(exc: BaseException) -> bool:
    """Whether `exc` reports damage to the journal's files (exit 1) rather than bad input."""
    if isinstance(exc, CliError):
        return exc.status == EXIT_DAMAGE
    if isinstance(exc, _DAMAGE):
        return True
    if isinstance(exc, OSError) and exc.errno == errno.EIO:
        return True  # the disk could not return what the file holds
    # eventlog wraps an LMDB failure to open as LogError("cannot open ...") from it.
    return isinstance(exc, LogError) and isinstance(exc.__cause__, _LMDB_DAMAGE)


def exit_status(exc: BaseException) -> int:
    """The exit status for an exception that ended a subcommand (see the module doc)."""
    if isinstance(exc, CliError):
        return exc.status
    if is_damage(exc):
        return EXIT_DAMAGE
    if isinstance(exc, _BAD_INPUT):
        return EXIT_BAD_INPUT
    return EXIT_INTERNAL
