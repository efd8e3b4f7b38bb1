"""Parsing, dispatch and error reporting of ``replay`` / ``python -m replay``.

Every failure ends as one line on stderr and an exit status (cli.errors says which is
which): ``replay CMD: error: ...`` for bad input, ``replay CMD: damaged: FILE: ...`` for
damage, ``replay CMD: internal error: ...`` for a bug; ``--debug`` adds the traceback.
Warnings and log records on stderr go through the same `printable` rule as stdout.
"""

from __future__ import annotations

import argparse
import logging
import sys
import traceback
import warnings
from pathlib import Path

import snapshots
from eventlog import LogError
from replay import layout
from replay.errors import HandlerError, ReplayError

from . import COMMANDS, replica

READS_REPLICAS = ("log", "stats", "verify")  # the commands that also read a replica URL (a temporary restore)
from .errors import EXIT_DAMAGE, EXIT_INTERNAL, CliError, exit_status
from .output import Output, printable
from .source import log_dir


def common_options(with_json: bool) -> argparse.ArgumentParser:
    """The options every audit subcommand takes; defaults suppressed so `replay --debug log` and
    `replay log --debug` both work."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                        help="show tracebacks instead of one-line errors")
    if with_json:
        common.add_argument("--json", action="store_true", default=argparse.SUPPRESS,
                            help="one JSON object per line, for scripts")
        replica.add_option_argument(common)
    return common


def register(sub) -> None:
    """Add every audit subcommand to the `replay` parser's subparsers."""
    parents = [common_options(with_json=True)]
    for command in COMMANDS:
        command.add_parser(sub, parents)


def run(args) -> int:
    """Run the parsed subcommand; turn every error into one line and an exit status."""
    debug = getattr(args, "debug", False)
    _log_to_stderr()
    out = Output(as_json=getattr(args, "json", False))
    try:
        with warnings.catch_warnings():
            warnings.showwarning = _show_warning
            if args.command in READS_REPLICAS:
                with replica.local_copy(args):
                    return args.run(args, out)
            if replica.is_url(getattr(args, "dir", "")):
                raise CliError(f"{args.dir} is a replica URL: `replay {args.command}` works on a journal directory "
                               f"(restore it first: replay restore URL DIR)")
            return args.run(args, out)
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        sys.stderr.close()  # `replay log DIR | head`: the reader left; not an error
        return 0
    except Exception as exc:  # noqa: BLE001 - the command boundary: every failure gets a verdict
        if debug:
            traceback.print_exc()
        status = exit_status(exc)
        print(f"replay {args.command}: {_one_line(exc, status, args)}", file=sys.stderr)
        return status


def _one_line(exc: BaseException, status: int, args) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    if not (isinstance(exc, HandlerError) and exc.__cause__ is not None) and \
            not isinstance(exc, (CliError, LogError, snapshots.SnapshotError, ReplayError)):
        text = f"{type(exc).__name__}: {text}"
    if status == EXIT_DAMAGE:
        where = _damaged_file(exc, args)
        text = f"damaged: {where}: {text}" if where and where not in text else f"damaged: {text}"
    elif status == EXIT_INTERNAL:
        text = f"internal error: {text}" + ("" if getattr(args, "debug", False) else " (--debug shows the traceback)")
    else:
        text = f"error: {text}"
    return printable(text)


def _damaged_file(exc: BaseException, args) -> str | None:
    """The file a damage report is about: the log's data.mdb unless it is a snapshot's."""
    if isinstance(exc, (snapshots.SnapshotError, ReplayError)) or not getattr(args, "dir", None):
        return None  # snapshot errors name their snapshot; a divergence is not a file's damage
    try:
        return str(layout.lmdb_file(log_dir(args.dir)))
    except CliError:
        return str(Path(args.dir))


def _log_to_stderr() -> None:
    """`truncate` and the engine report on the `replay` logger: show warnings on stderr, escaped."""
    handler = logging.StreamHandler()
    handler.setFormatter(_PrintableFormatter("%(name)s: %(levelname)s: %(message)s"))
    logging.basicConfig(level=logging.WARNING, handlers=[handler])  # no-op if already configured


class _PrintableFormatter(logging.Formatter):
    """A log record's message goes through `printable`: it may quote op names and paths."""

    def formatMessage(self, record: logging.LogRecord) -> str:
        return printable(super().formatMessage(record))


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """Warnings (a snapshot's failed follow-up, a skipped damaged snapshot) as one escaped line."""
    print(f"replay: {category.__name__}: {printable(message)}", file=sys.stderr if file is None else file)
