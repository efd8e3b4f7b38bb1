"""`replay fork DIR --at I NEWDIR`: roll back past a snapshot without touching DIR.

`replay truncate` cannot drop entries sealed in the archive (with an archive the log is
compacted through the newest snapshot), so an operator who finds bad data after a
snapshot forks instead: NEWDIR becomes a journal whose history is DIR's entries up to
I, with DIR's snapshots at or below I, and a ``replay.fork`` audit record at I + 1
naming DIR, its term and the reason. Every rule lives in `replay.fork`
(replay/forking.py); this module parses and prints.
"""

from __future__ import annotations

import replay

from .args import index_arg
from .errors import EXIT_OK
from .output import Output

HELP = "make NEWDIR a new journal whose history is DIR's entries up to I (DIR is left as it is)"


def add_parser(sub, parents) -> None:
    p = sub.add_parser("fork", parents=parents, help=HELP, description=HELP)
    p.add_argument("dir", help="the source journal directory (only read; a live writer may keep running)")
    p.add_argument("--at", required=True, type=index_arg, metavar="I", help="keep entries up to and including I")
    p.add_argument("newdir", help="the new journal directory (must not exist, or be empty)")
    p.add_argument("--reason", default="", help="why, recorded in the replay.fork audit entry")
    p.set_defaults(run=run)


def run(args, out: Output) -> int:
    report = replay.fork(args.dir, at=args.at, dest=args.newdir, reason=args.reason)
    if out.as_json:
        out.record({"source": str(report.source), "dest": str(report.dest), "at": report.at,
                    "first_index": report.first_index, "source_last_index": report.source_last_index,
                    "source_term": report.source_term, "term": report.term, "fork_index": report.fork_index,
                    "segments": report.segments,
                    "segments_linked": report.segments_linked, "snapshots": report.snapshots, "skipped": report.skipped,
                    "chunks_linked": report.linked, "chunks_copied": report.copied, "reason": args.reason})
        return EXIT_OK
    out.line(f"forked {report.source} at {report.at} into {report.dest}")
    out.line(f"history: entries {report.first_index}..{report.at} of {report.source_last_index} "
             f"({report.segments} segment(s), {report.segments_linked} hard-linked)")
    out.line(f"snapshots: {', '.join(report.snapshots) or 'none'} ({report.linked} chunk(s) hard-linked, "
             f"{report.copied} copied)")
    for line in report.skipped:
        out.line(f"skipped: {line}")
    out.line(f"recorded as a replay.fork audit entry at {report.fork_index} (term {report.term}); "
             f"open {report.dest} with the same ops to go on from {report.at}")
    return EXIT_OK
