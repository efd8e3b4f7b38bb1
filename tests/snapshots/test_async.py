"""save_async: staging is race-free, buffers are reused, errors surface in result()."""

from __future__ import annotations

import errno

import pytest
import torch

import snapshots
import snapshots.commit as commit_module

from .conftest import assert_same, small_model_and_optimizer


def _clone(state):
    if isinstance(state, torch.Tensor):
        return state.clone()
    if isinstance(state, dict):
        return type(state)((k, _clone(v)) for k, v in state.items())
    if isinstance(state, (list, tuple)):
        return type(state)(_clone(v) for v in state)
    return state


def _state(n=6, numel=64 * 1024):
    g = torch.Generator().manual_seed(0)
    return {
        "w": [torch.randn(numel, generator=g) for _ in range(n)],
        "bf": torch.randn(256, 256, generator=g).to(torch.bfloat16),
        "t": torch.randn(300, 200, generator=g).t(),  # non-contiguous
        "step": 0,
    }


def test_mutating_live_tensors_right_after_save_async_does_not_leak(open_store):
    store = open_store(chunk_size=16 * 1024)
    state = _state()
    expected, pending = [], []
    for i in range(4):
        expected.append(_clone(state))
        pending.append(store.save_async(state, index=i + 1, term=1))
        # Mutate at once, while the background threads hash and write.
        for w in state["w"]:
            w.add_(1.0)
        state["bf"].zero_()
        state["t"].mul_(-1)
        state["w"][0].resize_(10)  # even reallocating a live tensor must not matter
        state["w"][0] = torch.randn(64 * 1024)
        state["step"] += 1
    for p, exp in zip(pending, expected):
        info = p.result(timeout=60)
        assert p.done()
        assert_same(store.load(info), exp)


@pytest.mark.parametrize("state", [
    {"a": torch.empty(0)},  # every tensor to stage is empty: no staging arena at all
    {"a": torch.empty(0, 3), "b": torch.arange(5.0), "c": torch.empty(0, dtype=torch.bfloat16)},
], ids=["only-empty", "empty-beside-full"])
def test_save_async_of_empty_tensors_round_trips(open_store, state):
    store = open_store()
    info = store.save_async(state, index=1, term=1).result(timeout=60)
    assert_same(store.load(info), state)


def test_model_and_optimizer_stepping_during_save_async(open_store):
    store = open_store(chunk_size=8 * 1024)
    model, optim = small_model_and_optimizer()
    state = {"model": model.state_dict(), "optim": optim.state_dict()}
    expected = _clone(state)
    pending = store.save_async(state, index=1, term=1)
    for _ in range(3):  # optimizer steps update the same tensors in place
        optim.zero_grad()
        model(torch.randint(0, 50, (4, 5))).square().mean().backward()
        optim.step()
    back = store.load(pending.result())
    assert_same(back["model"], expected["model"])
    assert_same(back["optim"], expected["optim"])


def test_staging_buffers_are_reused_across_saves(open_store):
    store = open_store()
    state = _state(n=2)
    for i in range(5):
        store.save_async(state, index=i, term=1).result()
    assert store._stager.arenas_allocated == 1
    store.save(state, index=9, term=1)  # contiguous CPU tensors are not copied by save()
    assert store._stager.arenas_allocated == 1


def test_an_arena_whose_copies_were_not_waited_for_is_never_reused():
    """A failed wait (a device error in the copy's event) leaves the copy possibly still
    writing into the arena: release drops it instead of handing it to the next save."""
    from snapshots.staging import Staged, Stager

    class FailingEvent:
        def synchronize(self):
            raise RuntimeError("CUDA error: an illegal memory access was encountered")

    stager = Stager()
    arena = stager._take(1024, pinned=False)
    staged = Staged(views=[arena[:16]], arena=arena, events=[FailingEvent()], stager=stager)
    with pytest.raises(RuntimeError, match="illegal memory access"):
        staged.wait()
    staged.release()
    assert stager._take(1024, pinned=False) is not arena
    waited = Staged(views=[], arena=arena, events=[], stager=stager)
    waited.release()  # copies all waited for: kept for the next save
    assert stager._take(1024, pinned=False) is arena


