"""The SnapshotStore contract, written once. Each configuration subclasses StoreContract.

A configuration supplies its factory (`options`: chunk size, workers, level) and its way
of saving (`save`: a blocking save, or save_async then result()); every test here must
hold for all of them. Edge cases first: the empty and the missing store, names that are
not snapshots, bad input, then round trips, order, deduplication, damage, retention and
the lifecycle.
"""

from __future__ import annotations

import os
from collections import OrderedDict
from typing import NamedTuple

import pytest
import torch

import snapshots
from snapshots.manifest import Manifest
from snapshots.packfile import is_pack_name, read_index

from .conftest import assert_same


def _state(seed: int, n: int = 3) -> dict:
    g = torch.Generator().manual_seed(seed)
    return OrderedDict(
        (f"layer{i}", {"w": torch.randn(700 + 97 * i, generator=g), "b": torch.arange(i + 5, dtype=torch.int32)})
        for i in range(n)
    ) | {"step": seed, "opt": [torch.randn(33, generator=g).to(torch.bfloat16), (0.9, "adam")]}


class StoreContract:
    options: dict = {}

    def save(self, store: snapshots.SnapshotStore, state, **kw) -> snapshots.SnapshotInfo:
        return store.save(state, **kw)

    @pytest.fixture
    def make_store(self, open_store):
        """make_store(**over) -> a store in one directory with this configuration's options."""
        return lambda **over: open_store(**{**self.options, **over})

    @pytest.fixture
    def store(self, make_store):
        return make_store()

    # --- nothing there ---------------------------------------------------------------

    def test_missing_store_is_empty(self, store):
        assert store.list() == [] and store.manifests() == []
        assert store.latest_verified() == (None, [])
        assert store.load_latest() == (None, None, [])
        assert not os.path.exists(store.path)  # reading creates nothing

    def test_names_that_are_not_there(self, store):
        self.save(store, {"w": torch.ones(3)}, index=1, term=1)
        with pytest.raises(snapshots.SnapshotNotFoundError):
            store.load("5-1")
        with pytest.raises(snapshots.SnapshotNotFoundError):
            store.load("../1-1")
        missing, bogus = store.verify("5-1"), store.verify("../1-1")
        assert not missing.ok and missing.damage == (snapshots.Damage(None, "manifest is missing"),)
        assert not bogus.ok and bogus.damage == (snapshots.Damage(None, "not a manifest name"),)

    def test_bad_input_raises_before_anything_is_written(self, store):
        for index, term in ((-1, 1), (2**63, 1), (True, 1), (1, 1.0)):
            with pytest.raises(ValueError):
                self.save(store, {}, index=index, term=term)
        with pytest.raises(TypeError, match=r"\['a'\]\[1\]"):
            self.save(store, {"a": [torch.ones(1), object()]}, index=1, term=1)
        with pytest.raises(TypeError, match="meta"):
            self.save(store, {}, index=1, term=1, meta={"x": object()})
        assert store.list() == []

    # --- saving and reading back -------------------------------------------------------

    def test_round_trip_is_bit_exact_and_reports_sizes(self, store):
        state = _state(1)
        info = self.save(store, state, index=7, term=2, meta={"by": "contract"})
        assert (info.index, info.term, info.manifest_id, info.meta) == (7, 2, "7-2", {"by": "contract"})
        assert info.tensors == 7  # two per layer, and the bf16 one
        assert info.bytes_logical == sum(t.numel() * t.element_size() for t in _tensors(state))
        manifest_size = os.path.getsize(os.path.join(store.path, "manifests", "7-2"))
        chunk_files = _chunk_files(store.path)
        assert info.chunks == len(chunk_files)
        assert info.bytes_written == info.bytes_stored == sum(chunk_files.values()) + manifest_size
        assert store.list() == [info]
        assert_same(store.load(info), state)
        assert store.verify(info).ok and store.verify(info).chunks_checked == info.chunks

    def test_load_into_restores_in_place(self, store):
        info = self.save(store, _state(1), index=1, term=1)
        live = _state(2)
        w = live["layer0"]["w"]
        assert store.load_into(info, live) == info
        assert live["layer0"]["w"] is w
        assert_same(live, _state(1))

    def test_order_is_by_index_then_term_whatever_the_save_order(self, store):
        for index, term in ((5, 1), (2, 3), (5, 0), (10, 1)):
            self.save(store, _state(index), index=index, term=term)
        order = [(i.index, i.term) for i in store.list()]
        assert order == [(2, 3), (5, 0), (5, 1), (10, 1)]
        assert [e.key for e in store.manifests()] == order
        assert store.latest_verified()[0].manifest_id == "10-1"
        info, state, skipped = store.load_latest()
        assert (info.manifest_id, skipped) == ("10-1", [])
        assert_same(state, _state(10))

    def test_resaving_an_index_and_term_replaces_it(self, store):
        self.save(store, _state(1), index=3, term=1)
        self.save(store, _state(2), index=3, term=1)
        assert [i.manifest_id for i in store.list()] == ["3-1"]
        assert_same(store.load("3-1"), _state(2))

    def test_unchanged_state_writes_only_its_manifest(self, store):
        state = _state(1)
        first = self.save(store, state, index=1, term=1)
        files = _chunk_files(store.path)
        second = self.save(store, state, index=2, term=1)
        assert second.bytes_written == os.path.getsize(os.path.join(store.path, "manifests", "2-1"))
        assert _chunk_files(store.path) == files
        assert second.chunks == first.chunks

    def test_later_changes_to_the_state_do_not_reach_a_saved_snapshot(self, store):
        state = _state(1)
        info = self.save(store, state, index=1, term=1)
        state["layer0"]["w"].add_(1)
        assert_same(store.load(info), _state(1))

    # --- part of a snapshot (only=, strict=False) ------------------------------------------

    def test_load_only_a_component_needs_only_its_chunks(self, store):
        info = self.save(store, _state(1), index=1, term=1)
        _damage(_chunk_only(store, "1-1", "layer2", besides="layer0"))
        with pytest.raises(snapshots.CorruptSnapshotError):
            store.load(info)  # the damage is real ...
        part = store.load(info, only=("layer0",))  # ... and outside the component asked for
        assert list(part) == ["layer0"] and type(part) is OrderedDict
        assert_same(part["layer0"], _state(1)["layer0"])
        live = _state(3)
        untouched = {k: live[k] for k in ("layer1", "layer2", "opt")}
        store.load_into(info, live, only="layer0")
        assert_same(live["layer0"], _state(1)["layer0"])
        assert all(live[k] is v for k, v in untouched.items()) and live["step"] == 3

    def test_load_only_dotted_prefixes_and_values(self, store):
        info = self.save(store, _state(1), index=1, term=1)
        part = store.load(info, only=["layer1.w", "step", "opt"])
        expected = _state(1)
        assert list(part) == ["layer1", "step", "opt"] and list(part["layer1"]) == ["w"]
        assert_same(part["layer1"]["w"], expected["layer1"]["w"])
        assert part["step"] == 1
        assert_same(part["opt"], expected["opt"])

    def test_load_only_names_what_the_snapshot_lacks(self, store):
        info = self.save(store, _state(1), index=1, term=1)
        with pytest.raises(snapshots.ComponentNotFoundError, match="'layer9'.*layer0, layer1") as e:
            store.load(info, only=("layer0", "layer9"))
        assert e.value.selector == "layer9"
        with pytest.raises(snapshots.ComponentNotFoundError, match="'layer0.x'"):
            store.load_into(info, _state(1), only="layer0.x")
        with pytest.raises(ValueError, match="inside a list"):
            store.load(info, only="opt.0")
        with pytest.raises(ValueError):
            store.load(info, only=())

    def test_load_into_non_strict_restores_the_components_both_have(self, store):
        info = self.save(store, _state(1), index=1, term=1)
        other = {"w": torch.zeros(5)}
        live = {"layer1": _state(2)["layer1"], "extra": other}
        w = live["layer1"]["w"]
        with pytest.raises(snapshots.StateMismatchError, match="missing from the live state"):
            store.load_into(info, live)  # strict: the snapshot has components live lacks
        assert store.load_into(info, live, strict=False) == info
        assert live["layer1"]["w"] is w and live["extra"] is other and torch.equal(other["w"], torch.zeros(5))
        assert_same(live["layer1"], _state(1)["layer1"])

    def test_load_into_non_strict_refuses_a_layout_mismatch_inside_a_component(self, store):
        info = self.save(store, _state(1), index=1, term=1)
        before = _state(2)["layer0"]
        live = {"layer0": {"w": before["w"].clone(), "b": before["b"].to(torch.int64)}}
        with pytest.raises(snapshots.StateMismatchError) as e:
            store.load_into(info, live, strict=False)
        assert e.value.key == "['layer0']['b']" and "int32" in str(e.value)
        assert torch.equal(live["layer0"]["w"], before["w"])  # checked before anything is copied
        with pytest.raises(snapshots.StateMismatchError, match="no component in common"):
            store.load_into(info, {"other": torch.zeros(1)}, strict=False)

    # --- damage ----------------------------------------------------------------------------

    def test_damaged_newest_is_skipped_and_reported(self, store):
        self.save(store, _state(1), index=1, term=1)
        self.save(store, _state(2), index=2, term=1)
        own = _own_chunks(store, "2-1", "1-1")
        _damage(own)
        report = store.verify("2-1")
        assert not report.ok and [d.chunk for d in report.damage] == [own.cid]
        info, skipped = store.latest_verified()
        assert info.manifest_id == "1-1" and [r.manifest_id for r in skipped] == ["2-1"]
        info, state, skipped = store.load_latest()
        assert info.manifest_id == "1-1" and [r.manifest_id for r in skipped] == ["2-1"]
        assert_same(state, _state(1))
        with pytest.raises(snapshots.CorruptSnapshotError) as e:
            store.load("2-1")
        assert (e.value.manifest, e.value.chunk) == ("2-1", own.cid)

    def test_unreadable_manifest_is_listed_with_its_reason_only_by_manifests(self, store):
        self.save(store, _state(1), index=1, term=1)
        self.save(store, _state(2), index=2, term=1)
        with open(os.path.join(store.path, "manifests", "2-1"), "r+b") as f:
            f.seek(40)
            f.write(b"\x00\x00\x00\x00")
        assert [i.manifest_id for i in store.list()] == ["1-1"]
        entries = store.manifests()
        assert [(e.name, e.info is None) for e in entries] == [("1-1", False), ("2-1", True)]
        assert "checksum" in entries[1].unreadable
        assert store.load_latest()[0].manifest_id == "1-1"

    def test_accept_refuses_before_loading(self, store):
        for index in (1, 2, 3):
            self.save(store, _state(index), index=index, term=1)
        info, state, skipped = store.load_latest(accept=lambda i: "too new" if i.index > 1 else None)
        assert info.index == 1
        assert [(r.manifest_id, str(r.damage[0])) for r in skipped] == [("3-1", "manifest: too new"),
                                                                        ("2-1", "manifest: too new")]

    # --- retention and lifecycle -------------------------------------------------------------

    def test_prune_keeps_the_newest_and_sweeps_unreferenced_chunks(self, make_store):
        store = make_store(keep_last=2)
        for index in range(1, 6):
            self.save(store, _state(index), index=index, term=1)
        report = store.prune()
        assert report.deleted == ("1-1", "2-1", "3-1") and report.kept == ("4-1", "5-1")
        assert report.chunks_deleted > 0 and report.skipped == () and report.damage == ()
        referenced = sum(i.chunks for i in store.list())
        assert len(_chunk_files(store.path)) <= referenced
        for info in store.list():
            assert store.verify(info).ok
            assert_same(store.load(info), _state(info.index))

    def test_one_writer_per_directory(self, make_store):
        first, second = make_store(), make_store()
        self.save(first, _state(1), index=1, term=1)
        assert [i.index for i in second.list()] == [1]  # reading needs no lock
        with pytest.raises(snapshots.LockedError):
            self.save(second, _state(2), index=2, term=1)
        first.close()
        assert self.save(second, _state(2), index=2, term=1).index == 2

    def test_closed_store_refuses_all_but_listing(self, store):
        info = self.save(store, _state(1), index=1, term=1)
        store.close()
        store.close()  # idempotent
        for call in (lambda: self.save(store, {}, index=2, term=1), lambda: store.load(info),
                     lambda: store.load_into(info, _state(1)), lambda: store.verify(info),
                     store.latest_verified, store.load_latest, store.prune):
            with pytest.raises(snapshots.ClosedError):
                call()
        assert store.list() == [info] and [e.info for e in store.manifests()] == [info]


