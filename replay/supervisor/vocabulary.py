"""The failure classes of an attempt and the supervisor's exit statuses: one vocabulary.

`replay runs`, the supervisor's messages and the README's table use exactly these names;
the exit statuses are a contract with schedulers (sysexits.h numbers where one fits).
"""

from __future__ import annotations

import enum


class FailureClass(str, enum.Enum):
    """How an attempt ended."""

    FINISHED = "finished"            # the command exited 0
    PREEMPTED = "preempted"          # the supervisor got SIGTERM/SIGINT/SIGUSR1 and forwarded it
    CRASHED = "crashed"              # killed by a signal the supervisor did not send, or died otherwise
    OOM = "oom"                      # CUDA OutOfMemoryError, or a host OOM kill the cgroup proves
    HANG = "hang"                    # heartbeat stale and durable index unmoved past the allowance
    USER_ERROR = "user-error"        # a handler raised on new work
    RECOVERY_ERROR = "recovery-error"  # recovery or replay of durable entries failed
    STARTUP_ERROR = "startup-error"  # exited before its journal opened, or the journal refused its options


CLASSES = tuple(c.value for c in FailureClass)

EXIT_FINISHED = 0
EXIT_DETERMINISTIC = 65  # EX_DATAERR: the same failure would happen again; do not requeue
EXIT_TRANSIENT = 75      # EX_TEMPFAIL: restarts exhausted or no progress; requeue, preferably elsewhere
EXIT_STARTUP = 78        # EX_CONFIG: the command could not start


def preempted_status(signum: int) -> int:
    """The exit status after a forwarded preemption signal: 128 + signum, as a shell reports it."""
    return 128 + signum
