"""Errors and exit statuses of the audit CLI.

Exit statuses (every subcommand):
  0  done; for `verify`, everything checked is sound
  1  damage found (a corrupt entry or chunk, a divergence, a snapshot that does not verify)
  2  bad input (not a journal, compacted or out-of-range index, an ops spec that does not
     import, a writer holding the journal) or a usage error
"""

from __future__ import annotations

EXIT_OK, EXIT_DAMAGE, EXIT_BAD_INPUT = 0, 1, 2


class CliError(Exception):
    """Bad input the user can fix; printed as one line, exit status 2 (or `status`)."""

    def __init__(self, message: str, status: int = EXIT_BAD_INPUT):
        super().__init__(message)
        self.status = status
