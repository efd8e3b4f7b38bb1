"""Retention and garbage collection, alone and with a reader in another process."""

from __future__ import annotations

import json
import os
import time

import pytest
import torch

import snapshots
from snapshots.chunkfile import chunk_id
from snapshots.retention import to_delete
from tests.chunkcopies import chunk_ids

from .conftest import assert_same
from .forking import fork_child, read_all


def _keys(*indexes):
    return [(i, 1) for i in indexes]


@pytest.mark.parametrize(
    "snaps, newest_verified, keep_last, keep_every, deleted",
    [
        (_keys(1, 2, 3, 4, 5), (5, 1), 3, None, _keys(1, 2)),
        (_keys(1, 2, 3, 4, 5), (5, 1), 1, None, _keys(1, 2, 3, 4)),
        (_keys(1, 2, 3, 4, 5), None, 1, None, []),  # nothing verified: delete nothing
        (_keys(1, 2, 3, 4, 5), (2, 1), 1, None, _keys(1)),  # never the fallback or newer (damaged) ones
        (_keys(1, 2, 3, 4, 5), (3, 1), 1, None, _keys(1, 2)),
        ([(1, 1), (5, 1), (12, 1), (15, 2), (21, 2), (25, 2)], (25, 2), 1, 10, [(5, 1), (15, 2)]),
        ([(5, 1), (5, 2)], (5, 2), 1, None, [(5, 1)]),  # same index, newer term wins
    ],
)
def test_retention_rule(snaps, newest_verified, keep_last, keep_every, deleted):
    assert to_delete(snaps, newest_verified, keep_last, keep_every) == deleted


@pytest.mark.parametrize("packs", [False, True], ids=["loose", "packed"])
def test_prune_deletes_old_snapshots_and_only_their_own_chunks(open_store, tmp_path, packs):
    store = open_store(keep_last=2, chunk_size=4096, packs=packs)
    frozen = torch.randn(8192)  # shared by every snapshot
    states = []
    for i in range(1, 6):
        states.append({"frozen": frozen, "moving": torch.full((4096,), float(i))})
        store.save(states[-1], index=i, term=1)
    before = chunk_ids(tmp_path / "snap")
    moving = [chunk_id(torch.full((1024,), float(i)).view(torch.uint8)) for i in range(1, 6)]
    report = store.prune()
    assert report.deleted == ("1-1", "2-1", "3-1")
    assert report.kept == ("4-1", "5-1")
    after = chunk_ids(tmp_path / "snap")
    if not packs:  # each unreferenced loose file goes
        assert report.chunks_deleted == 3 and report.bytes_freed > 0
        assert before - after == set(moving[:3])
    else:
        # The packs of saves 2 and 3 held only their moving chunk: deleted. Save 1's pack
        # is mostly the frozen chunks, still named: it stays whole, its dead chunk with it
        # (FORMAT.md, "Reclaiming space": rewritten only once under half of it is live).
        assert report.chunks_deleted == 2 and report.bytes_freed > 0
        assert before - after == set(moving[1:3]) and moving[0] in after
        assert len(os.listdir(tmp_path / "snap" / "packs")) == 3
    assert [i.index for i in store.list()] == [4, 5]
    for info, state in zip(store.list(), states[3:]):
        assert store.verify(info).ok
        assert_same(store.load(info), state)
    assert store.prune().deleted == ()  # idempotent


def test_keep_every_keeps_one_per_window(open_store):
    store = open_store(keep_last=1, keep_every=10)
    for i in (3, 8, 13, 18, 24):
        store.save({"i": torch.tensor(i)}, index=i, term=1)
    store.prune()
    assert [i.index for i in store.list()] == [3, 13, 24]


def _reader(root: str, seconds: float, out_fd: int) -> None:
    """Load snapshots as fast as possible; count outcomes by kind."""
    counts = {"loaded": 0, "pruned_meanwhile": 0, "corrupt": 0, "wrong": 0}
    with snapshots.SnapshotStore(root) as store:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            infos = store.list()
            for info in reversed(infos[-3:]):
                try:
                    state = store.load(info)
                except snapshots.SnapshotNotFoundError:
                    counts["pruned_meanwhile"] += 1
                    continue
                except snapshots.CorruptSnapshotError:
                    counts["corrupt"] += 1
                    continue
                ok = torch.equal(state["moving"], torch.full((2048,), float(info.index)))
                counts["loaded" if ok else "wrong"] += 1
    os.write(out_fd, json.dumps(counts).encode())
    os.close(out_fd)


@pytest.mark.crash
def test_prune_is_safe_while_another_process_loads(tmp_path):
    root = str(tmp_path / "snap")
    with snapshots.SnapshotStore(root, chunk_size=1024) as store:
        store.save({"frozen": torch.randn(4096), "moving": torch.full((2048,), 0.0)}, index=0, term=1)
    frozen = torch.randn(4096)
    r, w = os.pipe()
    pid = fork_child(_reader, root, 3.0, w)  # forked before this process opens a writer
    os.close(w)
    try:
        with snapshots.SnapshotStore(root, keep_last=1, chunk_size=1024, workers=2) as store:
            deadline, i = time.monotonic() + 2.5, 1
            while time.monotonic() < deadline:
                store.save({"frozen": frozen, "moving": torch.full((2048,), float(i))}, index=i, term=1)
                store.prune()
                i += 1
    finally:
        counts = json.loads(read_all(r) or b"{}")
        _, status = os.waitpid(pid, 0)
    assert status == 0, "reader process failed"
    assert counts["corrupt"] == 0 and counts["wrong"] == 0, counts
    assert counts["loaded"] > 0, counts
    assert i > 5
