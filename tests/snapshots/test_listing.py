"""SnapshotStore.manifests(): every committed manifest name, readable or not, in order."""

from __future__ import annotations

import os

import torch

import snapshots


def test_manifests_lists_unreadable_ones_with_the_reason_and_skips_strangers(store):
    for index in (10, 2, 7):
        store.save({"w": torch.full((8,), float(index))}, index=index, term=1)
    manifests = os.path.join(store.path, "manifests")
    with open(os.path.join(manifests, "7-1"), "r+b") as f:
        f.write(b"garbage!")
    for stranger in (".tmp.3-1.1.ab", "notes.txt", "5-x"):
        open(os.path.join(manifests, stranger), "wb").close()
    os.symlink(os.path.join(manifests, "2-1"), os.path.join(manifests, "9-1"))

    entries = store.manifests()
    assert [e.name for e in entries] == ["2-1", "7-1", "9-1", "10-1"]
    assert [e.key for e in entries] == [(2, 1), (7, 1), (9, 1), (10, 1)]
    by_name = {e.name: e for e in entries}
    assert by_name["2-1"].unreadable is None and by_name["2-1"].info.index == 2
    assert by_name["10-1"].info == store.list()[-1]
    assert by_name["7-1"].info is None and "magic" in by_name["7-1"].unreadable
    assert by_name["9-1"].info is None and "symbolic link" in by_name["9-1"].unreadable
    assert [i.manifest_id for i in store.list()] == ["2-1", "10-1"]


def test_manifests_of_a_missing_store_is_empty(tmp_path):
    with snapshots.SnapshotStore(tmp_path / "nothing") as store:
        assert store.manifests() == []
