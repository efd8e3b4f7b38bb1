"""``python -m replay``: the command line of the replay engine.

Subcommands:
  demo    train (or run inference) under a Journal, kill -9 it repeatedly, resume,
          and check the result is bit-identical to an uninterrupted run.
"""

from __future__ import annotations

import argparse
import sys
import warnings

# torch warns on every import when numpy is absent; our tools never need numpy.
warnings.filterwarnings("ignore", message="Failed to initialize NumPy")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="replay", description="event-sourced PyTorch state")
    sub = parser.add_subparsers(dest="command", required=True)

    from . import demo

    demo.add_arguments(sub.add_parser("demo", help="kill -9 a training run repeatedly and prove a bit-exact resume"))
    args = parser.parse_args(argv)
    if args.command == "demo":
        return demo.main(args)
    parser.error(f"unknown command {args.command}")
    return 2


if __name__ == "__main__":
    sys.exit(main())
