"""Journal.open(snapshot_compression=, snapshot_packs=): the journal's store writes its
chunks raw and/or packed, recovery reads them back bit-exactly, and the options can be
switched on an existing journal (a store reads both forms)."""

from __future__ import annotations

import pytest
import torch

import replay
from replay import layout


def _ops():
    ops = replay.Ops()

    @ops.op
    def step(state, *, k):
        state["w"].mul_(1.0001).add_(torch.arange(4096, dtype=torch.float32) * k)

    return ops


def _state():
    return {"w": torch.linspace(0, 1, 4096)}


def _files(root, pattern):
    return sorted(p for p in layout.snapshots_dir(root).rglob(pattern) if p.is_file())


@pytest.mark.parametrize("compression,packs", [("none", False), ("zstd", True), ("none", True)])
def test_the_journal_store_takes_the_options_and_recovers_exactly(tmp_path, compression, packs):
    root = tmp_path / "j"
    ops = _ops()
    with replay.Journal.open(root, state=_state(), ops=ops, snapshot=replay.Every(entries=5),
                             snapshot_compression=compression, snapshot_packs=packs) as journal:
        for k in range(12):
            journal.apply("step", k=k)
        expected = journal.state["w"].clone()
    packed = _files(root, "*.pack")
    assert bool(packed) == packs, packed
    state = _state()
    # Reopened with the other settings: the store reads what the first one wrote.
    with replay.Journal.open(root, state=state, ops=ops, snapshot_compression="zstd", snapshot_packs=not packs):
        assert torch.equal(state["w"], expected)


def test_a_bad_compression_is_refused_before_anything_is_created(tmp_path):
    with pytest.raises(ValueError, match="snapshot_compression"):
        replay.Journal.open(tmp_path / "j", state=_state(), ops=_ops(), snapshot_compression="lz4")
    assert not (tmp_path / "j").exists()
