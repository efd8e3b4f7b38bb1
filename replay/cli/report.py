"""`replay report DIR --out run.html`: the run's history on one self-contained HTML page.

Attempts of `replay run` by class on a time axis, restarts, recoveries, snapshots, and each
recorded metric by step (replay/runreport.py draws it; matplotlib is the `report` extra).
Reads the journal readonly, so it may run beside the writer; writes only --out.
"""

from __future__ import annotations

import os
from pathlib import Path

from replay.runreport import ReportDependencyError, gather, render

from .errors import EXIT_OK, CliError
from replay import layout
from .output import Output
from .source import log_dir

HELP = "write an HTML page of the run: attempts by class, recoveries, snapshots, recorded metrics by step"


def add_parser(sub, parents) -> None:
    p = sub.add_parser("report", parents=parents, help=HELP, description=HELP)
    p.add_argument("dir", help="journal directory (or multi-rank journal directory: rank 0 unless --rank)")
    p.add_argument("--out", required=True, metavar="FILE", help="the HTML file to write (replaced atomically)")
    p.add_argument("--rank", type=int, metavar="R", help="with a multi-rank journal DIR: rank R's log, snapshots "
                   "and metrics (default 0); the attempts are the group's")
    p.set_defaults(run=run)


def run(args, out: Output) -> int:
    root = Path(args.dir)
    if layout.ranks_on_disk(root):
        log_dir(layout.rank_dir(root, args.rank or 0))  # CliError naming the rank's directory when missing
    elif args.rank is not None:
        raise CliError(f"--rank {args.rank}: {root} is not a multi-rank journal (no rank-<r> directory)")
    else:
        log_dir(root)  # CliError naming DIR when it holds no journal
    try:
        page = render(gather(root, args.rank))
    except ReportDependencyError as exc:
        raise CliError(str(exc)) from None
    target = Path(args.out)
    temporary = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    temporary.write_text(page, encoding="utf-8")
    os.replace(temporary, target)
    out.line(f"wrote {target} ({len(page.encode()) // 1024} KiB)")
    return EXIT_OK
