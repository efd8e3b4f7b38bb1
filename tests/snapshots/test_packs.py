"""Packs (FORMAT.md, "Pack file", "Reclaiming space"): one file per save, stores mixing
packed and loose chunks, prune reclaiming and rewriting packs, hostile packs, and the
transfer API over packed chunks."""

from __future__ import annotations

import os
import struct

import pytest
import torch
import xxhash
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import snapshots
from snapshots.packfile import ENTRY, MAX_PACK_CHUNKS, TRAILER, read_index

from .conftest import assert_same


def _state(seed: int, frozen: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    return {
        "frozen": torch.arange(3000 + frozen, dtype=torch.float32),  # the same in every save
        "model": {"w": torch.randn(5000, generator=g), "b": torch.randn(7, generator=g).to(torch.bfloat16)},
        "step": seed,
    }


def _packs(root) -> list[str]:
    packs = os.path.join(root, "packs")
    return sorted(os.listdir(packs)) if os.path.isdir(packs) else []


def _pack_path(root, name) -> str:
    return os.path.join(root, "packs", name)


def test_a_save_writes_one_pack_and_creates_no_fanout_directories(open_store):
    store = open_store(packs=True, chunk_size=4096)
    info = store.save(_state(1), index=1, term=1)
    assert {"manifests", "packs"} <= set(os.listdir(store.path)) and "chunks" not in os.listdir(store.path)
    [pack] = _packs(store.path)
    entries = read_index(_pack_path(store.path, pack))
    manifest_size = os.path.getsize(os.path.join(store.path, "manifests", "1-1"))
    assert len(entries) == info.chunks
    assert info.bytes_written == sum(e.stored_len for e in entries.values()) + manifest_size
    assert_same(store.load(info), _state(1))
    # Unchanged: no new pack. Changed: one new pack with only the changed chunks.
    store.save(_state(1), index=2, term=1)
    assert len(_packs(store.path)) == 1
    store.save(_state(2), index=3, term=1)
    [new] = set(_packs(store.path)) - {pack}
    newest = set(read_index(_pack_path(store.path, new)))
    assert newest and not newest & set(entries)  # the frozen chunks are not written again


def test_a_loose_store_creates_only_the_chunk_directories_it_uses(open_store):
    store = open_store(chunk_size=1 << 20, packs=False)
    store.save({"w": torch.ones(10)}, index=1, term=1)
    assert len(os.listdir(os.path.join(store.path, "chunks"))) == 1


def test_stores_mix_loose_and_packed_chunks_and_prune_reclaims_both(open_store, tmp_path):
    root = tmp_path / "mixed"
    loose = open_store(root, packs=False, chunk_size=4096, keep_last=1)
    loose.save(_state(1), index=1, term=1)
    loose.close()
    packed = open_store(root, packs=True, chunk_size=4096, keep_last=1)
    info = packed.save(_state(2), index=2, term=1)
    [pack] = _packs(root)
    frozen = {c for c in read_index(_pack_path(root, pack))}
    loose_ids = {n for d in os.listdir(root / "chunks") for n in os.listdir(root / "chunks" / d)}
    assert loose_ids and not frozen & loose_ids  # the frozen tensor's chunks were reused from the loose files
    assert_same(packed.load("1-1"), _state(1))
    assert_same(packed.load(info), _state(2))
    report = packed.prune()
    assert report.deleted == ("1-1",) and report.chunks_deleted > 0
    assert_same(packed.load(info), _state(2))
    assert packed.verify(info).ok


def test_prune_deletes_a_dead_pack_and_rewrites_a_mostly_dead_one(open_store, tmp_path):
    root = tmp_path / "s"
    store = open_store(root, packs=True, chunk_size=4096, keep_last=1)
    reader = open_store(root)  # another store object: its cached pack indexes go stale
    store.save(_state(1), index=1, term=1)
    [first] = _packs(root)
    assert_same(reader.load("1-1"), _state(1))
    store.save(_state(2), index=2, term=1)
    store.save(_state(3), index=3, term=1)
    report = store.prune()
    assert report.deleted == ("1-1", "2-1")
    packs = _packs(root)
    # The first pack held the frozen chunks (still used: rewritten, as they are a small
    # part of it), the second only what 2-1 used (deleted), the third is 3-1's own.
    assert first not in packs and len(packs) == 2
    assert report.chunks_deleted > 0 and report.bytes_freed > 0
    assert_same(reader.load("3-1"), _state(3))  # stale cache: it lists packs again
    assert store.verify("3-1").ok
    assert store.prune().chunks_deleted == 0  # nothing more to reclaim


def test_a_new_save_heals_a_damaged_packed_chunk(open_store):
    store = open_store(packs=True, chunk_size=4096)
    store.save(_state(1), index=1, term=1)
    [pack] = _packs(store.path)
    entry = max(read_index(_pack_path(store.path, pack)).values(), key=lambda e: e.stored_len)
    with open(_pack_path(store.path, pack), "r+b") as f:
        f.seek(entry.offset + entry.stored_len - 1)
        byte = f.read(1)
        f.seek(entry.offset + entry.stored_len - 1)
        f.write(bytes([byte[0] ^ 0x55]))
    fresh = open_store(store.path, packs=True, chunk_size=4096)  # trusts nothing it did not check
    store.close()
    report = fresh.verify("1-1")
    assert not report.ok and report.damage[0].chunk == entry.id and pack in report.damage[0].reason
    info = fresh.save(_state(1), index=2, term=1)  # rewrites the damaged chunk into a new pack
    assert len(_packs(fresh.path)) == 2
    assert fresh.verify(info).ok and fresh.verify("1-1").ok  # a good copy exists now: both load
    assert_same(fresh.load("1-1"), _state(1))


# --- hostile packs --------------------------------------------------------------------------


@pytest.mark.parametrize("writeback", [None, "inline", "background"])
def test_a_pack_writer_hints_writeback_without_changing_a_byte_and_leaves_no_thread(tmp_path, writeback):
    import threading

    from snapshots.packfile import BACKGROUND_AFTER, PackWriter

    chunk = bytes(range(256)) * 4096  # 1 MiB
    n = BACKGROUND_AFTER // len(chunk) + 3  # past the background threshold
    writer = PackWriter(str(tmp_path), writeback=writeback)
    ids = [f"{k:032x}" for k in range(n)]
    for cid in ids:
        writer.append(cid, len(chunk), [chunk])
    entries = writer.seal()
    assert not [t for t in threading.enumerate() if t.name.startswith("snapshots-writeback")]
    writer.sync()
    index = read_index(str(tmp_path / writer.name))
    assert sorted(index) == ids and [e.offset for e in entries] == sorted(e.offset for e in index.values())
    with open(tmp_path / writer.name, "rb") as f:
        for e in entries:
            f.seek(e.offset)
            assert f.read(e.stored_len) == chunk
    with pytest.raises(ValueError, match="writeback must be"):
        PackWriter(str(tmp_path), writeback="later")


def _tear(kind: str, path: str) -> None:
    """What a power loss can leave of a pack named before its fsync (FORMAT.md, "Commit
    protocol"): nothing of it, its chunks but not its end, or its index over lost chunks."""
    size = os.path.getsize(path)
    with open(path, "r+b") as f:
        if kind == "empty":
            f.truncate(0)
        elif kind == "no_trailer":
            f.truncate(size - 4096 if size > 8192 else size // 2)
        else:  # "lost_chunks": the index and trailer landed, the chunk bytes did not
            index_at = TRAILER.unpack(os.pread(f.fileno(), TRAILER.size, size - TRAILER.size))[1]
            f.seek(16)
            f.write(bytes(index_at - 16))


@pytest.mark.parametrize("kind", ["empty", "no_trailer", "lost_chunks"])
@pytest.mark.parametrize("resave", [False, True])
def test_a_pack_torn_by_a_crash_before_its_fsync_is_never_trusted_and_prune_deletes_it(open_store, kind, resave):
    store = open_store(packs=True, chunk_size=4096)
    store.save(_state(1), index=1, term=1)
    first = set(_packs(store.path))
    store.save(_state(2), index=2, term=1)
    [pack] = set(_packs(store.path)) - first
    store.close()
    # The crash image: the pack's name survived, the manifest's rename did not.
    os.unlink(os.path.join(store.path, "manifests", "2-1"))
    _tear(kind, _pack_path(store.path, pack))
    reader = open_store(store.path)  # the process after the restart: nothing cached, nothing trusted
    assert [i.manifest_id for i in reader.list()] == ["1-1"]
    assert reader.verify("1-1").ok
    assert_same(reader.load_latest()[1], _state(1))
    if resave:  # recovery saves the same state again: every torn copy is written anew
        reader.save(_state(2), index=2, term=1)
        assert reader.verify("2-1").ok
        assert_same(open_store(store.path).load("2-1"), _state(2))
    report = reader.prune()
    if not resave:
        assert pack not in _packs(store.path), report
        if kind != "lost_chunks":  # its index did not read: reported as it goes
            assert any(pack in d and "deleted" in d for d in report.damage), report.damage
    # else the same chunks at the same offsets: the new pack took the torn one's name
    reader.close()
    fresh = open_store(store.path)
    for info in fresh.list():
        assert fresh.verify(info).ok, fresh.verify(info)
        assert_same(fresh.load(info), _state(info.index))
    assert not fresh.prune().damage


def _rewrite_index(path: str, edit) -> None:
    """Apply `edit(list of [raw_id, offset, stored_len, raw_len])` to a pack's index and
    write it back with a valid digest (a hostile writer, not a bit flip)."""
    with open(path, "rb") as f:
        data = bytearray(f.read())
    count, start, _ = TRAILER.unpack_from(data, len(data) - TRAILER.size)
    rows = [list(ENTRY.unpack_from(data, start + k * ENTRY.size)) for k in range(count)]
    edit(rows)
    index = b"".join(ENTRY.pack(*r) for r in rows)
    with open(path, "wb") as f:
        f.write(bytes(data[:start]) + index + TRAILER.pack(len(rows), start, xxhash.xxh3_128_digest(index)))


def _hostile(kind: str, path: str) -> None:
    if kind == "truncated":
        os.truncate(path, os.path.getsize(path) - 5)
    elif kind == "offset_past_end":
        _rewrite_index(path, lambda rows: rows[-1].__setitem__(1, 1 << 40))
    elif kind == "overlapping":
        _rewrite_index(path, lambda rows: rows[-1].__setitem__(1, rows[0][1]) if len(rows) > 1 else None)
    elif kind == "huge_length":
        _rewrite_index(path, lambda rows: rows[0].__setitem__(2, (1 << 62)))
    elif kind == "huge_count":
        with open(path, "r+b") as f:
            f.seek(-TRAILER.size, os.SEEK_END)
            f.write(struct.pack("<Q", MAX_PACK_CHUNKS + 1))
    elif kind == "checksum":
        with open(path, "r+b") as f:
            f.seek(-TRAILER.size - 3, os.SEEK_END)
            byte = f.read(1)
            f.seek(-TRAILER.size - 3, os.SEEK_END)
            f.write(bytes([byte[0] ^ 1]))
    elif kind == "symlink":
        os.rename(path, path + ".real")
        os.symlink(path + ".real", path)
    elif kind == "fifo":
        os.unlink(path)
        os.mkfifo(path)


@pytest.mark.parametrize("kind", ["truncated", "offset_past_end", "overlapping", "huge_length", "huge_count",
                                  "checksum", "symlink", "fifo"])
def test_a_hostile_pack_is_damage_naming_the_pack_and_the_older_snapshot_loads(open_store, kind):
    store = open_store(packs=True, chunk_size=4096)
    store.save(_state(1), index=1, term=1)
    first = set(_packs(store.path))
    store.save(_state(2), index=2, term=1)
    [pack] = set(_packs(store.path)) - first
    _hostile(kind, _pack_path(store.path, pack))
    reader = open_store(store.path)  # a fresh process's view: nothing cached, nothing trusted
    report = reader.verify("2-1")
    assert not report.ok
    assert any(pack in d.reason for d in report.damage), report  # names the pack ...
    assert all(d.chunk for d in report.damage)  # ... and each chunk that cannot be read
    info, state, skipped = reader.load_latest()
    assert info.manifest_id == "1-1" and [r.manifest_id for r in skipped] == ["2-1"]
    assert_same(state, _state(1))
    report = store.prune()  # prune reports the pack and never deletes through it
    assert "2-1" in report.kept
    assert any(pack in d for d in report.damage), report.damage


# --- transfer over packed chunks ---------------------------------------------------------------


def test_transfer_reads_packed_chunks_and_imports_or_links_them(open_store, tmp_path):
    src = open_store(tmp_path / "src", packs=True, chunk_size=4096)
    src.save(_state(1), index=1, term=1)
    files = snapshots.StoreFiles(src.path)
    mf = files.read_manifest("1-1")
    copied = snapshots.StoreImport(tmp_path / "copied")
    for ref in mf.chunks:
        copied.add_chunk(ref.id, files.read_chunk(ref.id, ref.raw_len, ref.stored_len), ref.raw_len, ref.stored_len)
    copied.commit("1-1", mf.data)
    linked = snapshots.StoreImport(tmp_path / "linked")
    assert all(files.link_into(ref.id, ref.raw_len, ref.stored_len, linked) for ref in mf.chunks)
    linked.commit("1-1", mf.data)
    [pack] = _packs(src.path)
    assert os.path.samefile(_pack_path(src.path, pack), _pack_path(tmp_path / "linked", pack))
    for root in ("copied", "linked"):
        with snapshots.SnapshotStore(tmp_path / root) as store:
            assert store.verify("1-1").ok
            assert_same(store.load("1-1"), _state(1))
    with pytest.raises(FileNotFoundError):
        files.read_chunk("0" * 32, 10, 26)


# --- property: any sequence of saves, prunes and reopenings, in either form ---------------------

_steps = st.lists(st.tuples(st.sampled_from(["save", "save_same", "prune", "reopen_packs", "reopen_loose"]),
                            st.integers(0, 3)), min_size=1, max_size=12)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(steps=_steps)
def test_property_every_kept_snapshot_loads_bit_exactly(tmp_path_factory, steps):
    root = tmp_path_factory.mktemp("prop")
    store = snapshots.SnapshotStore(root, packs=True, chunk_size=2048, keep_last=2, workers=2)
    saved: dict[str, dict] = {}
    index, seed = 0, 0
    try:
        for op, arg in steps:
            if op in ("save", "save_same"):
                index += 1
                seed = seed if op == "save_same" else seed + 1 + arg
                store.save(_state(seed, frozen=arg), index=index, term=1)
                saved[f"{index}-1"] = _state(seed, frozen=arg)
            elif op == "prune":
                store.prune()
            else:
                store.close()
                store = snapshots.SnapshotStore(root, packs=op == "reopen_packs", chunk_size=2048, keep_last=2, workers=2)
            listed = [i.manifest_id for i in store.list()]
            assert listed and set(listed) <= set(saved) or not saved
            for name in listed:
                assert store.verify(name).ok
                assert_same(store.load(name), saved[name])
    finally:
        store.close()


@pytest.mark.parametrize("compression", ["none", "zstd"])
def test_each_chunk_payload_in_a_pack_starts_on_a_64_byte_boundary_after_zero_padding(open_store, compression):
    """FORMAT.md, "Pack file", padding: the writer aligns every chunk file's payload (a hot
    load then copies out of the page cache aligned) and zero-fills the gaps; the chunks
    load back bit for bit, and a pack written back to back (as earlier writers did) reads
    the same."""
    from snapshots.packfile import HEADER_SIZE, PAYLOAD_ALIGN

    store = open_store(compression=compression)
    state = {"a": torch.arange(4097, dtype=torch.uint8), "b": torch.randn(3001), "c": torch.arange(5, dtype=torch.int16)}
    store.save(state, index=1, term=1)
    (name,) = _packs(store.path)
    path = _pack_path(store.path, name)
    entries = sorted(read_index(path).values(), key=lambda e: e.offset)
    assert len(entries) >= 3
    with open(path, "rb") as f:
        data = f.read()
    at = HEADER_SIZE
    gaps = 0
    for e in entries:
        assert (e.offset + 16) % PAYLOAD_ALIGN == 0, (e.offset, e.stored_len)
        assert data[at:e.offset] == bytes(e.offset - at)
        gaps += e.offset > at
        at = e.offset + e.stored_len
    assert gaps  # odd sizes: at least one chunk needed padding
    out = {"a": torch.zeros(4097, dtype=torch.uint8), "b": torch.zeros(3001), "c": torch.zeros(5, dtype=torch.int16)}
    store.load_into(store.list()[-1], out)
    assert_same(out, state)

    # The same chunks back to back, as a pack of an earlier writer: the reader takes the index's word
    body, index, end = bytearray(data[:HEADER_SIZE]), [], HEADER_SIZE
    for e in entries:
        index.append(ENTRY.pack(bytes.fromhex(e.id), end, e.stored_len, e.raw_len))
        body += data[e.offset:e.offset + e.stored_len]
        end += e.stored_len
    index_bytes = b"".join(index)
    packed = bytes(body) + index_bytes + TRAILER.pack(len(entries), end, xxhash.xxh3_128_digest(index_bytes))
    store.close()
    os.remove(path)
    with open(_pack_path(store.path, xxhash.xxh3_128_hexdigest(index_bytes) + ".pack"), "wb") as f:
        f.write(packed)
    reader = open_store(store.path, compression=compression)
    out = {"a": torch.zeros(4097, dtype=torch.uint8), "b": torch.zeros(3001), "c": torch.zeros(5, dtype=torch.int16)}
    reader.load_into(reader.list()[-1], out)
    assert_same(out, state)
    assert reader.verify(reader.list()[-1]).ok
