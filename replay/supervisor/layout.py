"""Where the supervisor's records live under a journal directory, and what a child is told.

``DIR/supervisor/``:
- ``attempts.jsonl``: one JSON object per finished attempt, appended and fsynced.
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

import os
from pathlib import Path

from .. import layout

SUPERVISOR_DIR = layout.SUPERVISOR_DIR  # re-exported: the names live in replay/layout.py
ATTEMPTS = "attempts.jsonl"

ENV_JOURNAL = "REPLAY_RUN_JOURNAL"   # the journal directory the supervisor watches (absolute)
ENV_ATTEMPT = "REPLAY_RUN_ATTEMPT"   # 1, 2, ...
ENV_LAST_CLASS = "REPLAY_RUN_LAST_CLASS"  # the previous attempt's class ("" on the first)


def records_dir(journal_dir: str | os.PathLike) -> Path:
    return layout.supervisor_dir(journal_dir)


def heartbeat_path(records: Path, attempt: int, pid: int) -> Path:
    return records / f"heartbeat-a{attempt}-p{pid}"


def crash_path(records: Path, attempt: int, pid: int) -> Path:
    return records / f"crash-a{attempt}-p{pid}.json"


def dump_path(records: Path, attempt: int, pid: int) -> Path:
    return records / f"dump-a{attempt}-p{pid}.txt"


def replica_status_path(records: Path, attempt: int, pid: int) -> Path:
    return records / f"replica-a{attempt}-p{pid}.json"


def of_attempt(records: Path, kind: str, attempt: int) -> list[Path]:
    """The `kind` ("heartbeat", "crash", "dump", "replica") files of `attempt`, in name order."""
    try:
        names = os.listdir(records)
    except FileNotFoundError:
        return []
    prefix = f"{kind}-a{attempt}-p"
    return [records / n for n in sorted(names) if n.startswith(prefix)]
