"""``python -m eventlog demo [DIR]``: a round trip through the write-ahead log.

Appends tensor-carrying entries in each durability mode, SIGKILLs a writer child
mid-stream, reopens the log as a new term, verifies every checksum and the chain, and
prints what it found. Exit status 0 only when every acknowledged entry came back intact.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
import warnings
from pathlib import Path

from .log import EventLog

_KILLED_WRITER = textwrap.dedent("""
    import sys
    from eventlog import EventLog
    log = EventLog.open(sys.argv[1], durability="group")
    while True:
        i = log.append("killed_writer_step", {"i": log.last_index + 1, "data": b"x" * 512})
        log.wait_durable(i)
        print(i, flush=True)
""")


def demo(directory: Path, entries: int) -> int:
    warnings.filterwarnings("ignore", message="Failed to initialize NumPy")  # torch warns without numpy
    import torch

    path = directory / "demo-log"
    rows = []
    for mode in ("sync", "group", "os"):
        started = time.perf_counter()
        with EventLog.open(path, durability=mode) as log:
            for step in range(entries):
                log.append("sgd_step", {"step": step, "lr": 0.1, "grad": torch.randn(64, dtype=torch.bfloat16)})
            log.flush()
            rows.append((f"append x{entries} ({mode})", f"term {log.term}", f"{entries / (time.perf_counter() - started):,.0f} entries/s"))

    child = subprocess.Popen([sys.executable, "-c", _KILLED_WRITER, str(path)], stdout=subprocess.PIPE, text=True)
    acknowledged = int(child.stdout.readline())
    time.sleep(0.3)
    os.kill(child.pid, signal.SIGKILL)
    child.wait()
    acknowledged = max([acknowledged] + [int(x) for x in child.stdout.read().split()])
    rows.append(("writer SIGKILLed", f"after ack of index {acknowledged}", ""))

    with EventLog.open(path) as log:
        started = time.perf_counter()
        count = sum(1 for _ in log.entries())
        scan = count / (time.perf_counter() - started)
        report = log.verify()
        present = log.last_index >= acknowledged
        rows.append(("reopened", f"term {log.term}", f"entries {log.first_index}..{log.last_index}"))
        rows.append(("full-decode scan", f"{count} entries", f"{scan:,.0f} entries/s"))
        rows.append(("terms (term, first index)", str(report.terms), ""))
        rows.append(("verify", "sound" if report.ok else f"{len(report.damage)} damaged", ""))
        rows.append(("acknowledged entries present", "yes" if present else "NO", ""))
    _print_table(rows)
    return 0 if report.ok and present else 1


def _print_table(rows) -> None:
    if sys.stdout.isatty():
        from rich.console import Console
        from rich.table import Table

        table = Table("step", "result", "detail", title="eventlog round trip")
        for row in rows:
            table.add_row(*row)
        Console().print(table)
    else:
        for row in rows:
            print("  ".join(part for part in row if part))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m eventlog")
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("demo", help="append, crash, reopen and verify a log")
    run.add_argument("dir", nargs="?", help="where to put the log (default: a temporary directory)")
    run.add_argument("--entries", type=int, default=2000)
    args = parser.parse_args(argv)
    if args.dir:
        Path(args.dir).mkdir(parents=True, exist_ok=True)
        return demo(Path(args.dir), args.entries)
    with tempfile.TemporaryDirectory() as tmp:
        return demo(Path(tmp), args.entries)


if __name__ == "__main__":
    sys.exit(main())
