"""Power loss during a packed save, emulated with crash images (as ALICE does, and as
tests/crash/test_power_loss.py does for the log).

A save (and the prune after it) runs with every open, write, fsync, rename and unlink of
this process recorded, in order, with its bytes. A power loss after the n-th call leaves
what was durable then: a file's bytes written before an fsync of that file, and a name
created, renamed or unlinked before an fsync of its directory. Everything else done
before the crash may or may not have reached the disk, in any combination (the page cache
writes back in any order, and we assume nothing of the filesystem's journal): a write may
land in 4 KiB pieces, each or not, and each undurable name change may or may not have
happened. For every crash point and several such subsets the image is built from the
store as it was before the save, and then: every snapshot it lists verifies and loads
bit for bit, the snapshot saved before is there until the new save returned, and the
new one from then on (the prune after it deletes the old one and reclaims its pack); and
a prune of the image deletes what the crash left and nothing a snapshot needs.
"""

from __future__ import annotations

import os
import random
import shutil
import threading

import pytest
import torch

import snapshots

from .conftest import assert_same

PIECE = 4096
SUBSETS = 6  # random subsets of the undurable operations per crash point

pytestmark = pytest.mark.crash


def _state(seed: int) -> dict:
    g = torch.Generator().manual_seed(seed)
    return {"frozen": torch.arange(3000, dtype=torch.float32),
            "model": {"w": torch.randn(6000, generator=g), "b": torch.randn(9, generator=g).to(torch.bfloat16)},
            "step": seed}


class Recorder:
    """Records this process's file operations under `root` while installed (all threads)."""

    def __init__(self, root: str):
        self.root = root
        self.ops: list[tuple] = []
        self._fds: dict[int, str] = {}
        self._lock = threading.Lock()
        self._real = {name: getattr(os, name) for name in ("open", "write", "pwrite", "fsync", "rename", "unlink",
                                                           "close")}

    def _rel(self, path) -> str | None:
        path = os.path.abspath(os.fspath(path))
        return os.path.relpath(path, self.root) if path.startswith(self.root + os.sep) or path == self.root else None

    def install(self, monkeypatch) -> None:
        real = self._real

        def open_(path, flags, mode=0o777, *, dir_fd=None):
            fd = real["open"](path, flags, mode, dir_fd=dir_fd)
            rel = self._rel(path) if dir_fd is None else None
            if rel is not None:
                with self._lock:
                    self._fds[fd] = rel
                    if flags & os.O_CREAT and flags & os.O_EXCL:
                        self.ops.append(("create", rel))
            return fd

        def write(fd, data):
            n = real["write"](fd, data)
            self._data(fd, None, bytes(memoryview(data)[:n]))
            return n

        def pwrite(fd, data, offset):
            n = real["pwrite"](fd, data, offset)
            self._data(fd, offset, bytes(memoryview(data)[:n]))
            return n

        def fsync(fd):
            real["fsync"](fd)
            with self._lock:
                if fd in self._fds:
                    self.ops.append(("fsync", self._fds[fd]))

        def rename(src, dst, **kw):
            real["rename"](src, dst, **kw)
            a, b = self._rel(src), self._rel(dst)
            if a is not None and b is not None:
                with self._lock:
                    self.ops.append(("rename", a, b))

        def unlink(path, *, dir_fd=None):
            real["unlink"](path, dir_fd=dir_fd)
            rel = self._rel(path) if dir_fd is None else None
            if rel is None and dir_fd is not None:
                rel = self._fds.get(dir_fd)
                rel = os.path.join(rel, path) if rel is not None else None
            if rel is not None:
                with self._lock:
                    self.ops.append(("unlink", rel))

        def close(fd):
            real["close"](fd)
            with self._lock:
                self._fds.pop(fd, None)

        for name, fn in (("open", open_), ("write", write), ("pwrite", pwrite), ("fsync", fsync),
                         ("rename", rename), ("unlink", unlink), ("close", close)):
            monkeypatch.setattr(os, name, fn)
        self._positions: dict[int, int] = {}

    def _data(self, fd: int, offset: int | None, data: bytes) -> None:
        with self._lock:
            rel = self._fds.get(fd)
            if rel is None:
                return
            if offset is None:  # os.write: at this descriptor's position (our writers never seek)
                offset = self._positions.get(fd, 0)
                self._positions[fd] = offset + len(data)
            self.ops.append(("write", rel, offset, data))


