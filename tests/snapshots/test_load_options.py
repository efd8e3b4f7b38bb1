"""load_latest(accept=, like=) and load(like=): refusing snapshots before their chunks
are read, and checking the tensor layout against a live state before allocating."""

from __future__ import annotations

import pytest
import torch

import snapshots
from snapshots import StateMismatchError

from .conftest import assert_same


def _state(scale: float = 1.0, dtype=torch.float64):
    return {"model": {"w": torch.arange(12, dtype=dtype).reshape(3, 4) * scale, "b": torch.ones(4, dtype=dtype)},
            "step": int(scale), "hist": [torch.zeros(2, dtype=torch.int64)]}


@pytest.fixture
def three(store):
    infos = [store.save(_state(k), index=k * 10, term=1) for k in (1, 2, 3)]
    return store, infos


def test_accept_skips_refused_snapshots_newest_first_and_reports_them(three):
    store, infos = three
    seen = []

    def accept(info):
        seen.append(info.index)
        return None if info.index == 10 else f"history differs at index {info.index}"

    info, state, skipped = store.load_latest(accept=accept)
    assert seen == [30, 20, 10]
    assert info.index == 10
    assert_same(state, _state(1))
    assert [r.manifest_id for r in skipped] == [infos[2].manifest_id, infos[1].manifest_id]
    assert all(not r.ok for r in skipped)
    assert "history differs at index 30" in str(skipped[0]) and infos[2].manifest_id in str(skipped[0])


def test_accept_is_called_before_any_chunk_is_read(three, monkeypatch):
    store, _ = three
    reads = []
    original = store._reader.read_chunk
    monkeypatch.setattr(store._reader, "read_chunk", lambda *a: (reads.append(a[1].id), original(*a))[1])
    info, state, skipped = store.load_latest(accept=lambda info: "no")
    assert (info, state, len(skipped)) == (None, None, 3)
    assert reads == []


def test_accept_refusing_all_gives_none_with_every_report(three):
    store, infos = three
    info, state, skipped = store.load_latest(accept=lambda i: "nope")
    assert info is None and state is None
    assert [r.manifest_id for r in skipped] == [i.manifest_id for i in reversed(infos)]


def test_existing_positional_callers_still_work(three):
    store, infos = three
    info, state, skipped = store.load_latest("cpu")
    assert info == infos[2] and skipped == []
    assert_same(state, _state(3))


def test_like_with_the_same_layout_loads(three):
    store, _ = three
    live = _state(0)
    info, state, _ = store.load_latest(like=live)
    assert info.index == 30
    assert_same(state, _state(3))
    assert_same(store.load(info, like=live), _state(3))


@pytest.mark.parametrize("change, path, words", [
    (lambda s: s["model"].__setitem__("w", s["model"]["w"].to(torch.bfloat16)), "['model']['w']",
     ["torch.bfloat16", "torch.float64", "(3, 4)"]),
    (lambda s: s["model"].__setitem__("w", torch.zeros(4, 3, dtype=torch.float64)), "['model']['w']",
     ["(4, 3)", "(3, 4)"]),
    (lambda s: s["model"].pop("b"), "['model']['b']", ["live state has none", "(4,)"]),
    (lambda s: s.__setitem__("extra", torch.zeros(1)), "['extra']", ["snapshot has none", "torch.float32"]),
    (lambda s: s["hist"].append(torch.zeros(2, dtype=torch.int64)), "['hist'][1]", ["snapshot has none"]),
])
def test_like_mismatch_names_the_path_and_both_layouts_before_allocating(three, monkeypatch, change, path, words):
    store, infos = three
    live = _state(0)
    change(live)
    monkeypatch.setattr(store._reader, "read_tensors", lambda m: pytest.fail("allocated before the layout check"))
    with pytest.raises(StateMismatchError) as raised:
        store.load_latest(like=live)
    assert raised.value.key == path
    for word in words:
        assert word in str(raised.value), str(raised.value)
    with pytest.raises(StateMismatchError):
        store.load(infos[0], like=live)


def test_like_float64_journal_reopened_with_bf16_is_refused_not_cast(store):
    """Issue 10 item 13: a float64 state reopened with bf16 tensors must not be cast."""
    store.save({"w": torch.randn(8, dtype=torch.float64)}, index=1, term=1)
    with pytest.raises(StateMismatchError, match=r"bfloat16.*float64"):
        store.load_latest(like={"w": torch.zeros(8, dtype=torch.bfloat16)})


def test_like_ignores_plain_values_and_containers_kind(store):
    store.save({"w": torch.ones(2), "lr": 0.1, "t": (torch.zeros(1),)}, index=1, term=1)
    info, state, _ = store.load_latest(like={"w": torch.empty(2), "lr": "anything", "t": [torch.empty(1)], "x": None})
    assert info.index == 1 and state["lr"] == 0.1


def test_like_mismatch_is_not_skipped_as_damage(three):
    store, _ = three
    calls = []
    with pytest.raises(StateMismatchError):
        store.load_latest(accept=lambda i: calls.append(i.index), like={"model": {}})
    assert calls == [30]  # raised at the first accepted snapshot, no fallback


def test_accept_and_like_on_an_empty_store(tmp_path):
    with snapshots.SnapshotStore(tmp_path / "none") as store:
        assert store.load_latest(accept=lambda i: None, like={"w": torch.zeros(1)}) == (None, None, [])


def test_like_not_strict_compares_only_shared_paths(three, monkeypatch):
    """strict=False: paths on one side only pass (a fresh optimizer has no moments yet);
    a shared path of another dtype is still refused before anything is allocated."""
    store, _ = three
    live = _state(0)
    live["model"].pop("b")
    live["extra"] = torch.zeros(1)
    info, state, _ = store.load_latest(like=live, strict=False)
    assert info.index == 30 and "b" in state["model"]
    live["model"]["w"] = live["model"]["w"].to(torch.bfloat16)
    monkeypatch.setattr(store._reader, "read_tensors", lambda m: pytest.fail("allocated before the layout check"))
    with pytest.raises(StateMismatchError, match=r"\['model'\]\['w'\]"):
        store.load_latest(like=live, strict=False)
