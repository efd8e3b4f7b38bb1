"""Every path under a journal directory, named once.

A single-process journal, a multi-rank journal and the supervisor's records share one
tree; each name below is spelled here and nowhere else (the file formats are described
where they are read and written: eventlog/FORMAT.md, snapshots/FORMAT.md,
replay/environment.py, replay/ranks/layout.py, replay/replica/FORMAT.md,
replay/supervisor/layout.py)::

    DIR/                          a journal directory
      log/                        the event log: an eventlog directory (log_dir; journal_of_log
                                  goes back up)
        data.mdb                  its LMDB file; its presence marks a journal (log_data_file;
                                  lmdb_file for any event-log directory, a bare one included)
        archive/                  sealed segments of compacted history (eventlog)
      snapshots/                  the snapshot store (snapshots_dir)
        manifests/                one manifest per snapshot (manifests_dir)
        chunks/                   content-addressed chunks
      environment.json            the machine fingerprint written at creation (environment_file)
      replica.json                who this journal writes the replica's head.json as (replica_file)
      supervisor/                 `replay run`'s records (supervisor_dir; formats: replay/supervisor/)
        attempts.jsonl            one JSON object per finished attempt (attempts_file)
        heartbeat-a<A>-p<P>       process P's heartbeat in attempt A (heartbeat_file)
        crash-a<A>-p<P>.json      process P's crash record in attempt A (crash_file)
        dump-a<A>-p<P>.txt        every thread's stack, on the dump signal (dump_file)
        replica-a<A>-p<P>.json    process P's replica status in attempt A (replica_status_file)
      recorded.jsonl              values the ops' handlers return, for stats and report (recorded_file)

    DIR/                          a multi-rank journal directory (group root)
      rank-<r>/                   rank r's journal: a journal directory as above (rank_dir;
                                  group_root_of goes back up), plus
        rank.json                 {"format": 1, "rank": r, "world_size": N} (rank_file)
        acknowledged.json         the index known durable on every rank (acknowledged_file)
      group/                      rank 0's records, for audits (group_dir)
        snapshots/<index>.json    a snapshot every rank committed (group_snapshots_dir,
                                  global_record_file: the index in 20 digits)
      supervisor/                 `replay run`'s records for the whole group

A bare event log (no journal around it) is an eventlog directory holding data.mdb
directly; `lmdb_file` names that file for either kind.

Functions take the directory they are relative to and return a `pathlib.Path`; nothing
here touches the disk except `ranks_on_disk` and `attempt_files`, which list. Names are
checked by tests/test_layout.py: a path component spelled as a literal outside this
module fails it.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

LOG_DIR = "log"
LOG_DATA_FILE = "data.mdb"  # eventlog's LMDB file (eventlog/FORMAT.md)
SNAPSHOTS_DIR = "snapshots"
MANIFESTS_DIR = "manifests"  # snapshots/FORMAT.md
ENVIRONMENT_FILE = "environment.json"
REPLICA_FILE = "replica.json"
SUPERVISOR_DIR = "supervisor"
RECORDED_FILE = "recorded.jsonl"  # replay/recorded.py
RANK_FILE = "rank.json"
ACK_FILE = "acknowledged.json"
GROUP_DIR = "group"
RANK_DIR_PREFIX = "rank-"
_RANK_DIR = re.compile(r"rank-(0|[1-9][0-9]{0,5})")
_GLOBAL_RECORD = re.compile(r"([0-9]{20})\.json")
ATTEMPTS_FILE = "attempts.jsonl"
ATTEMPT_FILE_KINDS = ("heartbeat", "crash", "dump", "replica")  # the per-process files of one attempt, by kind


def log_dir(journal_dir: str | os.PathLike) -> Path:
    """DIR/log: the journal's event log."""
    return Path(journal_dir) / LOG_DIR


def archive_dir(journal_dir: str | os.PathLike) -> Path:
    """DIR/log/archive: the log's sealed segment files (eventlog names it: eventlog.ARCHIVE_DIR)."""
    from eventlog import ARCHIVE_DIR

    return log_dir(journal_dir) / ARCHIVE_DIR


def log_data_file(journal_dir: str | os.PathLike) -> Path:
    """DIR/log/data.mdb: present once a journal has been created there."""
    return Path(journal_dir) / LOG_DIR / LOG_DATA_FILE


def lmdb_file(log_directory: str | os.PathLike) -> Path:
    """LOG/data.mdb: the LMDB file of the event-log directory `log_directory` (``DIR/log``
    of a journal, or a bare event log); eventlog/FORMAT.md describes it."""
    return Path(log_directory) / LOG_DATA_FILE


def journal_of_log(log_directory: str | os.PathLike) -> Path:
    """DIR for the journal log ``DIR/log`` (the journal directory around it).

    ValueError naming `log_directory` when its last component is not ``log``: a bare event
    log has no journal directory around it, and guessing one would name a stranger's files."""
    path = Path(log_directory)
    if path.name != LOG_DIR:
        raise ValueError(f"{path} is not a journal's log directory (its name is not {LOG_DIR!r})")
    return path.parent


def snapshots_dir(journal_dir: str | os.PathLike) -> Path:
    """DIR/snapshots: the journal's snapshot store."""
    return Path(journal_dir) / SNAPSHOTS_DIR


def manifests_dir(journal_dir: str | os.PathLike) -> Path:
    """DIR/snapshots/manifests: non-empty once the journal has a snapshot."""
    return Path(journal_dir) / SNAPSHOTS_DIR / MANIFESTS_DIR


def environment_file(journal_dir: str | os.PathLike) -> Path:
    """DIR/environment.json (replay/environment.py)."""
    return Path(journal_dir) / ENVIRONMENT_FILE


