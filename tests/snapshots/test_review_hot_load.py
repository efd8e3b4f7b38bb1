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
from snapshots.chunkfile import CODEC_RAW, HEADER, MAGIC, VERSION, ChunkCodec
from snapshots.packfile import ENTRY, TRAILER, read_index

from .conftest import assert_same
from .test_hot_load import record_shifts

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


def test_a_prune_rewriting_a_pack_through_short_reads_copies_every_chunk(open_store, tmp_path, monkeypatch):
    # Before: the rewrite took one pread per chunk, so a short one left the pack "cut short"
    # and not rewritten (space never reclaimed), a good pack reported as damage.
    store = open_store(tmp_path / "s", packs=True, compression="none", chunk_size=4096, keep_last=1)
    frozen = _bytes(3000, 9)

    def state(seed: int) -> dict:  # the first pack is mostly moving bytes: prune rewrites it
        return {"frozen": frozen, "moving": _bytes(40000, seed)}

    for i in (1, 2, 3):
        store.save(state(i), index=i, term=1)
    packs_before = set(os.listdir(tmp_path / "s" / "packs"))
    _short_reads(monkeypatch)
    report = store.prune()
    assert report.deleted == ("1-1", "2-1") and not report.damage, report.damage
    assert set(os.listdir(tmp_path / "s" / "packs")) - packs_before  # a rewritten pack
    monkeypatch.undo()
    reader = open_store(tmp_path / "s")
    assert reader.verify("3-1").ok
    assert_same(reader.load("3-1"), state(3))


# -- the digest is always that of the bytes left in the destination -----------------------

def _raw_chunk(raw: bytes) -> bytes:
    return HEADER.pack(MAGIC, VERSION, CODEC_RAW, 1, 0, len(raw)) + raw


@pytest.mark.parametrize("lead", [0, 1, 16, 31, 33, 63])
def test_the_digest_read_returns_is_of_the_bytes_it_leaves_whatever_changes_in_the_file(tmp_path, monkeypatch,
                                                                                       lead):
    """A byte of the payload changes just before the k-th read system call (the first
    read with the header, each piece, a piece's retry, the in-place tail): whatever the
    destination ends up holding, the digest returned is that of exactly those bytes, so
    the caller's comparison with the chunk id can never pass over bytes other than the
    ones loaded."""
    monkeypatch.setattr(chunkfile, "HASH_PIECE", 4096)
    monkeypatch.setattr(chunkfile, "SHIFT_MIN", 0)
    n = 3 * 4096 + 40
    raw = os.urandom(n)
    path = tmp_path / "p"
    real = os.preadv
    calls = []
    for k in range(8):
        for at in (0, 4095, 4096 + 7, n - 20, n - 1):  # first piece, a boundary, the tail
            path.write_bytes(b"z" * 7 + _raw_chunk(raw))  # a pack-like range at an odd offset
            calls.clear()

            def preadv(fd, buffers, offset, *flags):
                if len(calls) == k:
                    with open(path, "r+b") as f:  # another writer, between two reads
                        f.seek(7 + HEADER.size + at)
                        f.write(bytes([raw[at] ^ 0x41]))
                calls.append(offset)
                return real(fd, buffers, offset, *flags)

            monkeypatch.setattr(os, "preadv", preadv)
            room = bytearray(b"\xee" * (n + 128))
            out = memoryview(room)[lead:lead + n]
            digest = ChunkCodec().read(str(path), n, HEADER.size + n, out, offset=7)
            monkeypatch.setattr(os, "preadv", real)
            assert digest == xxhash.xxh3_128_hexdigest(bytes(out)), (k, at)
            assert (digest == xxhash.xxh3_128_hexdigest(raw)) == (bytes(out) == raw)
            assert room[:lead] == b"\xee" * lead and room[lead + n:] == b"\xee" * (len(room) - lead - n)
    assert len(calls) >= 4  # the read took several calls: each k changed the file before one of them


# -- the real thresholds, into views of one storage ------------------------------------

