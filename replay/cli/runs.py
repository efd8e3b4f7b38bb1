"""`replay runs DIR [--json]`: every attempt `replay run` recorded under DIR/supervisor/."""

from __future__ import annotations

import datetime

from replay.jsonfile import JsonFileError
from replay.supervisor import layout
from replay.supervisor.records import ATTEMPT_FIELDS, read_attempts

from .errors import CliError, EXIT_OK
from .output import Output

HELP = "list the attempts of `replay run` (class, exit, durable index, decision, failing entry)"


def add_parser(sub, parents) -> None:
    p = sub.add_parser("runs", parents=parents, help=HELP, description=HELP)
    p.add_argument("dir", help="journal directory given to `replay run`")
    p.set_defaults(run=run)


def run(args, out: Output) -> int:
    records = layout.records_dir(args.dir)
    try:
        attempts, skipped = read_attempts(records)
    except JsonFileError as exc:
        raise CliError(f"{layout.attempts_path(records)}: {exc}") from None
    if not attempts and not records.is_dir():
        raise CliError(f"{args.dir}: no attempts recorded (no {layout.SUPERVISOR_DIR}/ directory: "
                       "was it run under `replay run`?)")
    for attempt in attempts:
        if out.as_json:
            out.record({k: attempt[k] for k in ATTEMPT_FIELDS})
            continue
        out.line(_row(attempt))
    if skipped and not out.as_json:
        out.line(f"({skipped} unreadable line(s) in {layout.ATTEMPTS} skipped)")
    return EXIT_OK


def _when(stamp) -> str:
    if not isinstance(stamp, (int, float)):
        return "?"
    return datetime.datetime.fromtimestamp(stamp).strftime("%Y-%m-%d %H:%M:%S")


def _row(a: dict) -> str:
    how = f"exit {a['exit']}" if a["exit"] is not None else f"signal {a['signal']}"
    text = (f"attempt {a['attempt']}  {_when(a['started'])} .. {_when(a['ended'])}  {a['class']:<14} {how:<10} "
            f"index {a['index_start']} -> {a['index_end']}  {a['decision']}")
    entry = a["entry"]
    if isinstance(entry, dict):
        text += f"  entry {entry.get('index')} (op {entry.get('op')!r})"
    if a["message"]:
        text += f"  {str(a['message']).splitlines()[0][:200]}"
    if a["dump"]:
        text += f"  dump {a['dump']}"
    return text
