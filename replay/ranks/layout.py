"""What a multi-rank journal keeps on disk, version 1 (the names: replay/layout.py).

::

    DIR/
      rank-<r>/        one per rank: an ordinary single-process journal directory
                       (log/, snapshots/, environment.json) with its single-writer rules
          rank.json    {"format": 1, "rank": r, "world_size": N}
                       written once, durably, before the rank's first entry
          acknowledged.json
                       {"format": 1, "index": a}: the highest index this rank learned
                       was durable on every rank (a global flush's result, or a snapshot
                       every rank committed), written durably before that flush returns
                       (64 bytes, space-padded, overwritten in place: one fdatasync);
                       recovery refuses a cut below it (replay/ranks/cut.py)
      group/           written by rank 0 only, for audits; recovery reads only the
                       newest record's index (on rank 0: as an acknowledged index)
          snapshots/<index, 20 digits>.json
                       {"format": 1, "index": i, "world_size": N, "time": unix seconds,
                        "manifests": [snapshot manifest id on rank 0, on rank 1, ...]}
                       written durably once every rank has committed its snapshot at i;
                       removed once rank 0's retention no longer keeps that snapshot

DIR may be a node-local disk, so a rank never reads another rank's directory: what the
ranks must agree on they agree through collectives (replay.ranks.collectives). The
records here exist so that an operator (``replay verify DIR``) can see which snapshots
were complete across ranks, and so that a rank directory opened with the wrong world
size is refused. Every file is read back as untrusted input (replay.jsonfile).

This module owns the records' formats (writing them, reading them back, checking them);
where each one lives is replay/layout.py's (rank_dir, rank_file, acknowledged_file,
global_record_file), so the names here are re-exports kept for their callers.
"""

from __future__ import annotations

import json
import os
import stat
import time
from dataclasses import dataclass
from pathlib import Path

from .. import jsonfile, layout as paths
from ..errors import DamageError, RecoveryError, ReplayError

FORMAT = 1
RANK_FILE = paths.RANK_FILE  # re-exported: the names live in replay/layout.py
ACK_FILE = paths.ACK_FILE
ACK_WIDTH = 64  # bytes of acknowledged.json: fixed, so it is overwritten in place (write_acknowledged)
GROUP_DIR = paths.GROUP_DIR
RECORD_LIMIT = 64 * 1024  # a record names one manifest per rank: kilobytes, never more


class RankRecordError(ReplayError, DamageError):
    """A multi-rank record (rank.json, a global snapshot record) is damaged or hostile; names the path."""


@dataclass(frozen=True)
class GlobalRecord:
    """Rank 0's record that every rank committed its snapshot at `index`."""

    index: int
    world_size: int
    manifests: tuple[str, ...]  # manifest id on each rank, by rank
    time: float
    path: Path


rank_dir = paths.rank_dir  # re-exported
ranks_on_disk = paths.ranks_on_disk  # re-exported


def is_multirank(root: str | os.PathLike) -> bool:
    """Whether `root` is a multi-rank journal directory (it holds at least one rank directory)."""
    return bool(ranks_on_disk(root))


def refuse_single_process(root: str | os.PathLike) -> None:
    """RecoveryError when `root` is a multi-rank journal or one rank's directory of one:
    a single process writing it would break the alignment of the ranks' logs."""
    root = Path(root)
    if is_multirank(root):
        raise RecoveryError(f"{root} is a multi-rank journal (ranks {ranks_on_disk(root)}): open it with group= "
                            "on every rank of a process group of its size")
    if paths.rank_file(root).exists():
        raise RecoveryError(f"{root} is one rank's directory of a multi-rank journal ({paths.rank_file(root)}): open "
                            f"{root.parent} with group= on every rank (read it with replay.entries or the CLI)")


def write_rank_record(rank_root: str | os.PathLike, rank: int, world_size: int) -> None:
    """Record durably that `rank_root` is rank `rank` of a group of `world_size`."""
    jsonfile.write_durably(paths.rank_file(rank_root), {"format": FORMAT, "rank": rank, "world_size": world_size})


def read_rank_record(rank_root: str | os.PathLike) -> dict | None:
    """{"rank": r, "world_size": N} recorded in `rank_root`; None when it has no record.

    RankRecordError naming the file when it is not a regular file, too large, not strict
    JSON, or lacks a non-negative int rank below a positive int world_size."""
    path = paths.rank_file(rank_root)
    doc = _read(path)
    if doc is None:
        return None
    rank, world = doc.get("rank"), doc.get("world_size")
    if not (_is_int(rank) and _is_int(world) and 0 <= rank < world):
        raise RankRecordError(f"{path}: rank {rank!r} and world_size {world!r} are not a rank of a group")
    return {"rank": rank, "world_size": world}


