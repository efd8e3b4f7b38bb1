"""What the supervisor's records under a journal directory are, and what a child is told.

The names live in replay/layout.py (every path under a journal directory is spelled
there); this module re-exports the ones the supervisor uses, under the names its
modules call, and owns the child's environment variables. ``DIR/supervisor/``:

- ``attempts.jsonl``: one JSON object per finished attempt, appended and fsynced (records.py).
- ``heartbeat-a<attempt>-p<pid>``: one process's heartbeat in an attempt (heartbeat.py);
  removed when the next attempt starts (liveness, not a record).
- ``crash-a<attempt>-p<pid>.json``: a crash record (records.py), written by the journal.
- ``dump-a<attempt>-p<pid>.txt``: every thread's stack, written on the dump signal.
- ``replica-a<attempt>-p<pid>.json``: a journal's replica lag, for ``--metrics``
  (replica_status.py); removed when the next attempt starts (liveness, not a record).

A child gets the environment variables below; `Journal.open` on the directory named by
``REPLAY_RUN_JOURNAL`` links itself to the supervisor (link.py). The job may read
``REPLAY_RUN_ATTEMPT`` and ``REPLAY_RUN_LAST_CLASS`` (e.g. to lower a micro-batch after
an ``oom``; the batch size must then be a payload field, so replay stays exact).
"""

from __future__ import annotations

from .. import layout

SUPERVISOR_DIR = layout.SUPERVISOR_DIR  # re-exported: the names live in replay/layout.py
ATTEMPTS = layout.ATTEMPTS_FILE

ENV_JOURNAL = "REPLAY_RUN_JOURNAL"   # the journal directory the supervisor watches (absolute)
ENV_ATTEMPT = "REPLAY_RUN_ATTEMPT"   # 1, 2, ...
ENV_LAST_CLASS = "REPLAY_RUN_LAST_CLASS"  # the previous attempt's class ("" on the first)

# Re-exported from replay/layout.py, whose docstrings hold their contracts.
records_dir = layout.supervisor_dir  # DIR/supervisor
attempts_path = layout.attempts_file  # SUP/attempts.jsonl
heartbeat_path = layout.heartbeat_file  # SUP/heartbeat-a<attempt>-p<pid>
crash_path = layout.crash_file  # SUP/crash-a<attempt>-p<pid>.json
dump_path = layout.dump_file  # SUP/dump-a<attempt>-p<pid>.txt
replica_status_path = layout.replica_status_file  # SUP/replica-a<attempt>-p<pid>.json
of_attempt = layout.attempt_files  # the files of one kind of one attempt, in name order
