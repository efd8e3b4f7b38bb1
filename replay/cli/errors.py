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

Which failures are damage is the library's rule, `replay.audit.is_damage` (the shared
`DamageError` of every package, replica objects included; the table is in
replay/INVARIANTS.md). Exit 2 is kept for what the user can fix on the command line.
"""

from __future__ import annotations

import snapshots
from eventlog import LogError
from replay.audit import is_damage as files_damaged
from replay.errors import ReplayError
from torch_eventlog import errors as kinds

EXIT_OK, EXIT_DAMAGE, EXIT_BAD_INPUT, EXIT_INTERNAL = 0, 1, 2, 3

_BAD_INPUT = (LogError, snapshots.SnapshotError, ReplayError, kinds.LockedError, kinds.ClosedError, IndexError,
              KeyError, ValueError, TypeError, OSError)


class CliError(Exception):
    """Bad input the user can fix; printed as one line, exit status 2 (or `status`)."""

    def __init__(self, message: str, status: int = EXIT_BAD_INPUT):
        super().__init__(message)
        self.status = status


def is_damage(exc: BaseException) -> bool:
    """Whether `exc` reports damage to the journal's files (exit 1) rather than bad input:
    `replay.audit.is_damage`, or a CliError raised with the damage status."""
    if isinstance(exc, CliError):
        return exc.status == EXIT_DAMAGE
    return files_damaged(exc)


def exit_status(exc: BaseException) -> int:
    """The exit status for an exception that ended a subcommand (see the module doc)."""
    if isinstance(exc, CliError):
        return exc.status
    if is_damage(exc):
        return EXIT_DAMAGE
    if isinstance(exc, _BAD_INPUT):
        return EXIT_BAD_INPUT
    return EXIT_INTERNAL
