"""``replay`` / ``python -m replay``: the command line of the replay engine.

Subcommands:
  demo        train (or run inference) under a Journal, kill -9 it repeatedly, resume,
              and check the result is bit-identical to an uninterrupted run (replay/demo.py).
  run         keep a job alive: restart it when a restart can help (replay/supervisor/).
  report      one HTML page of a run: attempts, recoveries, snapshots, recorded metrics (replay/runreport.py).
  log, show, verify, stats, tail, snapshots, prune, state, diff, export, truncate, fork, runs
              the audit CLI (replay/cli/): read a journal without disturbing its writer.
"""

from __future__ import annotations

import argparse
import sys
import warnings

# torch warns on every import when numpy is absent; our tools never need numpy.
warnings.filterwarnings("ignore", message="Failed to initialize NumPy")


def main(argv: list[str] | None = None) -> int:
    from . import demo
    from .cli import main as cli
    from .cli import report
    from .cli import run as supervise

    parser = argparse.ArgumentParser(prog="replay", description="event-sourced PyTorch state",
                                     parents=[cli.common_options(with_json=False)])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    demo.add_arguments(sub.add_parser("demo", help="kill -9 a training run repeatedly and prove a bit-exact resume"))
    supervise.add_parser(sub)
    cli.register(sub)
    report.add_parser(sub, [cli.common_options(with_json=False)])  # replay report DIR --out run.html
    argv = list(sys.argv[1:] if argv is None else argv)
    argv, command = supervise.split_command(argv)
    args = parser.parse_args(argv)
    if command is not None:
        args.cmd = command
    if args.command == "demo":
        return demo.main(args)
    if args.command == "run":
        return supervise.run(args)
    return cli.run(args)


if __name__ == "__main__":
    sys.exit(main())