def _tensors(state):
    if isinstance(state, torch.Tensor):
        yield state
    elif isinstance(state, dict):
        for v in state.values():
            yield from _tensors(v)
    elif isinstance(state, (list, tuple)):
        for v in state:
            yield from _tensors(v)


class Where(NamedTuple):
    """A copy of chunk `cid`: bytes from `offset` of the file at `path` (loose or a pack)."""

    cid: str
    path: str
    offset: int


def _chunk_files(root) -> dict[str, int]:
    """Every copy of a chunk in the store, loose or packed: id -> stored size."""
    return {w.cid: size for w, size in _copies(root)}


def _copies(root) -> list[tuple[Where, int]]:
    out = []
    for directory, _, files in os.walk(os.path.join(root, "chunks")):
        for name in files:
            path = os.path.join(directory, name)
            out.append((Where(name, path, 0), os.path.getsize(path)))
    packs = os.path.join(root, "packs")
    for name in sorted(os.listdir(packs)) if os.path.isdir(packs) else []:
        if is_pack_name(name):
            for cid, e in read_index(os.path.join(packs, name)).items():
                out.append((Where(cid, os.path.join(packs, name), e.offset), e.stored_len))
    return out


def _where(root, cid: str) -> Where:
    return next(w for w, _ in _copies(root) if w.cid == cid)


def _damage(where: Where) -> None:
    """Flip a byte inside the chunk's stream data (past its header)."""
    with open(where.path, "r+b") as f:
        f.seek(where.offset + 20)
        byte = f.read(1)
        f.seek(where.offset + 20)
        f.write(bytes([byte[0] ^ 0xFF]))


def _chunk_only(store, name: str, component: str, besides: str) -> Where:
    """A chunk that `component`'s tensors use and `besides`'s do not."""
    from snapshots import tree

    with open(os.path.join(store.path, "manifests", name), "rb") as f:
        m = Manifest.decode(name, f.read())
    used: dict[str, set[str]] = {}
    for path, i in tree.tensor_paths(m.tree):
        used.setdefault(path[0], set()).update(m.chunks[c].id for c, _, _ in m.tensors[i].segments)
    return _where(store.path, sorted(used[component] - used[besides])[0])


def _own_chunks(store, name: str, other: str) -> Where:
    """A chunk that snapshot `name` uses and `other` does not."""

    def ids(n):
        with open(os.path.join(store.path, "manifests", n), "rb") as f:
            return [c.id for c in Manifest.decode(n, f.read()).chunks]

    theirs = set(ids(other))
    return _where(store.path, next(c for c in ids(name) if c not in theirs))
