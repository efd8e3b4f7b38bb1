"""The audit CLI: read a journal (or a bare event log) without disturbing a live writer.

One module per subcommand (or close group); each has ``add_parser(sub, parents)``, which
registers its arguments and sets ``run(args, out) -> exit status``. Support modules:
`source` (opening readonly), `output` (JSON lines / rich / plain), `entries` (listing
rows), `summary` (payload and tensor summaries), `args` (index and time checks),
`userspec` (importing --ops/--state, refusing a module that runs a script when imported),
`errors` (exit statuses), `replica` (`restore URL DIR`, and `log`/`stats`/`verify`
of a replica URL through a temporary restore), `multirank` (`log`, `stats` and `verify` of a multi-rank journal
directory: every rank and the group, from replay.ranks.audit). Dispatch and error
reporting live in `main`.

Readers never write: the log is opened readonly (no lock, no term bump, short read
transactions). `export` writes only its --out file, and at a snapshot's index imports no
user code. Snapshot sizes are said in one vocabulary everywhere (logical, stored,
written: snapshots/reports.py). `prune` and `truncate` are the only commands that change a journal, and
both refuse to run beside a live writer; `fork` only reads its source (a writer may run) and
writes a new journal directory.
"""

from __future__ import annotations

from . import diff, export, fork, log, replica, retention, runs, show, state, stats, tail, truncate, verify

COMMANDS = (log, show, verify, stats, tail, retention, state, diff, export, truncate, fork, replica, runs)
