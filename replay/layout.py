"""Every path under a journal directory, named once.

A single-process journal, a multi-rank journal and the supervisor's records share one
tree; each name below is spelled here and nowhere else (the file formats are described
where they are read and written: eventlog/FORMAT.md, snapshots/FORMAT.md,
replay/environment.py, replay/ranks/layout.py, replay/replica/FORMAT.md,
replay/supervisor/layout.py)::

    DIR/                          a journal directory (journal_dir)
      log/                        the event log: an eventlog directory (log_dir)
        data.mdb                  its LMDB file; its presence marks a journal (log_data_file)
        archive/                  sealed segments of compacted history (eventlog)
      snapshots/                  the snapshot store (snapshots_dir)
        manifests/                one manifest per snapshot (manifests_dir)
        chunks/                   content-addressed chunks
      environment.json            the machine fingerprint written at creation (environment_file)
      replica.json                who this journal writes the replica's head.json as (replica_file)
      supervisor/                 `replay run`'s records (supervisor_dir)
      recorded.jsonl              values the ops' handlers return, for stats and report (recorded_file)

    DIR/                          a multi-rank journal directory (group root)
      rank-<r>/                   rank r's journal: a journal directory as above (rank_dir), plus
        rank.json                 {"format": 1, "rank": r, "world_size": N} (rank_file)
        acknowledged.json         the index known durable on every rank (acknowledged_file)
      group/                      rank 0's records, for audits (group_dir)
        snapshots/<index>.json    a snapshot every rank committed (group_snapshots_dir)
      supervisor/                 `replay run`'s records for the whole group

Functions take the directory they are relative to and return a `pathlib.Path`; nothing
here touches the disk except `ranks_on_disk`, which lists.
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


def log_dir(journal_dir: str | os.PathLike) -> Path:
    """DIR/log: the journal's event log."""
    return Path(journal_dir) / LOG_DIR


def log_data_file(journal_dir: str | os.PathLike) -> Path:
    """DIR/log/data.mdb: present once a journal has been created there."""
    return Path(journal_dir) / LOG_DIR / LOG_DATA_FILE


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
