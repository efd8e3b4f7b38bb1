"""A writer SIGKILLed at random moments never leaves a manifest that fails to load, and
every snapshot whose save returned survives (a process crash loses no acknowledged save)."""

from __future__ import annotations

import os
import random
import shutil
import signal
import struct
import time

import pytest
import torch

import snapshots
from snapshots.chunkfile import HEADER, ChunkCodec, chunk_id
from snapshots.packfile import read_index

from .conftest import assert_same
from .forking import fork_child, read_all

KILLS = 24


def _state(index: int) -> dict:
    g = torch.Generator().manual_seed(index)
    return {
        "frozen": torch.arange(4096, dtype=torch.float32),  # the same in every snapshot
        "moving": torch.randn(6000, generator=g).to(torch.bfloat16),
        "small": [torch.full((3,), index, dtype=torch.int64), torch.tensor(float(index))],
        "index": index,
    }


def _kill_at_io_call(n: int) -> None:
    """Make this (child) process SIGKILL itself at its n-th write, pwrite, fsync, rename or unlink:
    a deterministic crash point between any two steps of the commit protocol, as
    `strace -e inject=...:signal=KILL:when=N` would give, without a fresh interpreter."""
    calls = [0]

    def counted(real):
        def call(*args, **kwargs):
            calls[0] += 1
            if calls[0] == n:
                os.kill(os.getpid(), signal.SIGKILL)
            return real(*args, **kwargs)

        return call

    for name in ("write", "pwrite", "fsync", "rename", "unlink"):
        setattr(os, name, counted(getattr(os, name)))


def _writer(root: str, first_index: int, ack_fd: int, packs: bool) -> None:
    store = snapshots.SnapshotStore(root, keep_last=2, chunk_size=1024, workers=2, packs=packs)
    os.write(ack_fd, struct.pack("<q", -1))  # ready: kill moments are timed from here
    index = first_index
    while True:
        store.save(_state(index), index=index, term=1)
        os.write(ack_fd, struct.pack("<q", index))
        if index % 3 == 0:
            store.prune()
        index += 1


@pytest.mark.crash
@pytest.mark.parametrize("packs", [False, True], ids=["loose", "packs"])
def test_sigkill_at_random_moments_never_leaves_a_bad_manifest(tmp_path, packs):
    root = str(tmp_path / "snap")
    rng = random.Random(1234)
    next_index, acked_total = 1, 0
    kills = KILLS
    rounds = 0
    # Kill at random moments; on a loaded machine saves are slower, so keep killing (with
    # a longer window) until enough saves were acknowledged for the kills to mean much.
    while rounds < kills or acked_total < kills // 3:
        assert rounds < 4 * kills, f"only {acked_total} saves acknowledged in {rounds} runs"
        window = 0.15 if rounds < kills else 0.6
        rounds += 1
        r, w = os.pipe()
        pid = fork_child(_writer, root, next_index, w, packs)
        os.close(w)
        ready = os.read(r, 8)
        assert struct.unpack("<q", ready)[0] == -1, "writer did not start"
        time.sleep(rng.uniform(0, window))
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        data = read_all(r)
        acked = [struct.unpack_from("<q", data, i)[0] for i in range(0, len(data) - len(data) % 8, 8)]
        acked_total += len(acked)

        with snapshots.SnapshotStore(root) as store:
            infos = store.list()
            present = {i.index for i in infos}
            if acked:
                assert max(acked) in present, "an acknowledged save was lost"
            for info in infos:
                report = store.verify(info)
                assert report.ok, str(report)
                assert_same(store.load(info), _state(info.index))
            _assert_every_valid_name_is_complete(store)
            next_index = max(present, default=0) + 1
            latest, _ = store.latest_verified()
            assert (latest is None) == (not present)
    assert acked_total >= kills // 3 and rounds >= kills


def _assert_every_valid_name_is_complete(store: snapshots.SnapshotStore) -> None:
    """No file under a valid manifest or chunk name is partial: manifests all list, and
    every named chunk decodes to bytes that hash to its name."""
    root = store.path
    names = [n for n in os.listdir(os.path.join(root, "manifests")) if not n.startswith(".tmp.")]
    assert sorted(names) == sorted(i.manifest_id for i in store.list())
    chunks = os.path.join(root, "chunks")
    for sub in os.listdir(chunks) if os.path.isdir(chunks) else []:
        for name in os.listdir(os.path.join(root, "chunks", sub)):
            if not name.startswith(".tmp."):
                path = os.path.join(root, "chunks", sub, name)
                with open(path, "rb") as f:
                    raw_len = HEADER.unpack(f.read(HEADER.size))[5]
                out = torch.empty(raw_len, dtype=torch.uint8)
                ChunkCodec().read(path, raw_len, os.path.getsize(path), out)
                assert chunk_id(out) == name
    packs = os.path.join(root, "packs")
    for name in os.listdir(packs) if os.path.isdir(packs) else []:
        if not name.startswith(".tmp."):  # a named pack is complete: its index reads, each chunk decodes
            path = os.path.join(packs, name)
            for cid, entry in read_index(path).items():
                out = torch.empty(entry.raw_len, dtype=torch.uint8)
                ChunkCodec().read(path, entry.raw_len, entry.stored_len, out, entry.offset)
                assert chunk_id(out) == cid


def _one_save(root: str, kill_at: int, packs: bool) -> None:
    store = snapshots.SnapshotStore(root, keep_last=1, chunk_size=8192, workers=2, packs=packs)
    store.list()
    _kill_at_io_call(kill_at)
    store.save(_state(2), index=2, term=1)
    store.prune()


@pytest.mark.crash
@pytest.mark.parametrize("packs", [False, True], ids=["loose", "packs"])
def test_sigkill_at_every_io_call_of_a_save_and_prune(tmp_path, packs):
    """Kill the writer at its 1st, 2nd, ... write/fsync/rename/unlink of one save (and
    the prune after it), each time from the same starting store, until a run completes.
    With packs the starting store's pack holds chunks the new save no longer uses, so
    the prune after it rewrites or deletes a pack too."""
    base = str(tmp_path / "base")
    with snapshots.SnapshotStore(base, chunk_size=8192, packs=packs) as store:
        store.save(_state(1), index=1, term=1)
    completed = False
    for kill_at in range(1, 300):
        root = str(tmp_path / f"run{kill_at}")
        shutil.copytree(base, root)
        pid = fork_child(_one_save, root, kill_at, packs)
        _, status = os.waitpid(pid, 0)
        completed = os.WIFEXITED(status)
        assert completed or os.WTERMSIG(status) == signal.SIGKILL
        with snapshots.SnapshotStore(root) as store:
            infos = store.list()
            assert {i.index for i in infos} >= ({2} if completed else set())
            _assert_every_valid_name_is_complete(store)
            for info in infos:
                assert store.verify(info).ok
                assert_same(store.load(info), _state(info.index))
            assert store.latest_verified()[0].index in (1, 2)
            # A restarted writer recovers: it can save and load again.
            info = store.save(_state(3), index=3, term=1)
            assert_same(store.load(info), _state(3))
        if completed:
            break
    # A pack makes a save a handful of calls (header, chunks, index, fsync, rename...).
    assert completed and kill_at > (8 if packs else 20), f"the sweep should cover a whole save ({kill_at})"