SIZES = {
    # SHIFT_MIN: the smallest chunk read shifted; chunk_size // 16 <= 65535, so each is a chunk of its own
    "threshold": ([chunkfile.SHIFT_MIN - 1, chunkfile.SHIFT_MIN, chunkfile.SHIFT_MIN + 1], MIB - 64),
    # HASH_PIECE: one piece, and one byte either side (a 1-byte last piece)
    "piece": ([chunkfile.HASH_PIECE - 1, chunkfile.HASH_PIECE, chunkfile.HASH_PIECE + 1], 4 * MIB),
}


@pytest.mark.parametrize("packs", [True, False], ids=["packs", "loose"])
@pytest.mark.parametrize("sizes", sorted(SIZES))
def test_chunks_at_the_real_thresholds_load_into_views_of_one_storage_and_nothing_beside_them(
        open_store, tmp_path, monkeypatch, packs, sizes):
    lengths, chunk_size = SIZES[sizes]
    saved = {f"t{k}": _bytes(n, 10 + k) for k, n in enumerate(lengths)}
    store = open_store(tmp_path / "s", packs=packs, compression="none", chunk_size=chunk_size, workers=4)
    info = store.save(saved, index=1, term=1)
    shifts = record_shifts(monkeypatch)
    for reader in (store, open_store(tmp_path / "s", workers=4)):  # known good; checked in fresh memory first
        for lead in (1, 17, 40):
            # Each live tensor a view at an odd offset of one storage, with a few bytes
            # between them that belong to nobody: decoded side by side, in place.
            base = torch.full((sum(lengths) + 64 * len(lengths) + lead,), 0xEE, dtype=torch.uint8)
            live, at = {}, lead
            for k, n in enumerate(lengths):
                live[f"t{k}"] = base[at:at + n]
                at += n + 3 + k
            reader.load_into(info, live)
            assert_same(live, saved)
            owned = torch.zeros(len(base), dtype=torch.bool)
            for t in live.values():
                owned[t.storage_offset():t.storage_offset() + t.numel()] = True
            assert bool((base[~owned] == 0xEE).all()), "a read wrote outside its destination"
    assert any(shifts), "some chunk should have been read shifted"
    assert reader.verify(info).ok


# -- remembered copies ---------------------------------------------------------------------

def _packs(root) -> list[str]:
    return sorted(os.listdir(os.path.join(root, "packs")))


def test_two_stores_in_one_process_never_read_each_others_remembered_copies(open_store, tmp_path):
    saved = _state(3)
    a = open_store(tmp_path / "a", compression="none", chunk_size=2 * MIB)
    b = open_store(tmp_path / "b", compression="none", chunk_size=2 * MIB)
    info = a.save(saved, index=1, term=1)
    b.save(saved, index=1, term=1)  # the same chunk ids, in a pack of b's own
    for store in (a, b):
        live = _state(4)
        store.load_into(info, live)
        store.load_into(info, live)  # from the remembered copies
    for name in _packs(b.path):
        os.unlink(os.path.join(b.path, "packs", name))
    live = _state(5)
    with pytest.raises(snapshots.CorruptSnapshotError, match="missing"):
        b.load_into(info.manifest_id, live)  # a's copies hold the same bytes, but they are not b's
    live = _state(5)
    a.load_into(info, live)
    assert_same(live, saved)


