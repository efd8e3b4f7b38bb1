"""load_into decodes straight into the live tensors when it may (StoreReader.read_tensors):
the bytes, the tensors' identity and memory, autograd's version counter, aliased and
awkward live tensors, and what a damaged chunk leaves behind in either mode."""

from __future__ import annotations

import pytest
import torch

import snapshots
from snapshots import inplace

from tests.chunkcopies import all_regions

from .conftest import assert_same


def _state(seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    return {
        "bf16": torch.randn(3000, generator=g).to(torch.bfloat16),  # several chunks, grouped by 2
        "fp32": torch.randn(40, 50, generator=g),  # grouped by 4
        "fp64": torch.randn(700, generator=g, dtype=torch.float64),  # grouped by 8
        "ints": torch.arange(2000, dtype=torch.int64),  # not grouped
        "small": torch.randn(7, generator=g),  # packed with others into one chunk
        "bias": torch.randn(5, generator=g),
        "step": 3,
    }


def _decoded_in_place(monkeypatch) -> list[int]:
    """Record, for each later load_into, how many tensors arrived already in the live
    tensors (decoded in place) rather than as fresh ones to copy."""
    counts: list[int] = []
    real = inplace.RestorePlan.apply

    def spy(plan, tensor):
        counts.append(sum(tensor(i) is live for live, i in plan.copies))
        return real(plan, tensor)

    monkeypatch.setattr(inplace.RestorePlan, "apply", spy)
    return counts


def test_a_reload_decodes_into_the_live_memory_and_bumps_versions(store, monkeypatch):
    saved = _state(0)
    info = store.save(saved, index=1, term=1)  # written by this store: known good
    live = _state(1)
    ptrs = {k: v.data_ptr() for k, v in live.items() if isinstance(v, torch.Tensor)}
    versions = {k: v._version for k, v in live.items() if isinstance(v, torch.Tensor)}
    counts = _decoded_in_place(monkeypatch)
    store.load_into(info, live)
    assert_same(live, saved)
    assert counts == [6]
    assert all(live[k].data_ptr() == p for k, p in ptrs.items())
    assert all(live[k]._version > v for k, v in versions.items())


def test_a_store_that_never_checked_the_chunks_decodes_into_fresh_memory_first(open_store, tmp_path, monkeypatch):
    saved = _state(0)
    with open_store(tmp_path / "s") as writer:
        info = writer.save(saved, index=1, term=1)
    reader = open_store(tmp_path / "s")
    counts = _decoded_in_place(monkeypatch)
    live = _state(1)
    reader.load_into(info, live)  # nothing known: staged, then every chunk is known good
    assert_same(live, saved)
    live = _state(2)
    reader.load_into(info, live)
    assert_same(live, saved)
    assert counts == [0, 6]


def test_aliased_and_awkward_live_tensors_load_like_copy_would(store):
    g = torch.Generator().manual_seed(5)
    saved = {"a": torch.randn(64, 32, generator=g), "b": torch.randn(64, 32, generator=g),
             "t": torch.randn(32, 64, generator=g), "odd": torch.randn(999, generator=g).to(torch.bfloat16)}
    info = store.save(saved, index=1, term=1)
    shared = torch.zeros(64, 32)
    base = torch.zeros(1000, dtype=torch.bfloat16)
    live = {"a": shared, "b": shared,  # tied: one memory, the later copy wins, as with copy_
            "t": torch.zeros(64, 32).t(),  # not contiguous
            "odd": base[1:]}  # a view at an odd byte offset: no aligned words there
    store.load_into(info, live)
    assert torch.equal(live["a"], saved["b"]) and live["a"] is shared
    assert torch.equal(live["t"], saved["t"])
    assert torch.equal(live["odd"], saved["odd"]) and base[0] == 0


def test_decodable_into_takes_only_plain_unshared_cpu_tensors():
    flat = torch.zeros(100)
    targets = {0: torch.zeros(10), 1: flat[:50], 2: flat[40:], 3: torch.zeros(4, 4).t(),
               4: torch.zeros(0), 5: torch.zeros(3, dtype=torch.complex64).conj(), 6: torch.zeros(8)}
    assert sorted(inplace.decodable_into(targets, range(7))) == [0, 6]
    assert sorted(inplace.decodable_into(targets, [6])) == [6]
    assert sorted(inplace.decodable_into({1: flat[:50], 2: flat[50:]}, [1, 2])) == [1, 2]  # adjacent, disjoint


def _flip_a_chunk_of(root: str) -> None:
    """Flip one bit in the middle of the largest chunk the snapshot uses (loose or packed)."""
    victim = max(all_regions(root), key=lambda r: (r.size, r.cid))
    victim.flip(victim.size // 2, 1)


def test_damage_after_a_check_is_caught_and_the_next_load_leaves_live_untouched(store, tmp_path):
    g = torch.Generator().manual_seed(0)
    saved = {"w": torch.randn(8192, generator=g), "step": 1}
    info = store.save(saved, index=1, term=1)
    _flip_a_chunk_of(str(tmp_path / "snap"))
    live = {"w": torch.zeros(8192), "step": 0}
    # This store wrote the chunk, so it decodes in place: still hash-checked and refused,
    # but the tensors decoded before the damaged chunk already hold the snapshot's bytes.
    with pytest.raises(snapshots.CorruptSnapshotError):
        store.load_into(info, live)
    assert live["step"] == 0
    # The damaged chunk is no longer trusted: the next load decodes into fresh memory.
    live = {"w": torch.zeros(8192), "step": 0}
    with pytest.raises(snapshots.CorruptSnapshotError):
        store.load_into(info, live)
    assert live["step"] == 0 and not live["w"].any()
    # And the next save writes it again rather than trusting it.
    store.save(saved, index=2, term=1)
    store.load_into(store.list()[-1], live)
    assert_same(live, saved)


def _chunk_codecs(root) -> set[int]:
    return {r.read()[5] for r in all_regions(root)}  # the codec byte (FORMAT.md, "Chunk file")


def test_compression_none_writes_raw_chunks_and_stores_mix_both(open_store, tmp_path):
    saved = _state(0)
    with open_store(tmp_path / "s", compression="none") as raw_store:
        raw_info = raw_store.save(saved, index=1, term=1)
    assert _chunk_codecs(tmp_path / "s") == {0}
    assert raw_info.bytes_stored >= raw_info.bytes_logical
    changed = {**saved, "fp32": saved["fp32"] * 2}
    zstd_store = open_store(tmp_path / "s", compression="zstd")  # a zstd store adds compressed chunks
    info = zstd_store.save(changed, index=2, term=1)
    assert _chunk_codecs(tmp_path / "s") == {0, 1}
    for store, (i, state) in ((zstd_store, (raw_info, saved)), (zstd_store, (info, changed))):
        live = _state(3)
        store.load_into(i, live)
        assert_same(live, state)
        assert_same(store.load(i), state)
        assert store.verify(i).ok


def test_compression_must_be_a_known_name(tmp_path):
    with pytest.raises(ValueError, match="compression"):
        snapshots.SnapshotStore(tmp_path / "s", compression="lz4")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_a_reload_into_gpu_tensors_goes_through_pinned_buffers(store, monkeypatch):
    saved = _state(0)
    info = store.save(saved, index=1, term=1)
    live = {k: v.cuda() if isinstance(v, torch.Tensor) else v for k, v in _state(1).items()}
    ptrs = {k: v.data_ptr() for k, v in live.items() if isinstance(v, torch.Tensor)}
    counts = _decoded_in_place(monkeypatch)
    store.load_into(info, live)
    assert counts == [6]
    assert all(live[k].data_ptr() == p for k, p in ptrs.items())
    assert_same({k: v.cpu() if isinstance(v, torch.Tensor) else v for k, v in live.items()}, saved)
