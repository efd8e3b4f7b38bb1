"""Review of snapshots/transfer.py's promise that a caller never ships damage: the bytes
`StoreFiles.read_chunk` hands out are the very bytes it checked, not a second read of a
file that may have changed after the check (a replica uploads them put-if-absent, so a
damaged upload would stay on the replica for good), and a read that returns fewer bytes
than asked before the end of the file is not a chunk cut short."""

from __future__ import annotations


import pytest
import torch

import snapshots
from snapshots import transfer
from snapshots.chunkfile import HEADER

from tests.chunkcopies import all_regions

from .test_review_hot_load import _short_reads


def _state(seed: int) -> dict:
    g = torch.Generator().manual_seed(seed)
    return {"w": torch.randn(3000, generator=g), "b": torch.arange(40, dtype=torch.int32)}


@pytest.mark.parametrize("compression", ["none", "zstd"])
@pytest.mark.parametrize("packs", [True, False], ids=["packs", "loose"])
def test_read_chunk_hands_out_the_bytes_it_checked_even_if_the_file_changes_after(open_store, monkeypatch,
                                                                                  compression, packs):
    store = open_store(packs=packs, compression=compression)
    store.save(_state(1), index=1, term=1)
    files = snapshots.StoreFiles(store.path)
    mf = files.read_manifest("1-1")
    good = {ref.id: files.read_chunk(ref.id, ref.raw_len, ref.stored_len) for ref in mf.chunks}
    regions = {r.cid: r for r in all_regions(store.path)}
    real = transfer.ChunkCodec.read_open
    changed = []

    def read_open(self, fd, size, raw_len, stored_len, out, offset=None):
        digest = real(self, fd, size, raw_len, stored_len, out, offset)
        if not changed and digest in regions:  # right after a good check, another writer damages it
            regions[digest].flip(HEADER.size + 5)
            changed.append(digest)
        return digest

    monkeypatch.setattr(transfer.ChunkCodec, "read_open", read_open)
    for ref in mf.chunks:
        try:
            data = files.read_chunk(ref.id, ref.raw_len, ref.stored_len)
        except snapshots.CorruptSnapshotError:
            assert ref.id in changed  # refused: fine, nothing damaged was handed out
            continue
        assert data == good[ref.id], f"chunk {ref.id}: handed out bytes other than the ones it checked"
    assert changed


@pytest.mark.parametrize("packs", [True, False], ids=["packs", "loose"])
def test_read_chunk_takes_reads_that_return_less_than_asked(open_store, monkeypatch, packs):
    store = open_store(packs=packs, compression="none")
    store.save(_state(2), index=1, term=1)
    files = snapshots.StoreFiles(store.path)
    mf = files.read_manifest("1-1")
    good = {ref.id: files.read_chunk(ref.id, ref.raw_len, ref.stored_len) for ref in mf.chunks}
    _short_reads(monkeypatch)
    files = snapshots.StoreFiles(store.path)
    for ref in mf.chunks:
        assert files.read_chunk(ref.id, ref.raw_len, ref.stored_len) == good[ref.id]