def test_a_remembered_pack_replaced_by_a_hostile_file_of_its_name_and_size_is_damage_naming_it(open_store,
                                                                                                tmp_path):
    saved = _state(6)
    store = open_store(tmp_path / "s", compression="none", chunk_size=2 * MIB)
    info = store.save(saved, index=1, term=1)
    live = _state(7)
    store.load_into(info, live)  # every chunk's pack copy remembered
    [name] = _packs(store.path)
    path = os.path.join(store.path, "packs", name)
    hostile = path + ".hostile"
    with open(hostile, "wb") as f:
        f.write(os.urandom(os.path.getsize(path)))
    os.rename(hostile, path)  # a new file under the old name: nothing cached about it is true
    for reader in (store, open_store(tmp_path / "s")):  # remembered, and a fresh process's view
        with pytest.raises(snapshots.CorruptSnapshotError) as raised:
            reader.load_into(info, _state(8))
        # Remembered: read where the cached index says, refused by its header or hash "(in
        # pack P at offset O)"; fresh: the index does not read, "missing; damaged pack(s): P".
        assert raised.value.chunk and name in raised.value.reason, raised.value
        report = reader.verify(info)
        assert not report.ok and all(d.chunk for d in report.damage)
        assert all(name in d.reason for d in report.damage), [d.reason for d in report.damage]


