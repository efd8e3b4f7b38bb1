"""Parsing, dispatch and error reporting of ``replay`` / ``python -m replay``.

Errors the user can act on (bad paths, indexes, specs; damage) are one line on stderr
and a non-zero exit status (cli.errors); ``--debug`` shows the traceback instead.
"""

from __future__ import annotations

import argparse
import logging
import sys
import traceback

import snapshots
from eventlog import CorruptEntryError, LogError
from replay.errors import DivergenceError, HandlerError, ReplayError

from . import COMMANDS
from .errors import EXIT_BAD_INPUT, EXIT_DAMAGE, CliError
from .output import Output

# Damage is exit 1 (as `verify` reports it); every other failure is bad input, exit 2.
_DAMAGE = (CorruptEntryError, snapshots.CorruptSnapshotError, DivergenceError)


def common_options(with_json: bool) -> argparse.ArgumentParser:
    """The options every audit subcommand takes; defaults suppressed so `replay --debug log` and
    `replay log --debug` both work."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                        help="show tracebacks instead of one-line errors")
    if with_json:
        common.add_argument("--json", action="store_true", default=argparse.SUPPRESS,
                            help="one JSON object per line, for scripts")
    return common


def register(sub) -> None:
    """Add every audit subcommand to the `replay` parser's subparsers."""
    parents = [common_options(with_json=True)]
    for command in COMMANDS:
        command.add_parser(sub, parents)


def run(args) -> int:
    """Run the parsed subcommand; turn expected errors into one line and an exit status."""
    debug = getattr(args, "debug", False)
    # `truncate` and the engine report on the `replay` logger; show warnings on stderr.
    logging.basicConfig(level=logging.WARNING, format="%(name)s: %(levelname)s: %(message)s")
    out = Output(as_json=getattr(args, "json", False))
    try:
        return args.run(args, out)
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        sys.stderr.close()  # `replay log DIR | head`: the reader left; not an error
        return 0
    except (CliError, LogError, snapshots.SnapshotError, ReplayError, IndexError, KeyError, ValueError,
            TypeError, OSError) as exc:
        if debug:
            traceback.print_exc()
        status = exc.status if isinstance(exc, CliError) else EXIT_DAMAGE if isinstance(exc, _DAMAGE) else EXIT_BAD_INPUT
        print(f"replay {args.command}: error: {_one_line(exc)}", file=sys.stderr)
        return status


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    if isinstance(exc, HandlerError) and exc.__cause__ is not None:
        return text
    if not isinstance(exc, (CliError, LogError, snapshots.SnapshotError, ReplayError)):
        text = f"{type(exc).__name__}: {text}"
    return text
