"""Loads onto a device, run on the CPU everywhere and on CUDA where there is a GPU
(bench/gpu_check.sh runs this file there): load_into a live state keeps every tensor's
memory and device and restores the bytes through every path of the reader (a chunk
straight into a tensor, a chunk shared by packed tensors, a tensor over many chunks,
tied and non-contiguous tensors); load(map_location) gives the bytes on the device; a
chunk damaged on disk is named and leaves a live state that never checked it as it was;
on CUDA, a load inside ``torch.cuda.stream(s)`` is ordered after the work queued on s."""

from __future__ import annotations

import pytest
import torch

import snapshots

from tests.chunkcopies import all_regions

from .conftest import assert_same

DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"))]


def _state(seed: int, device: str) -> dict:
    g = torch.Generator().manual_seed(seed)
    base = torch.randn(64, 32, generator=g)

    def put(t):
        return t.to(device)

    tied = put(torch.randn(300, generator=g))
    return {
        "bf16": put(torch.randn(5000, generator=g).to(torch.bfloat16)),  # many chunks, grouped by 2
        "fp16": put(torch.randn(999, generator=g).to(torch.float16)),
        "fp32": put(torch.randn(40, 50, generator=g)),  # grouped by 4
        "fp64": put(torch.randn(700, generator=g, dtype=torch.float64)),  # grouped by 8
        "ints": put(torch.arange(3000, dtype=torch.int64) * (seed + 1)),  # not grouped
        "small": [put(torch.randn(7, generator=g)), put(torch.randn(5, generator=g))],  # packed into one chunk
        "tied": {"a": tied, "b": tied},  # one tensor at two key paths
        "strided": put(base).t(),  # not contiguous: restored with copy_
        "meta": {"step": seed},
    }


def _on_cpu(state):
    if isinstance(state, torch.Tensor):
        return state.cpu()
    if isinstance(state, dict):
        return {k: _on_cpu(v) for k, v in state.items()}
    if isinstance(state, list):
        return [_on_cpu(v) for v in state]
    return state


def _leaves(state, prefix=""):
    if isinstance(state, torch.Tensor):
        yield prefix, state
    elif isinstance(state, dict):
        for k, v in state.items():
            yield from _leaves(v, f"{prefix}/{k}")
    elif isinstance(state, list):
        for i, v in enumerate(state):
            yield from _leaves(v, f"{prefix}/{i}")


@pytest.mark.parametrize("device", DEVICES)
def test_load_into_a_live_device_state_restores_the_bytes_in_the_same_memory(open_store, device):
    store = open_store(chunk_size=1024)  # bf16 spans ten chunks; small tensors share one
    saved = _state(0, device)
    info = store.save(saved, index=1, term=1)
    live = _state(1, device)
    memory = {path: (t.data_ptr(), t.device) for path, t in _leaves(live)}
    for _ in range(2):  # the second reload decodes straight into the live tensors
        store.load_into(info, live)
        assert_same(_on_cpu(live), _on_cpu(saved))
        assert {path: (t.data_ptr(), t.device) for path, t in _leaves(live)} == memory
    assert live["tied"]["a"] is live["tied"]["b"]


@pytest.mark.parametrize("device", DEVICES)
def test_a_store_that_never_checked_the_chunks_loads_onto_the_device_bit_exact(open_store, tmp_path, device):
    saved = _state(0, device)
    info = open_store(chunk_size=1024).save(saved, index=1, term=1)
    reader = open_store(chunk_size=1024)  # another store object: no chunk known good yet
    fresh = reader.load(info, map_location=device)
    assert all(t.device.type == device for _, t in _leaves(fresh))
    assert_same(_on_cpu(fresh), _on_cpu(saved))
    live = _state(1, device)
    reader.load_into(info, live)
    assert_same(_on_cpu(live), _on_cpu(saved))


@pytest.mark.parametrize("device", DEVICES)
def test_a_damaged_chunk_is_named_and_a_live_state_that_never_checked_it_is_untouched(open_store, tmp_path, device):
    info = open_store(chunk_size=1024).save(_state(0, device), index=1, term=1)
    victim = max(all_regions(tmp_path / "snap"), key=lambda r: (r.size, r.cid))  # loose or packed
    victim.flip(victim.size - 1, 1)  # one bit of the chunk's last byte: the hash must catch it
    live = _state(1, device)
    before = _on_cpu(live)
    reader = open_store(chunk_size=1024)
    with pytest.raises(snapshots.CorruptSnapshotError) as caught:
        reader.load_into(info, live)
    assert caught.value.chunk == victim.cid
    assert_same(_on_cpu(live), before)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_load_into_on_a_side_stream_is_ordered_after_the_work_queued_there(open_store):
    """The reader's worker threads write live GPU tensors on the caller's current stream:
    a fill queued on it behind a long kernel, before the load, must run before the load's
    copies, never after them (on the workers' default stream it would overwrite them)."""
    store = open_store(chunk_size=1024)
    saved = _state(0, "cuda")
    info = store.save(saved, index=1, term=1)
    live = _state(1, "cuda")
    store.load_into(info, live)  # checks every chunk: the next load decodes into the live tensors
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        torch.cuda._sleep(200_000_000)  # about 0.1 s of GPU time queued before the fills
        for _, t in _leaves(live):
            t.fill_(7)
        store.load_into(info, live)
    torch.cuda.synchronize()
    assert_same(_on_cpu(live), _on_cpu(saved))