def test_concurrent_reloads_from_several_threads_each_get_the_snapshots_bytes(open_store, tmp_path):
    saved = _state(9)
    store = open_store(tmp_path / "s", compression="none", chunk_size=256 << 10, workers=4)
    info = store.save(saved, index=1, term=1)
    start = threading.Barrier(4, timeout=60)
    failed = []

    def reload(seed: int) -> None:
        try:
            start.wait()
            for k in range(3):
                live = _state(100 + 10 * seed + k)
                store.load_into(info, live)
                assert_same(live, saved)
        except BaseException as e:  # noqa: BLE001 - reported below
            failed.append(e)

    threads = [threading.Thread(target=reload, args=(s,)) for s in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not failed, failed[0]


# -- pack gaps -------------------------------------------------------------------------

def _edit_pack(path: str, edit_rows=None, fill_gaps: int | None = None) -> None:
    """Rewrite a pack's index (rows [raw_id, offset, stored_len, raw_len]) with a valid
    digest, and/or fill every gap between chunk files with `fill_gaps`."""
    with open(path, "rb") as f:
        data = bytearray(f.read())
    count, start, _ = TRAILER.unpack_from(data, len(data) - TRAILER.size)
    rows = [list(ENTRY.unpack_from(data, start + k * ENTRY.size)) for k in range(count)]
    if fill_gaps is not None:
        at = 16
        for _, offset, stored_len, _ in sorted(rows, key=lambda r: r[1]):
            data[at:offset] = bytes([fill_gaps]) * (offset - at)
            at = offset + stored_len
    if edit_rows is not None:
        edit_rows(rows)
    index = b"".join(ENTRY.pack(*r) for r in rows)
    with open(path, "wb") as f:
        f.write(bytes(data[:start]) + index + TRAILER.pack(len(rows), start, xxhash.xxh3_128_digest(index)))


def _gap_state() -> dict:
    # Odd sizes: every chunk file after the first follows a gap of padding.
    g = torch.Generator().manual_seed(4)
    return {"a": _bytes(70001, 1), "b": _bytes(3001, 2), "c": torch.randn(777, generator=g), "d": _bytes(65599, 3)}


def test_gaps_that_are_not_zeros_are_never_read(open_store, tmp_path):
    saved = _gap_state()
    store = open_store(tmp_path / "s", compression="none", chunk_size=2 * MIB)
    info = store.save(saved, index=1, term=1)
    [name] = _packs(store.path)
    entries = sorted(read_index(os.path.join(store.path, "packs", name)).values(), key=lambda e: e.offset)
    assert any(e.offset > p.offset + p.stored_len for p, e in zip(entries, entries[1:])), "no gap to fill"
    _edit_pack(os.path.join(store.path, "packs", name), fill_gaps=0xA5)
    reader = open_store(tmp_path / "s")
    assert reader.verify(info).ok
    live = _gap_state()
    for v in live.values():
        v.zero_()
    reader.load_into(info, live)
    reader.load_into(info, live)  # in place, remembered copies
    assert_same(live, saved)


def test_an_index_entry_moved_into_the_padding_before_its_chunk_is_damage_naming_that_chunk(open_store, tmp_path):
    saved = _gap_state()
    store = open_store(tmp_path / "s", compression="none", chunk_size=2 * MIB)
    info = store.save(saved, index=1, term=1)
    [name] = _packs(store.path)
    path = os.path.join(store.path, "packs", name)
    entries = sorted(read_index(path).values(), key=lambda e: e.offset)
    victim = next(e for p, e in zip(entries, entries[1:]) if e.offset > p.offset + p.stored_len)

    def into_padding(rows):
        for r in rows:
            if r[0].hex() == victim.id:
                r[1] -= 1  # still after the previous chunk file: the index reads
    _edit_pack(path, edit_rows=into_padding)
    reader = open_store(tmp_path / "s")
    assert victim.id in read_index(path)
    report = reader.verify(info)
    assert [d.chunk for d in report.damage] == [victim.id]
    assert name in report.damage[0].reason
    untouched = _gap_state()
    live = _gap_state()
    with pytest.raises(snapshots.CorruptSnapshotError) as raised:
        reader.load_into(info, live)
    assert raised.value.chunk == victim.id
    assert_same(live, untouched)  # nothing known good here: checked in fresh memory, live untouched


# -- a file cut short between its size check and its reads ----------------------------------

@pytest.mark.parametrize("lead", [0, 1, 16, 31])
def test_a_raw_chunk_cut_at_any_boundary_of_a_shifted_read_is_damage_and_writes_nothing_beside(tmp_path,
                                                                                               monkeypatch, lead):
    """The pack is cut after its size was taken (a stale size, as OpenPacks keeps one for a
    whole load): inside the header, at its end, inside the first piece, at the end of a
    shifted piece and one byte after, inside a later piece, at the start of the in-place
    tail and inside it. Each is ChunkDecodeError, and no byte outside the destination is
    written. (test_hot_load.py cuts an unshifted chunk in a later piece only.)"""
    monkeypatch.setattr(chunkfile, "HASH_PIECE", 4096)
    monkeypatch.setattr(chunkfile, "SHIFT_MIN", 0)
    n = 3 * 4096 + 40
    data = _raw_chunk(os.urandom(n))
    room = bytearray(n + 128)
    out = memoryview(room)[lead:lead + n]
    shift = chunkfile._shift(out, 7 + HEADER.size)
    h = HEADER.size
    cuts = {5, h, h + 100, h + 4096 - shift, h + 4096 - shift + 1, h + 2 * 4096 + 9, h + n - shift,
            h + n - shift + 1, h + n - 1}
    for cut in sorted(cuts):
        path = tmp_path / "p"
        path.write_bytes(b"z" * 7 + data)
        codec = ChunkCodec()
        fd, size = codec.open_file(str(path), None)
        try:
            os.truncate(path, 7 + cut)
            room[:] = b"\xee" * len(room)
            with pytest.raises(chunkfile.ChunkDecodeError, match="ended early|shorter than its header"):
                codec.read_open(fd, size, n, len(data), out, 7)
        finally:
            os.close(fd)
        assert room[:lead] == b"\xee" * lead and room[lead + n:] == b"\xee" * (len(room) - lead - n), cut


@pytest.mark.parametrize("make", ["strided", "short", "long"])
def test_a_destination_that_is_not_raw_len_contiguous_bytes_is_refused_before_a_byte_is_written(tmp_path, make):
    """ChunkCodec.read's contract: `out` is raw_len bytes. A strided uint8 view was wrapped
    as nbytes contiguous bytes from its first element, so the read wrote the bytes between
    its elements (another tensor's); a wrong length read or hashed another range."""
    n = 70001
    (tmp_path / "c").write_bytes(_raw_chunk(os.urandom(n)))
    base = torch.full((2 * n + 2,), 0xEE, dtype=torch.uint8)
    out = {"strided": base[::2][:n], "short": base[:n - 1], "long": base[:n + 1]}[make]
    with pytest.raises(ValueError, match="contiguous|bytes"):
        ChunkCodec().read(str(tmp_path / "c"), n, HEADER.size + n, out)
    assert bool((base == 0xEE).all())
