"""`replay verify DIR`: every log checksum and the chain, the term sequence, the compaction
boundary, every snapshot's chunks, and whether snapshots and log still meet.

Exit 0 only when everything is sound; 1 on any damage, each damaged index, snapshot and
chunk named. The checks, and how they stay truthful beside a live writer, are
`replay.verify_journal`'s (replay/audit.py); this command prints its findings and a verdict.
"""

from __future__ import annotations

import sys

from replay.audit import verify_journal

from .errors import EXIT_DAMAGE, EXIT_OK
from .output import Output, isatty
from .source import log_dir

HELP = "check every checksum, the chain, terms, compaction boundary and snapshot chunks (exit 1 on damage)"


def add_parser(sub, parents) -> None:
    p = sub.add_parser("verify", parents=parents, help=HELP, description=HELP)
    p.add_argument("dir", help="journal directory (or a bare event log)")
    p.set_defaults(run=run)


def run(args, out: Output) -> int:
    log_dir(args.dir)  # a path that is not a journal is bad input (exit 2), not damage
    report = verify_journal(args.dir, progress=not out.as_json and isatty(sys.stderr))
    for finding in report.findings:
        _emit(out, finding.record, finding.lines, "bold red" if finding.damage else
              "green" if finding.record.get("ok") else None)
    problems = len(report.damage)
    verdict = "sound" if report.ok else f"DAMAGED: {problems} problem(s)"
    _emit(out, {"check": "verdict", "ok": report.ok, "problems": problems}, (f"verdict: {verdict}",),
          "bold green" if report.ok else "bold red")
    return EXIT_OK if report.ok else EXIT_DAMAGE


def _emit(out: Output, record, lines, style) -> None:
    if out.as_json:
        out.record(dict(record))
        return
    for line in lines:
        out.line(line, style=style)
