"""`replay truncate DIR --after I`: the operator command of replay/INVARIANTS.md invariant 6.

Removes a poison entry (a handler that raised, whose process died before the journal
could clean up) and everything after it, through `replay.truncate`: it takes the
writer lock (refused while a journal is open), refuses if a snapshot covers a dropped
entry, appends a ``replay.truncate`` audit entry recording what was dropped and why, and
logs a warning. `--dry-run` shows what would go without changing anything.
"""

from __future__ import annotations

import replay
from replay.operator import refuse_live_writer

from .args import check_entry_index, index_arg
from .entries import print_row, rows
from .errors import CliError, EXIT_OK
from .output import Output
from .source import locate_journal, open_source

HELP = "drop every entry after I (a poison entry left by a crash); logged in the log itself"


def add_parser(sub, parents) -> None:
    p = sub.add_parser("truncate", parents=parents, help=HELP, description=HELP)
    p.add_argument("dir", help="journal directory (not open by any process)")
    p.add_argument("--after", required=True, type=index_arg, metavar="I", help="keep entries up to and including I")
    p.add_argument("--reason", default="", help="why, recorded in the audit entry")
    p.add_argument("--dry-run", action="store_true", help="list what would be dropped; change nothing")
    p.set_defaults(run=run)


def run(args, out: Output) -> int:
    directory, store_dir = locate_journal(args.dir)
    if store_dir is None:
        raise CliError(f"{args.dir} is a bare event log, not a journal; truncate works on journals")
    refuse_live_writer(directory, "close the journal first")
    with open_source(args.dir) as src:
        if args.after != src.log.first_index - 1:
            check_entry_index(src.log, args.after)
        doomed = list(rows(src.log, args.after + 1, None))
    if args.dry_run or not doomed:
        if not out.as_json:
            out.line(f"would drop {len(doomed)} entries after {args.after}:" if doomed else
                     f"nothing to drop: {args.after} is the last entry")
        for row in doomed:
            print_row(out, row)
        return EXIT_OK
    dropped = replay.truncate(args.dir, after=args.after, reason=args.reason)
    if out.as_json:
        out.record({"after": args.after, "dropped": [{"index": i, "op": op} for i, op in dropped],
                    "reason": args.reason})
    else:
        out.line(f"dropped {len(dropped)} entries after {args.after}: "
                 + ", ".join(f"{i} ({op})" for i, op in dropped))
        out.line("recorded as a replay.truncate audit entry at the end of the log")
    return EXIT_OK