def test_write_errors_surface_in_result_and_commit_nothing(open_store, monkeypatch):
    store = open_store()
    store.save({"a": torch.zeros(10)}, index=1, term=1)

    def full_disk(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(commit_module, "start_durable_write", full_disk)  # the manifest's write
    pending = store.save_async({"a": torch.randn(5000)}, index=2, term=1)
    with pytest.raises(OSError) as e:
        pending.result(timeout=60)
    assert e.value.errno == errno.ENOSPC
    assert isinstance(pending.exception(), OSError)
    with pytest.raises(OSError):
        store.save({"a": torch.randn(5000)}, index=3, term=1)
    monkeypatch.undo()
    assert [i.manifest_id for i in store.list()] == ["1-1"]
    assert store.save({"a": torch.ones(3)}, index=4, term=1).index == 4  # still usable


def test_bad_input_raises_in_the_caller(store):
    with pytest.raises(TypeError, match=r"\['x'\]"):
        store.save_async({"x": object()}, index=1, term=1)
    with pytest.raises(ValueError):
        store.save_async({}, index=-1, term=1)
    with pytest.raises(ValueError):
        store.save({}, index=1, term=True)


def test_close_waits_for_pending_saves_and_then_refuses(open_store, tmp_path):
    store = open_store()
    pending = [store.save_async(_state(n=2), index=i, term=1) for i in range(3)]
    store.close()
    assert all(p.done() and p.exception() is None for p in pending)
    with pytest.raises(snapshots.ClosedError):
        store.save({}, index=9, term=1)
    with pytest.raises(snapshots.ClosedError):
        store.latest_verified()
    store.close()  # idempotent
    with snapshots.SnapshotStore(tmp_path / "snap") as reopened:
        assert [i.index for i in reopened.list()] == [0, 1, 2]


def test_one_writer_per_directory(open_store, tmp_path):
    first = open_store()
    first.save({}, index=1, term=1)
    second = open_store()
    assert [i.index for i in second.list()] == [1]  # reading needs no lock
    with pytest.raises(snapshots.LockedError):
        second.save({}, index=2, term=1)
    first.close()
    assert second.save({}, index=2, term=1).index == 2


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_staging_is_fenced_against_later_in_place_updates(open_store):
    store = open_store(chunk_size=1 << 20)
    state = {f"w{i}": torch.randn(1 << 20, device="cuda") for i in range(8)}
    expected = {k: v.cpu() for k, v in state.items()}
    pending = store.save_async(state, index=1, term=1)
    for v in state.values():  # enqueued right after, on the current stream
        v.mul_(3).add_(1)
    info = pending.result()
    assert_same(store.load(info), expected)
    back = store.load(info, map_location="cuda")
    assert all(t.is_cuda for t in back.values())
    store.load_into(info, state)
    assert_same({k: v.cpu() for k, v in state.items()}, expected)


def test_a_blocking_save_runs_on_its_caller_only_when_nothing_is_queued(open_store, tmp_path):
    """Saves commit one at a time in submission order: a blocking save behind a queued
    save_async waits for it on the commit thread; with nothing queued it commits on the
    caller's thread (no hand-off)."""
    import os
    import threading

    reached, release = threading.Event(), threading.Event()
    committed: list[tuple[str, list[str]]] = []
    root = tmp_path / "ordered"

    def failpoint(name):
        if name == "snapshot.before_manifest_fsync" and not release.is_set():
            reached.set()
            assert release.wait(60)
        if name == "snapshot.after_manifest_rename":
            committed.append((threading.current_thread().name, sorted(os.listdir(root / "manifests"))))

    store = open_store(root, failpoint=failpoint)
    pending = store.save_async({"a": torch.zeros(10)}, index=1, term=1)
    assert reached.wait(60)
    behind = threading.Thread(target=store.save, args=({"a": torch.ones(10)},), kwargs={"index": 2, "term": 1})
    behind.start()
    release.set()
    behind.join(60)
    assert pending.result(timeout=60).index == 1 and not behind.is_alive()
    store.save({"a": torch.full((10,), 2.0)}, index=3, term=1)
    assert [names for _, names in committed] == [["1-1"], ["1-1", "2-1"], ["1-1", "2-1", "3-1"]]
    # The middle save commits on the commit thread if it found the first queued (or on
    # its own thread if it came after): either way after it. The last found nothing queued.
    assert committed[0][0].startswith("snapshots-commit") and committed[2][0] == "MainThread"
