"""Damage to a committed snapshot is detected, reported, never loaded, and latest_verified()
falls back to the previous good snapshot.

Conformance style: every `Damage` below is run through the same contract
(`test_damage_is_detected_and_latest_falls_back`); adding a kind of damage is adding a
case to DAMAGES. Every scene runs in both chunk forms (FORMAT.md, "Finding a chunk"):
"loose" (a store written with ``packs=False``: the damaged chunk is its own file) and
"packed" (the default: the chunk is a byte range of the newer save's pack, which holds
only the newer snapshot's chunks). A chunk damage acts on the chunk's region: a flip
lands inside the chunk's range; a truncation cuts the file at that point of the range
(for a pack: the chunk and everything after it, the index included); delete, append,
symlink and FIFO act on the file that holds it (the loose file, or the whole pack).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Callable

import pytest
import torch
import zstandard

import snapshots
from snapshots.chunkfile import HEADER, MAGIC, STREAM, VERSION, CODEC_STREAMS, CODEC_ZSTD
from snapshots.manifest import ChunkRef, Manifest
from snapshots.packfile import PackWriter, read_index

from tests.chunkcopies import Region, region

from .conftest import assert_same


@dataclass
class Scene:
    store: snapshots.SnapshotStore
    root: str
    good: snapshots.SnapshotInfo  # older, must survive
    bad: snapshots.SnapshotInfo  # newer, gets damaged
    good_state: dict
    bad_chunk: str  # id of a chunk only `bad` uses
    form: str  # "loose" or "packed"

    @property
    def region(self) -> Region:
        """Where `bad_chunk` is: its loose file, or its range in the newer pack."""
        return region(self.root, self.bad_chunk)

    @property
    def bad_manifest(self) -> str:
        return os.path.join(self.root, "manifests", self.bad.manifest_id)


@pytest.fixture(params=["loose", "packed"])
def scene(open_store, tmp_path, request) -> Scene:
    store = open_store(chunk_size=4096, packs=request.param == "packed")
    g = torch.Generator().manual_seed(0)
    state = {"w": torch.randn(4096, generator=g).to(torch.bfloat16), "step": 1}
    good = store.save(state, index=10, term=1)
    newer = {"w": state["w"] * 2, "step": 2}
    bad = store.save(newer, index=20, term=1)
    root = str(tmp_path / "snap")
    good_ids = {c.id for c in _manifest(root, good.manifest_id).chunks}
    bad_ids = [c.id for c in _manifest(root, bad.manifest_id).chunks if c.id not in good_ids]
    return Scene(store, root, good, bad, state, bad_ids[0], request.param)


def _manifest(root: str, name: str) -> Manifest:
    """The manifest `name` as decoded from its file (the format's one reading rule)."""
    with open(os.path.join(root, "manifests", name), "rb") as f:
        return Manifest.decode(name, f.read())


def _truncate(at: Callable[[int], int]):
    def damage(where: Region) -> None:
        os.truncate(where.path, where.offset + at(where.size))

    return damage


def _flip(at: Callable[[int], int], bit: int = 0):
    def damage(where: Region) -> None:
        where.flip(at(where.size), 1 << bit)

    return damage


def _whole_file(act: Callable[[str], None]):
    """A damage to the file that holds the chunk: the loose file, or the whole pack."""
    return lambda where: act(where.path)


def _symlink_to_a_copy(path: str) -> None:
    os.rename(path, path + ".real")  # a valid copy: a link is refused even to good bytes
    os.symlink(path + ".real", path)


def _fifo(path: str) -> None:
    os.unlink(path)
    os.mkfifo(path)


@dataclass
class Damage:
    target: str  # "chunk" (applied to the chunk's Region) or "manifest" (to its file's path)
    apply: Callable
    id: str


def _manifest_damage(damage: Callable[[Region], None]) -> Callable[[str], None]:
    return lambda path: damage(Region("", path, 0, os.path.getsize(path), None))


DAMAGES = [
    *(Damage("chunk", _truncate(at), f"truncate-chunk-{name}") for name, at in [
        ("to-0", lambda s: 0), ("to-1", lambda s: 1), ("in-header", lambda s: 9), ("after-header", lambda s: 16),
        ("in-table", lambda s: 20), ("half", lambda s: s // 2), ("last-byte", lambda s: s - 1)]),
    *(Damage("chunk", _flip(at, bit), f"flip-chunk-{name}") for name, at, bit in [
        ("magic", lambda s: 0, 0), ("codec", lambda s: 5, 1), ("width", lambda s: 6, 0), ("raw-len", lambda s: 8, 3),
        ("table", lambda s: 16, 0), ("payload-start", lambda s: 40, 7), ("middle", lambda s: s // 2, 4),
        ("last", lambda s: s - 1, 0)]),
    Damage("chunk", _whole_file(os.unlink), "delete-chunk"),
    Damage("chunk", _whole_file(lambda p: open(p, "ab").write(b"\0")), "append-to-chunk"),
    Damage("chunk", _whole_file(_symlink_to_a_copy), "symlink-chunk"),
    Damage("chunk", _whole_file(_fifo), "fifo-chunk"),
    *(Damage("manifest", _manifest_damage(_flip(at, bit)), f"flip-manifest-{name}") for name, at, bit in [
        ("magic", lambda s: 0, 0), ("version", lambda s: 8, 1), ("digest", lambda s: 20, 2), ("body-start", lambda s: 32, 0),
        ("middle", lambda s: s // 2, 5), ("last", lambda s: s - 1, 6)]),
    *(Damage("manifest", _manifest_damage(_truncate(at)), f"truncate-manifest-{name}") for name, at in [
        ("to-0", lambda s: 0), ("header", lambda s: 20), ("body", lambda s: s - 10)]),
]


@pytest.mark.parametrize("damage", DAMAGES, ids=[d.id for d in DAMAGES])
def test_damage_is_detected_and_latest_falls_back(scene, open_store, damage):
    damage.apply(scene.region if damage.target == "chunk" else scene.bad_manifest)

    # A fresh store (as after a restart) must see it; so must the one that wrote it,
    # except a byte appended to a pack: the writer keeps the index it wrote (a named pack
    # is immutable, FORMAT.md "Finding a chunk") and every chunk's bytes are still intact.
    stores = [open_store(scene.root), scene.store]
    if damage.id == "append-to-chunk" and scene.form == "packed":
        assert_same(scene.store.load(scene.bad), {"w": scene.good_state["w"] * 2, "step": 2})
        stores.pop()
    for store in stores:
        report = store.verify(scene.bad)
        assert not report.ok and report.damage
        if damage.target == "chunk":
            assert report.damage[0].chunk == scene.bad_chunk
        else:
            assert report.damage[0].chunk is None
        with pytest.raises(snapshots.CorruptSnapshotError) as e:
            store.load(scene.bad)
        assert e.value.manifest == scene.bad.manifest_id
        assert store.verify(scene.good).ok

        info, skipped = store.latest_verified()
        assert info.manifest_id == scene.good.manifest_id
        assert [r.manifest_id for r in skipped] == [scene.bad.manifest_id]
        assert store.latest_verified()[0].manifest_id == scene.good.manifest_id

        info, state, skipped = store.load_latest()
        assert info.manifest_id == scene.good.manifest_id
        assert [r.manifest_id for r in skipped] == [scene.bad.manifest_id]
        assert_same(state, scene.good_state)

        live = {"w": torch.zeros(4096, dtype=torch.bfloat16), "step": 0}
        with pytest.raises(snapshots.CorruptSnapshotError):
            store.load_into(scene.bad, live)
        assert live["step"] == 0 and not live["w"].any()  # untouched


def test_prune_never_deletes_the_fallback_while_the_newest_is_damaged(scene):
    _flip(lambda s: s // 2)(scene.region)
    scene.store.keep_last = 1
    report = scene.store.prune()
    assert report.deleted == ()
    assert [r.manifest_id for r in report.skipped] == [scene.bad.manifest_id]
    assert scene.store.latest_verified()[0].manifest_id == scene.good.manifest_id
    assert_same(scene.store.load(scene.good), scene.good_state)


def test_a_new_save_heals_a_damaged_shared_chunk(scene, open_store):
    _flip(lambda s: s // 2)(scene.region)
    scene.store.close()
    store = open_store(scene.root, packs=scene.form == "packed")  # a restarted writer does not trust chunks it has not checked
    state = store.load(scene.good)
    state["w"] = state["w"] * 2
    state["step"] = 2
    healed = store.save(state, index=30, term=1)
    assert store.verify(healed).ok
    assert store.latest_verified()[0].manifest_id == healed.manifest_id


def test_leftover_temp_manifest_is_ignored_and_pruned(scene):
    tmp = os.path.join(scene.root, "manifests", ".tmp.30-1.999.abcd")
    with open(scene.bad_manifest, "rb") as f:
        data = f.read()
    with open(tmp, "wb") as f:
        f.write(data[: len(data) // 2])  # a save killed mid-manifest
    assert [i.manifest_id for i in scene.store.list()] == [scene.good.manifest_id, scene.bad.manifest_id]
    assert scene.store.latest_verified()[0].manifest_id == scene.bad.manifest_id
    report = scene.store.prune()
    assert report.temp_files_deleted == 1 and not os.path.exists(tmp)


def test_leftover_temp_chunk_is_ignored_and_pruned(scene):
    # A save killed mid-write leaves a temp file beside the name it would have had.
    where = scene.region
    tmp = os.path.join(os.path.dirname(where.path), ".tmp." + ("pack.1.ab" if where.pack else f"{scene.bad_chunk}.1.ab"))
    with open(tmp, "wb") as f:
        f.write(b"partial")
    assert scene.store.verify(scene.bad).ok
    assert scene.store.prune().temp_files_deleted == 1 and not os.path.exists(tmp)


def _write_manifest(scene: Scene, **changes) -> str:
    """Rewrite the bad snapshot's manifest with `changes`, with a valid checksum."""
    m = _manifest(scene.root, scene.bad.manifest_id)
    fields = {f: getattr(m, f) for f in m.__dataclass_fields__}
    fields.update(changes)
    data = Manifest(**fields).encode()
    with open(scene.bad_manifest, "wb") as f:
        f.write(data)
    return scene.bad.manifest_id


@pytest.mark.parametrize(
    "chunk_id",
    ["../../../../etc/passwd", "0" * 31, "0" * 33, "G" * 32, "AB" * 16, "/" + "0" * 31, "00/" + "0" * 29],
)
def test_hostile_chunk_ids_are_rejected_before_any_path_is_built(scene, chunk_id):
    m = _manifest(scene.root, scene.bad.manifest_id)
    chunks = (ChunkRef(chunk_id, m.chunks[0].raw_len, m.chunks[0].stored_len),) + m.chunks[1:]
    _write_manifest(scene, chunks=chunks)
    report = scene.store.verify(scene.bad)
    assert not report.ok and "chunk id" in report.damage[0].reason
    with pytest.raises(snapshots.CorruptSnapshotError):
        scene.store.load(scene.bad)
    assert scene.store.latest_verified()[0].manifest_id == scene.good.manifest_id


@pytest.mark.parametrize("change", ["segment-outside-chunk", "wrong-dtype", "tensor-ref", "name-mismatch"])
def test_schema_violations_with_a_valid_checksum_are_corruption(scene, change):
    m = _manifest(scene.root, scene.bad.manifest_id)
    if change == "segment-outside-chunk":
        t = m.tensors[0]
        c, off, n = t.segments[0]
        _write_manifest(scene, tensors=(type(t)(t.dtype, t.shape, ((c, off + 1, n),) + t.segments[1:]),) + m.tensors[1:])
    elif change == "wrong-dtype":
        t = m.tensors[0]
        _write_manifest(scene, tensors=(type(t)("object", t.shape, t.segments),) + m.tensors[1:])
    elif change == "tensor-ref":
        _write_manifest(scene, tree=["d", [["w", ["x", 5]], ["step", ["v", 2]]]])
    else:
        _write_manifest(scene, index=21)
    assert not scene.store.verify(scene.bad).ok
    assert scene.store.latest_verified()[0].manifest_id == scene.good.manifest_id


def _replace_chunk(scene: Scene, payload_frame: bytes, n: int) -> None:
    """Replace the bad-only chunk with a one-stream zstd chunk (a loose file rewritten, or
    a pack rewritten with a valid index around it) and fix the manifest's stored size, so
    only the frame itself is wrong."""
    data = HEADER.pack(MAGIC, VERSION, CODEC_STREAMS, 1, 0, n) + STREAM.pack(CODEC_ZSTD, len(payload_frame)) + payload_frame
    cid, where = scene.bad_chunk, scene.region
    if where.pack is None:
        with open(where.path, "wb") as f:
            f.write(data)
    else:
        writer = PackWriter(os.path.dirname(where.path))
        for other in read_index(where.path).values():  # the pack's other chunks stay as they are
            if other.id != cid:
                writer.append(other.id, other.raw_len, [region(scene.root, other.id).read()])
        writer.append(cid, n, [data])
        writer.finish()
        os.unlink(where.path)
    m = _manifest(scene.root, scene.bad.manifest_id)
    _write_manifest(scene, chunks=tuple(ChunkRef(c.id, c.raw_len, len(data)) if c.id == cid else c for c in m.chunks))


@pytest.mark.parametrize("declares_size", [True, False])
def test_a_chunk_never_decompresses_past_its_declared_size(scene, open_store, declares_size):
    cid = scene.bad_chunk
    n = next(c.raw_len for c in _manifest(scene.root, scene.bad.manifest_id).chunks if c.id == cid)
    bomb = zstandard.ZstdCompressor(level=1, write_content_size=declares_size).compress(b"\0" * (64 << 20))
    _replace_chunk(scene, bomb, n)
    reader = open_store(scene.root)  # a fresh process: it finds the bomb, not the writer's cached pack index
    report = reader.verify(scene.bad)
    assert not report.ok
    reason = report.damage[0].reason
    assert ("declares" in reason) if declares_size else ("more" in reason or "declares" in reason), reason
    assert reader.latest_verified()[0].manifest_id == scene.good.manifest_id


def test_missing_and_malformed_ids(store):
    with pytest.raises(snapshots.SnapshotNotFoundError):
        store.load("5-1")
    with pytest.raises(snapshots.SnapshotNotFoundError):
        store.load("../etc")
    assert not store.verify("5-1").ok
    assert not store.verify("../x").ok
    assert store.latest_verified() == (None, []) and store.list() == []
    assert store.load_latest() == (None, None, [])
