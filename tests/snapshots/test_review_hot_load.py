"""Review of the hot load path (chunkfile's piecewise, shifted raw reads; lastcopy's
remembered copies; 64-byte aligned packs) at the edges test_hot_load.py leaves open:

- a read that returns fewer bytes than asked before the end of the file (POSIX allows
  it; only a read of 0 bytes is the end) is not a damaged chunk or pack;
- the digest ChunkCodec.read returns is always that of the bytes it leaves in the
  destination, whatever changes in the file while it reads, piece by piece;
- the real thresholds (SHIFT_MIN and HASH_PIECE, and one byte either side) into live
  views at odd offsets of one storage, decoded side by side: exact, nothing outside
  written;
- remembered copies: never shared between two stores in one process, a pack replaced
  by a hostile file of the same name and size is damage naming the chunk and the pack,
  and concurrent reloads from several threads;
- pack indexes pointing into the padding, and gaps that are not zeros (FORMAT.md: readers
  accept any gaps and never read them)."""

from __future__ import annotations

import itertools
import os
import threading

import pytest
import torch
import xxhash

import snapshots
from snapshots import chunkfile
from snapshots.chunkfile import CODEC_RAW, HEADER, MAGIC, VERSION, ChunkCodec, chunk_id
from snapshots.packfile import ENTRY, TRAILER, read_index

from tests.chunkcopies import region

from .conftest import assert_same

MIB = 1 << 20


def _bytes(n: int, seed: int) -> torch.Tensor:
    return torch.randint(0, 256, (n,), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))


def _state(seed: int) -> dict:
    """A raw chunk past SHIFT_MIN (read shifted into an aligned tensor), one past a hash
    piece, a float tensor (grouped and compressed under zstd) and a small one."""
    g = torch.Generator().manual_seed(seed)
    return {"big": _bytes(70001, seed), "piece": _bytes(MIB + 3, seed + 1),
            "f": torch.randn(30000, generator=g), "small": _bytes(100, seed + 2)}


# -- short reads are not the end of the file --------------------------------------------

def _short_reads(monkeypatch) -> None:
    """From here on, every os.pread and os.preadv returns fewer bytes than asked (1 to
    4099 of the first buffer, in turn), as POSIX allows; the end of the file is still 0."""
    real_pread, real_preadv = os.pread, os.preadv
    sizes = itertools.cycle([5, 1, 4099, 17, 2048])
    lock = threading.Lock()

    def next_size() -> int:
        with lock:
            return next(sizes)

    def pread(fd, n, offset):
        return real_pread(fd, min(n, next_size()), offset)

    def preadv(fd, buffers, offset, *flags):
        for b in buffers:
            if len(b):
                return real_preadv(fd, [memoryview(b)[:next_size()]], offset, *flags)
        return 0

    monkeypatch.setattr(os, "pread", pread)
    monkeypatch.setattr(os, "preadv", preadv)


@pytest.mark.parametrize("compression", ["none", "zstd"])
@pytest.mark.parametrize("packs", [True, False], ids=["packs", "loose"])
def test_reads_that_return_less_than_asked_are_not_damage(open_store, tmp_path, monkeypatch, compression, packs):
    # Before: a chunk's first read returning under 16 bytes was "shorter than its header",
    # and a pack's magic read short was "bad pack magic": a good snapshot reported damaged.
    saved = _state(1)
    writer = open_store(tmp_path / "s", packs=packs, compression=compression, chunk_size=2 * MIB)
    info = writer.save(saved, index=1, term=1)
    _short_reads(monkeypatch)
    reader = open_store(tmp_path / "s")  # nothing cached: every pack index is read now
    report = reader.verify(info)
    assert report.ok, [d.reason for d in report.damage]
    assert_same(reader.load(info), saved)
    live = _state(2)
    reader.load_into(info, live)  # known good now: straight into the live tensors, shifted
    assert_same(live, saved)
