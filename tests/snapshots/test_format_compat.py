"""Stores written by older code still read: the manifests under data/v1_store were written
by the writer that counted each manifest's own size into `bytes.written`/`bytes.stored`
(before the `counts` field). Their infos must read back exactly as that writer reported
them, and new manifests must report the same quantities."""

from __future__ import annotations

import os
import shutil
from collections import OrderedDict

import pytest
import torch

import snapshots
from snapshots.manifest import Manifest

from .conftest import assert_same

DATA = os.path.join(os.path.dirname(__file__), "data", "v1_store")
# SnapshotInfo as the old writer returned it from save() (and its list() read back).
OLD_INFOS = {
    "3-1": dict(bytes_logical=1348, bytes_written=1811, bytes_stored=1811, tensors=4, chunks=5,
                created=1796022090.9582624, meta={"by": "v1 writer"}),
    "8-2": dict(bytes_logical=1348, bytes_written=1423, bytes_stored=1799, tensors=4, chunks=5,
                created=1796022090.9744227, meta=None),
}


def _old_states():
    """The two states the old writer saved, rebuilt from the same seed."""
    g = torch.Generator().manual_seed(11)
    model = OrderedDict(w=torch.randn(300, generator=g), b=torch.arange(7, dtype=torch.int64),
                        h=torch.randn(40, generator=g).to(torch.bfloat16))
    first = {"model": OrderedDict((k, v.clone()) for k, v in model.items()), "step": 5,
             "opt": [torch.zeros(3), (1.5, "x")]}
    model["w"][:5] = 0
    second = {"model": model, "step": 5, "opt": [torch.zeros(3), (1.5, "x")]}
    return {"3-1": first, "8-2": second}


@pytest.fixture
def old_store(tmp_path):
    root = tmp_path / "old"
    shutil.copytree(DATA, root)  # readers create READERS: never inside the repository
    with snapshots.SnapshotStore(root, chunk_size=1024, workers=2) as store:  # as it was written
        yield store


def test_old_manifests_read_with_the_sizes_their_writer_reported(old_store):
    infos = {i.manifest_id: i for i in old_store.list()}
    assert sorted(infos) == ["3-1", "8-2"]
    for name, expected in OLD_INFOS.items():
        got = {k: getattr(infos[name], k) for k in expected}
        assert got == expected, name
    states = _old_states()
    for name in infos:
        assert old_store.verify(name).ok
        assert_same(old_store.load(name), states[name])
    info, state, skipped = old_store.load_latest()
    assert (info.manifest_id, skipped) == ("8-2", [])
    assert_same(state, states["8-2"])


def test_new_manifests_count_their_own_file_once(old_store):
    """A save onto the old store: bytes_written is what it wrote (here: only the manifest,
    every chunk exists), bytes_stored its chunks plus its manifest, as the old writer's."""
    info = old_store.save(_old_states()["8-2"], index=9, term=2)
    path = os.path.join(old_store.path, "manifests", "9-2")
    size = os.path.getsize(path)
    assert info.bytes_written == size
    assert info.bytes_stored == OLD_INFOS["8-2"]["bytes_stored"] - os.path.getsize(
        os.path.join(old_store.path, "manifests", "8-2")) + size
    assert old_store.list()[-1] == info
    with open(path, "rb") as f:
        manifest = Manifest.decode("9-2", f.read())
    assert manifest.file_size == size and manifest.chunk_bytes_written == 0
