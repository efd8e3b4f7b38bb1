"""Incremental saves: unchanged chunks are never rewritten; bytes written are asserted."""

from __future__ import annotations

import os

import torch

from tests.chunkcopies import all_regions, chunk_files

from .conftest import assert_same


def _chunk_files(root) -> dict[str, int]:
    """Every file holding chunks (loose files and packs) with its mtime."""
    files = chunk_files(root)
    assert files
    return files


def _layers(n=8, size=64 * 1024):
    g = torch.Generator().manual_seed(0)
    return {f"layer{i}": torch.randn(size // 4, generator=g) for i in range(n)}


def test_unchanged_state_writes_only_the_manifest(open_store, tmp_path):
    store = open_store(chunk_size=16 * 1024)
    state = _layers()
    first = store.save(state, index=1, term=1)
    files = _chunk_files(tmp_path / "snap")
    second = store.save(state, index=2, term=1)
    manifest_size = os.path.getsize(tmp_path / "snap" / "manifests" / "2-1")
    assert second.bytes_written == manifest_size
    assert _chunk_files(tmp_path / "snap") == files  # not one chunk rewritten (same mtimes)
    assert second.bytes_stored == first.bytes_stored - os.path.getsize(tmp_path / "snap" / "manifests" / "1-1") + manifest_size


def test_changing_one_layer_writes_about_that_layer(open_store, tmp_path):
    store = open_store(chunk_size=16 * 1024, level=1)
    state = _layers()
    full = store.save(state, index=1, term=1)
    state["layer3"].add_(1.0)
    incremental = store.save(state, index=2, term=1)
    one_layer = full.bytes_written / 8
    # One layer of eight, plus a manifest: about an eighth of the full save, never more.
    assert incremental.bytes_written <= one_layer * 1.1 + 4096
    assert incremental.bytes_written >= one_layer * 0.5
    assert_same(store.load(incremental), state)


def test_changing_part_of_a_big_tensor_writes_only_its_chunks(open_store):
    store = open_store(chunk_size=4096)
    t = torch.randn(64 * 1024)  # 256 KiB: 64 chunks
    full = store.save({"t": t}, index=1, term=1)
    t[5000] = 42.0  # inside chunk 4
    inc = store.save({"t": t}, index=2, term=1)
    chunk_bytes = inc.bytes_written - os.path.getsize(os.path.join(store.path, "manifests", "2-1"))
    assert 0 < chunk_bytes <= 4096 + 16  # one chunk (raw at worst) and its header
    assert full.bytes_written > 60 * 3000


def test_identical_tensors_in_one_save_are_stored_once(open_store):
    store = open_store(chunk_size=4096)
    zeros = {f"m{i}": torch.zeros(4096) for i in range(10)}  # like fresh Adam moments
    info = store.save(zeros, index=1, term=1)
    assert info.chunks == 1
    assert_same(store.load(info), zeros)


def test_small_tensors_are_packed_and_a_change_rewrites_one_pack(open_store):
    store = open_store(chunk_size=64 * 1024)
    state = {f"bias{i}": torch.randn(64) for i in range(200)}  # 256 B each: packed into 16 KiB packs
    full = store.save(state, index=1, term=1)
    assert full.chunks <= 4
    state["bias7"].mul_(2)
    inc = store.save(state, index=2, term=1)
    chunk_bytes = inc.bytes_written - os.path.getsize(os.path.join(store.path, "manifests", "2-1"))
    assert 0 < chunk_bytes <= 16 * 1024 + 16


def test_floats_are_compressed_and_incompressible_bytes_stored_raw(open_store, tmp_path):
    store = open_store(chunk_size=64 * 1024, compression="zstd")
    g = torch.Generator().manual_seed(0)
    weights = (torch.randn(256 * 1024, generator=g) * 0.02).to(torch.bfloat16)
    info = store.save({"w": weights}, index=1, term=1)
    assert info.bytes_stored < 0.75 * info.bytes_logical  # byte grouping makes bf16 compress
    noise = torch.randint(0, 256, (256 * 1024,), dtype=torch.uint8, generator=g)
    info2 = store.save({"n": noise}, index=2, term=1)
    from snapshots.chunkfile import CODEC_RAW, HEADER

    codecs = {HEADER.unpack(r.read()[:HEADER.size])[2] for r in all_regions(tmp_path / "snap")}
    assert CODEC_RAW in codecs
    assert info2.bytes_stored >= info2.bytes_logical  # raw: no gain, no loss beyond headers
