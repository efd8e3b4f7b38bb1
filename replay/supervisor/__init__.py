"""Keeping a job alive: ``replay run DIR -- CMD`` (README, "Keep it running").

The supervisor runs CMD as a child in its own process group, restarts it when a restart
can help and stops when it cannot, and tells a scheduler which by its exit status. It
decides from what the journal knows and a blind restart loop does not: the durable index
before and after every attempt, the entry that failed and whether it failed on new work
or while replaying durable history, and a heartbeat that tells a hang from a slow step.

Modules, one job each:
- `vocabulary`: the failure classes and exit statuses (one vocabulary, used by the CLI).
- `layout`: the files under ``DIR/supervisor/`` and the environment a child gets.
- `heartbeat`: the shared heartbeat file (format, the journal's writer, the reader).
- `records`: crash records (the journal's) and attempt records (the supervisor's).
- `link`: the journal's side: heartbeats, crash records, the stack-dump signal.
- `policy`: the decision after an attempt (restart, or stop with which status).
- `child`: starting, signalling, dumping and stopping the child's process group.
- `runner`: the loop.
"""

from .vocabulary import (CLASSES, EXIT_DETERMINISTIC, EXIT_FINISHED, EXIT_STARTUP, EXIT_TRANSIENT, FailureClass,
                         preempted_status)

__all__ = ["CLASSES", "EXIT_DETERMINISTIC", "EXIT_FINISHED", "EXIT_STARTUP", "EXIT_TRANSIENT", "FailureClass",
           "preempted_status"]