def _durable(ops: list[tuple], upto: int) -> list[bool]:
    """For each of ops[:upto]: whether a later fsync (before `upto`) made it durable."""
    out = []
    for k, op in enumerate(ops[:upto]):
        later = ops[k + 1:upto]
        if op[0] == "write":
            out.append(("fsync", op[1]) in later)
        elif op[0] == "fsync":
            out.append(True)
        else:  # a name change: durable once its directory is fsynced
            directory = os.path.dirname(op[-1])
            out.append(("fsync", directory) in later)
    return out


def _image(base: str, target: str, ops: list[tuple], upto: int, rng: random.Random | None) -> None:
    """`target` = `base` plus ops[:upto], the undurable ones kept at random (all if rng is None)."""
    shutil.rmtree(target, ignore_errors=True)
    shutil.copytree(base, target, symlinks=True)
    durable = _durable(ops, upto)
    for op, sure in zip(ops[:upto], durable):
        kind = op[0]
        keep = sure or rng is None or rng.random() < 0.5
        path = os.path.join(target, op[1])
        if kind == "create":
            if keep:
                os.makedirs(os.path.dirname(path), exist_ok=True)
                open(path, "ab").close()
        elif kind == "write":
            if not os.path.exists(path):
                continue  # its name was lost (an undurable create or rename): nothing to write into
            data, offset = op[3], op[2]
            with open(path, "r+b") as f:
                for at in range(0, len(data), PIECE):
                    if sure or rng is None or rng.random() < 0.5:
                        f.seek(offset + at)
                        f.write(data[at:at + PIECE])
        elif kind == "rename" and keep and os.path.exists(path):
            os.replace(path, os.path.join(target, op[2]))
        elif kind == "unlink" and keep and os.path.lexists(path):
            os.unlink(path)


def _check(root: str, new_acknowledged: bool) -> None:
    with snapshots.SnapshotStore(root, packs=True) as store:
        names = [i.manifest_id for i in store.list()]
        assert ("2-1" if new_acknowledged else "1-1") in names, names
        for name in names:
            assert store.verify(name).ok, (name, store.verify(name))
            assert_same(store.load(name), _state(int(name.split("-")[0])))
        # The restarted writer's prune deletes whatever the crash left (a temp pack, a
        # named pack torn before its fsync) and nothing a snapshot needs.
        report = store.prune()
        assert all("deleted" in d for d in report.damage), report.damage
        for info in store.list():
            assert_same(store.load(info), _state(info.index))
        packs = os.path.join(root, "packs")
        assert not [n for n in os.listdir(packs) if n.startswith(".tmp.")]


@pytest.mark.parametrize("writer", ["fresh", "warm"])
def test_crash_images_of_a_packed_save_and_prune_keep_every_durable_snapshot(tmp_path, monkeypatch, writer):
    """`fresh`: the save runs in a store opened on the old snapshot, so it fsyncs packs/
    for the chunk it reuses from the old pack anyway; `warm`: the same store wrote the old
    snapshot (and fsynced packs/ then), so only the new pack's own need makes the save
    fsync packs/ again (a save that forgot it fails here)."""
    base = str(tmp_path / "base")
    live = str(tmp_path / "live")
    if writer == "fresh":
        with snapshots.SnapshotStore(base, packs=True, chunk_size=8192, keep_last=1) as store:
            store.save(_state(1), index=1, term=1)
        shutil.copytree(base, live)
        store = snapshots.SnapshotStore(live, packs=True, chunk_size=8192, keep_last=1, workers=2)
        store.list()
    else:
        store = snapshots.SnapshotStore(live, packs=True, chunk_size=8192, keep_last=1, workers=2)
        store.save(_state(1), index=1, term=1)  # returned: every file of it is durable
        shutil.copytree(live, base)
    recorder = Recorder(os.path.abspath(live))
    with monkeypatch.context() as patch:
        recorder.install(patch)
        store.save(_state(2), index=2, term=1)
        acknowledged = len(recorder.ops)
        report = store.prune()  # deletes 1-1, and deletes or rewrites its pack
        store.close()
    assert report.deleted == ("1-1",) and report.chunks_deleted > 0
    ops = recorder.ops
    kinds = [op[0] for op in ops]
    assert kinds.count("fsync") >= 4 and "rename" in kinds  # pack, packs/, manifest, manifests/
    rng = random.Random(7)
    image = str(tmp_path / "image")
    for upto in range(len(ops) + 1):
        for subset in [None] + [rng] * SUBSETS:
            _image(base, image, ops, upto, subset)
            _check(image, new_acknowledged=upto >= acknowledged)