def replica_file(journal_dir: str | os.PathLike) -> Path:
    """DIR/replica.json (replay/replica/head.py)."""
    return Path(journal_dir) / REPLICA_FILE


def supervisor_dir(journal_dir: str | os.PathLike) -> Path:
    """DIR/supervisor: `replay run`'s records (replay/supervisor/layout.py)."""
    return Path(journal_dir) / SUPERVISOR_DIR


def recorded_file(journal_dir: str | os.PathLike) -> Path:
    """DIR/recorded.jsonl: the values ops record (replay/recorded.py)."""
    return Path(journal_dir) / RECORDED_FILE


def rank_dir(root: str | os.PathLike, rank: int) -> Path:
    """ROOT/rank-<rank>: rank `rank`'s journal directory under a multi-rank journal `root`."""
    return Path(root) / f"{RANK_DIR_PREFIX}{rank}"


def group_root_of(rank_directory: str | os.PathLike) -> Path:
    """ROOT for a rank's directory ``ROOT/rank-<r>`` (the multi-rank journal around it).

    ValueError naming `rank_directory` when its last component is not ``rank-<r>``."""
    path = Path(rank_directory)
    if rank_of(path.name) is None:
        raise ValueError(f"{path} is not a rank's directory (its name is not {RANK_DIR_PREFIX}<r>)")
    return path.parent


def rank_of(name: str) -> int | None:
    """The rank a directory name ``rank-<r>`` names (canonical decimal), or None."""
    match = _RANK_DIR.fullmatch(name)
    return int(match.group(1)) if match else None


def ranks_on_disk(root: str | os.PathLike) -> list[int]:
    """Sorted ranks whose ``rank-<r>`` directory exists under `root` ([] for none, or no `root`)."""
    try:
        names = os.listdir(root)
    except (FileNotFoundError, NotADirectoryError):
        return []
    return sorted(r for n in names if (r := rank_of(n)) is not None and (Path(root) / n).is_dir())


def rank_file(rank_directory: str | os.PathLike) -> Path:
    """RANK/rank.json (replay/ranks/layout.py)."""
    return Path(rank_directory) / RANK_FILE


def acknowledged_file(rank_directory: str | os.PathLike) -> Path:
    """RANK/acknowledged.json (replay/ranks/layout.py)."""
    return Path(rank_directory) / ACK_FILE


def group_dir(root: str | os.PathLike) -> Path:
    """ROOT/group: rank 0's records of a multi-rank journal."""
    return Path(root) / GROUP_DIR


def group_snapshots_dir(root: str | os.PathLike) -> Path:
    """ROOT/group/snapshots: one record per snapshot every rank committed."""
    return Path(root) / GROUP_DIR / SNAPSHOTS_DIR


def global_record_file(root: str | os.PathLike, index: int) -> Path:
    """ROOT/group/snapshots/<index as 20 digits>.json: the record that every rank committed its
    snapshot at `index` (replay/ranks/layout.py). ValueError for a negative index, which no
    file name could sort by."""
    if index < 0:
        raise ValueError(f"global record index {index} is negative")
    return group_snapshots_dir(root) / f"{index:020d}.json"


def global_record_index(name: str) -> int | None:
    """The index a file name ``<20 digits>.json`` under ROOT/group/snapshots names, or None
    (a temp file of a crashed write, or anything else)."""
    match = _GLOBAL_RECORD.fullmatch(name)
    return int(match.group(1)) if match else None


def attempts_file(records: str | os.PathLike) -> Path:
    """SUP/attempts.jsonl under the supervisor directory `records` (supervisor_dir)."""
    return Path(records) / ATTEMPTS_FILE


def heartbeat_file(records: str | os.PathLike, attempt: int, pid: int) -> Path:
    """SUP/heartbeat-a<attempt>-p<pid>: process `pid`'s heartbeat in `attempt`."""
    return Path(records) / f"{_attempt_prefix('heartbeat', attempt)}{pid}"


def crash_file(records: str | os.PathLike, attempt: int, pid: int) -> Path:
    """SUP/crash-a<attempt>-p<pid>.json: process `pid`'s crash record in `attempt`."""
    return Path(records) / f"{_attempt_prefix('crash', attempt)}{pid}.json"


def dump_file(records: str | os.PathLike, attempt: int, pid: int) -> Path:
    """SUP/dump-a<attempt>-p<pid>.txt: process `pid`'s thread dump in `attempt`."""
    return Path(records) / f"{_attempt_prefix('dump', attempt)}{pid}.txt"


def replica_status_file(records: str | os.PathLike, attempt: int, pid: int) -> Path:
    """SUP/replica-a<attempt>-p<pid>.json: process `pid`'s replica status in `attempt`
    (replay/supervisor/replica_status.py), read by ``replay run --metrics``."""
    return Path(records) / f"{_attempt_prefix('replica', attempt)}{pid}.json"


def attempt_files(records: str | os.PathLike, kind: str, attempt: int) -> list[Path]:
    """The `kind` files (one of ATTEMPT_FILE_KINDS) of `attempt` under `records`, in name order.

    [] when `records` does not exist; ValueError for an unknown kind (a typo would
    otherwise list nothing, silently)."""
    if kind not in ATTEMPT_FILE_KINDS:
        raise ValueError(f"attempt file kind {kind!r} is not one of {ATTEMPT_FILE_KINDS}")
    try:
        names = os.listdir(records)
    except (FileNotFoundError, NotADirectoryError):
        return []
    prefix = _attempt_prefix(kind, attempt)
    return [Path(records) / n for n in sorted(names) if n.startswith(prefix)]


def _attempt_prefix(kind: str, attempt: int) -> str:
    # "-p" ends the prefix, so attempt 1 never lists attempt 10's files.
    return f"{kind}-a{attempt}-p"
