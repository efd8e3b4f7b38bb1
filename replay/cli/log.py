"""`replay log DIR`: one line per entry, like `git log --oneline`, optionally filtered.

A multi-rank journal DIR lists every rank's entries merged by index, one line per (index,
rank), those above the cut marked (cli.multirank); ``--rank R`` lists rank R alone."""

from __future__ import annotations

from .args import check_entry_index, index_arg, time_arg
from .entries import print_row, rows
from .errors import EXIT_DAMAGE, EXIT_OK
from .multirank import add_rank_option, rank_path, run_log
from .output import Output
from .source import open_source

HELP = ("list entries: index, term, time, op, payload size, payload summary "
        "(a multi-rank journal: every rank, merged by index)")


def add_parser(sub, parents) -> None:
    p = sub.add_parser("log", parents=parents, help=HELP, description=HELP + ". Ranges are inclusive.")
    p.add_argument("dir", help="journal directory, multi-rank journal directory (rank-<r>/...) or bare event log")
    add_rank_option(p)
    p.add_argument("--from", dest="start", type=index_arg, metavar="I", help="first index to list (default: first retained)")
    p.add_argument("--to", dest="end", type=index_arg, metavar="J", help="last index to list, inclusive (default: last)")
    p.add_argument("--op", action="append", metavar="NAME", help="only entries of this op (repeatable)")
    p.add_argument("--term", type=int, metavar="T", help="only entries written in term T")
    p.add_argument("--since", type=time_arg, metavar="TIME", help="only entries appended at or after TIME (ISO time, or an age: 30m, 2h, 3d)")
    p.set_defaults(run=run)


def run(args, out: Output) -> int:
    """Exit 0, or 1 if a listed entry is damaged (the listing still covers the rest)."""
    ops = set(args.op or ())

    def keep(header) -> bool:
        return ((not ops or header.op in ops)
                and (args.term is None or header.term == args.term)
                and (args.since is None or header.time_ns >= args.since))

    path = rank_path(args)
    if path is None:
        return run_log(args, out, keep)
    with open_source(path) as src:
        log = src.log
        if args.start is not None:
            check_entry_index(log, args.start)
        if args.end is not None and args.start is not None and args.end < args.start:
            return EXIT_OK  # an empty range, as `git log A..A` is empty
        stop = None if args.end is None else args.end + 1
        damaged = 0
        for row in rows(log, args.start, stop, keep):
            damaged += row.damaged is not None
            print_row(out, row)
    return EXIT_DAMAGE if damaged else EXIT_OK