def write_acknowledged(rank_root: str | os.PathLike, index: int) -> None:
    """Record durably that every rank held index `index` durably (rank_root/acknowledged.json).

    The record is rewritten on every global flush that moves it, so it costs one
    fdatasync: the file is created once (temp file, fsync, rename, directory fsync) at a
    fixed width of ACK_WIDTH bytes (JSON padded with spaces), then overwritten in place.
    Those bytes lie in the first sector of the file, which a disk writes whole, so a
    crash leaves the old record or the new one. Anything else at the path (another
    size, not a regular file) is replaced the first way."""
    path = paths.acknowledged_file(rank_root)
    data = json.dumps({"format": FORMAT, "index": index}, sort_keys=True).encode().ljust(ACK_WIDTH)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_NOFOLLOW | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except OSError:  # missing, a link, or something a writer cannot open
        jsonfile.replace_durably(path, data)
        return
    try:
        st = os.fstat(fd)
        in_place = stat.S_ISREG(st.st_mode) and st.st_size == ACK_WIDTH
        if in_place:
            os.pwrite(fd, data, 0)
            os.fdatasync(fd)
    finally:
        os.close(fd)
    if not in_place:
        jsonfile.replace_durably(path, data)


def read_acknowledged(rank_root: str | os.PathLike) -> int | None:
    """The index `rank_root`'s acknowledged.json records; None when it has none.

    RankRecordError naming the file when it is not a regular file, too large, not strict
    JSON, or lacks a non-negative int index."""
    path = paths.acknowledged_file(rank_root)
    doc = _read(path)
    if doc is None:
        return None
    index = doc.get("index")
    if not (_is_int(index) and index >= 0):
        raise RankRecordError(f"{path}: index {index!r} is not a log index")
    return index


def newest_global_record(root: str | os.PathLike) -> int | None:
    """The index of the newest sound global record under ``root/group/snapshots`` (None: none).

    Damaged records are skipped here: the audit (`read_global_records`) reports them."""
    records, _ = read_global_records(root)
    return max((r.index for r in records), default=None)


def write_global_record(root: str | os.PathLike, index: int, manifests: list[str]) -> Path:
    """Record durably that every rank committed its snapshot at `index` (`manifests`, by rank)."""
    path = paths.global_record_file(root, index)
    path.parent.mkdir(parents=True, exist_ok=True)
    jsonfile.write_durably(path, {"format": FORMAT, "index": index, "world_size": len(manifests),
                                  "manifests": list(manifests), "time": time.time()})
    return path


def remove_global_records(root: str | os.PathLike, keep: set[int]) -> None:
    """Delete the global records of snapshots whose index is not in `keep` (missing ones are fine)."""
    directory = paths.group_snapshots_dir(root)
    try:
        names = os.listdir(directory)
    except (FileNotFoundError, NotADirectoryError):
        return
    for name in names:
        index = paths.global_record_index(name)
        if index is not None and index not in keep:
            try:
                os.unlink(directory / name)
            except FileNotFoundError:
                pass


def read_global_records(root: str | os.PathLike) -> tuple[list[GlobalRecord], list[tuple[Path, str]]]:
    """(records oldest first, damaged files as (path, reason)) under ``root/group/snapshots``.

    Files whose names are not ``<20 digits>.json`` are ignored (temp files of a crashed
    write). A record is damaged when it is unreadable (replay.jsonfile), its fields are
    missing or mistyped, or its index does not match its name."""
    directory = paths.group_snapshots_dir(root)
    try:
        names = sorted(os.listdir(directory))
    except (FileNotFoundError, NotADirectoryError):
        return [], []
    records, damaged = [], []
    for name in names:
        index = paths.global_record_index(name)
        if index is None:
            continue
        path = directory / name
        try:
            doc = _read(path)
            records.append(_record(path, index, doc))
        except RankRecordError as exc:
            damaged.append((path, str(exc).removeprefix(f"{path}: ")))
    return records, damaged


def _record(path: Path, named: int, doc) -> GlobalRecord:
    index, world, manifests, when = (doc.get(k) for k in ("index", "world_size", "manifests", "time"))
    if index != named or not _is_int(index):
        raise RankRecordError(f"{path}: index {index!r} does not match the file name")
    if not (_is_int(world) and world > 0 and isinstance(manifests, list) and len(manifests) == world
            and all(isinstance(m, str) and len(m) < 64 for m in manifests)):
        raise RankRecordError(f"{path}: world_size {world!r} and manifests are not one manifest id per rank")
    if not isinstance(when, (int, float)) or isinstance(when, bool):
        raise RankRecordError(f"{path}: time {when!r} is not a number")
    return GlobalRecord(index, world, tuple(manifests), float(when), path)


def _read(path: Path):
    try:
        doc = jsonfile.read_small(path, RECORD_LIMIT)
    except jsonfile.JsonFileError as exc:
        raise RankRecordError(f"{path}: {exc}") from None
    if doc is None:
        return None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT or isinstance(doc.get("format"), bool):
        raise RankRecordError(f"{path}: not a format-{FORMAT} multi-rank record")
    return doc


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)
