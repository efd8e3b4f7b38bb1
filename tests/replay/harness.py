"""Test harness for journals: simulated crashes, snapshot damage, direct log writes."""

from __future__ import annotations

import os
from pathlib import Path

import replay
from replay.envelope import wrap


def crash(journal: replay.Journal) -> None:
    """Abandon `journal` as a killed process would (`Journal.abandon`)."""
    journal.abandon()


def open_journal(path, state, ops, **options) -> replay.Journal:
    options.setdefault("snapshot", replay.Every(entries=10))
    return replay.Journal.open(path, state=state, ops=ops, **options)


def snapshot_file(root: Path, info) -> Path:
    """The file whose damage makes snapshot `info` fail verification (its manifest, for the real store)."""
    manifests = Path(root) / "snapshots" / "manifests"
    if manifests.is_dir():
        return manifests / f"{info.index}-{info.term}"
    raise AssertionError("the snapshot store has no manifests directory")


def damage_snapshot(root: Path, info) -> None:
    """Flip one byte near the end of the snapshot's file (inside its checksummed body)."""
    path = snapshot_file(root, info)
    data = bytearray(path.read_bytes())
    data[-3] ^= 0x40
    os.chmod(path, 0o644)
    path.write_bytes(bytes(data))


def append_raw(root: Path, op: str, payload: dict, version: int = 1) -> int:
    """Append an entry to a closed journal's log as a Journal would have (envelope included)."""
    from eventlog import EventLog

    with EventLog.open(Path(root) / "log", durability="sync") as log:
        return log.append(op, wrap(version, payload))
