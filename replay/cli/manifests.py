"""Snapshot ids in a store, including ones whose manifest no longer reads back.

`SnapshotStore.list()` leaves out manifests that fail their own checks (it only logs
them), but an audit must name them. The names are listed straight from
``snapshots/manifests/`` by the rule in snapshots/FORMAT.md (``^[0-9]+-[0-9]+$``,
ordered by (index, term)); nothing is opened for writing.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

_MANIFEST_NAME = re.compile(r"^([0-9]+)-([0-9]+)$")


def manifest_ids(store_path: str | os.PathLike) -> list[str]:
    """Every committed snapshot id '<index>-<term>' in the store, oldest first; [] without a store."""
    try:
        names = os.listdir(Path(store_path) / "manifests")
    except FileNotFoundError:
        return []
    keyed = [((int(m.group(1)), int(m.group(2))), n) for n in names if (m := _MANIFEST_NAME.match(n))]
    return [n for _, n in sorted(keyed)]


def index_term(snapshot_id: str) -> tuple[int, int]:
    """(index, term) of a snapshot id."""
    index, term = snapshot_id.split("-")
    return int(index), int(term)
