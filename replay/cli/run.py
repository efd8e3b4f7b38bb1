"""`replay run DIR [options] -- CMD [ARG...]`: keep a job alive (replay/supervisor).

Only parses and prints: every rule lives in replay.supervisor. The exit status is the
supervisor's (vocabulary.py): 0 finished, 128+signum preempted, 65 deterministic
failure, 75 transient failures exhausted, 78 the command could not start; 2 for bad
options, as for every command.
"""

from __future__ import annotations

import sys

from replay.supervisor.policy import Options
from replay.supervisor.runner import HANG_FLOOR, HANG_MULTIPLE, Supervisor

HELP = "run CMD under a supervisor that restarts it when a restart can help (README: Keep it running)"


def add_parser(sub) -> None:
    defaults = Options()
    p = sub.add_parser("run", help=HELP, description=HELP + ". Exit status: 0 finished, 128+signum preempted, "
                       "65 deterministic failure (do not requeue), 75 transient failures exhausted or no progress "
                       "(requeue), 78 the command could not start.",
                       usage="replay run DIR [options] -- CMD [ARG...]")
    p.add_argument("dir", help="the journal directory CMD opens (single-process, or a multi-rank group directory)")
    p.add_argument("--max-restarts", type=int, default=defaults.max_restarts, metavar="N",
                   help=f"restarts in total (default {defaults.max_restarts})")
    p.add_argument("--no-progress", type=int, default=defaults.no_progress, metavar="N",
                   help=f"stop (75) after N failed attempts in a row without durable progress (default "
                        f"{defaults.no_progress})")
    p.add_argument("--hang-timeout", type=float, default=None, metavar="S",
                   help=f"seconds without a heartbeat (and no durable progress) that make an apply a hang "
                        f"(default: {HANG_MULTIPLE:g}x the observed p99 interval, at least {HANG_FLOOR:g})")
    p.add_argument("--startup-timeout", type=float, default=defaults.startup_timeout, metavar="S",
                   help=f"seconds from start until the journal has opened, recovery included (default "
                        f"{defaults.startup_timeout:g})")
    p.add_argument("--grace", type=float, default=defaults.grace, metavar="S",
                   help=f"seconds from SIGTERM to SIGKILL (default {defaults.grace:g})")
    p.add_argument("--backoff", type=float, default=defaults.backoff, metavar="S",
                   help=f"first delay before a restart, doubled per attempt without progress with jitter, "
                        f"capped at {defaults.backoff_cap:g} (default {defaults.backoff:g})")
    p.add_argument("--metrics", default=None, metavar="PATH",
                   help="write a Prometheus textfile here every few seconds (node_exporter's textfile collector; "
                        "needs prometheus_client)")
    p.set_defaults(run=run, cmd=[])


def split_command(argv: list[str]) -> tuple[list[str], list[str] | None]:
    """(replay's own arguments, the command after ``--``) for ``replay [opts] run ... -- CMD``;
    (argv, None) for every other command."""
    words = [w for w in argv if not w.startswith("-")]
    if not words or words[0] != "run" or "--" not in argv:
        return argv, None
    cut = argv.index("--")
    return argv[:cut], argv[cut + 1:]


def run(args) -> int:
    command = list(args.cmd)
    if not command:
        print("replay run: error: no command given (put it after --)", file=sys.stderr)
        return 2
    try:
        options = Options(max_restarts=args.max_restarts, no_progress=args.no_progress,
                          hang_timeout=args.hang_timeout, startup_timeout=args.startup_timeout, grace=args.grace,
                          backoff=args.backoff)
    except ValueError as exc:
        print(f"replay run: error: {exc}", file=sys.stderr)
        return 2
    try:
        supervisor = Supervisor(args.dir, command, options, metrics=args.metrics)
    except ValueError as exc:
        print(f"replay run: error: {exc}", file=sys.stderr)
        return 2
    return supervisor.run()
