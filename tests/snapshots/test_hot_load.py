"""The hot reload path (issue 22): raw chunks read and hashed piece by piece
(chunkfile.HASH_PIECE), the copy of each chunk that last read good tried first
(lastcopy.LastGoodCopies). Bytes are exact whatever a chunk's size is against the piece
size; a byte flipped anywhere in a large chunk is still damage naming that chunk, in a
pack or loose, with the live state left as load_into documents; a remembered copy that
is damaged or gone falls back to the other copies and to a fresh listing of the packs."""

from __future__ import annotations

import os

import pytest
import torch
import xxhash

import snapshots
from snapshots import chunkfile
from snapshots.chunkfile import HEADER, MAGIC, VERSION, CODEC_RAW, ChunkCodec, ChunkDecodeError, chunk_id
from snapshots.lastcopy import LastGoodCopies
from snapshots.locating import Copy

from tests.chunkcopies import all_regions, region, regions

from .conftest import assert_same

MIB = 1 << 20


def _bytes(n: int, seed: int) -> torch.Tensor:
    return torch.randint(0, 256, (n,), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))


def _sized_state(piece: int, chunk_size: int, seed: int) -> dict:
    """Tensors whose chunks end just before, at and just after a piece boundary, one over
    several chunks whose last is not a whole piece, a 1-byte tensor (alone in its shared
    chunk: a chunk of 1 byte), an empty tensor (no chunk: the format has no 0-byte chunk)
    and an odd-length bf16 tensor."""
    return {
        "below": _bytes(piece - 1, seed), "at": _bytes(piece, seed + 1), "above": _bytes(piece + 1, seed + 2),
        "three_and_a_bit": _bytes(3 * piece + 5, seed + 3),
        "several_chunks": _bytes(2 * chunk_size + piece + 7, seed + 4),
        "one_byte": _bytes(1, seed + 5), "empty": torch.zeros(0, dtype=torch.float32),
        "bf16": torch.randn(piece // 2 + 3, generator=torch.Generator().manual_seed(seed + 6)).to(torch.bfloat16),
    }


@pytest.mark.parametrize("packs", [True, False], ids=["packs", "loose"])
@pytest.mark.parametrize("piece", [64, 4096, chunkfile.HASH_PIECE], ids=["64B", "4KiB", "default"])
def test_chunks_of_every_size_around_the_piece_load_bit_identically(open_store, monkeypatch, packs, piece):
    monkeypatch.setattr(chunkfile, "HASH_PIECE", piece)
    monkeypatch.setattr(chunkfile, "SHIFT_MIN", 0)  # every chunk of 32 bytes or more may be read shifted
    chunk_size = 4 * piece  # every tensor above but the tiny ones is >= chunk_size / 16: its own chunks
    store = open_store(packs=packs, compression="none", chunk_size=chunk_size)
    saved = _sized_state(piece, chunk_size, seed=1)
    info = store.save(saved, index=1, term=1)
    raw_lens = sorted(r.size - HEADER.size for r in all_regions(store.path))
    assert raw_lens[0] == 1, "the 1-byte tensor should be a chunk of its own"
    assert {piece - 1, piece, piece + 1, 3 * piece + 5, piece + 7} <= set(raw_lens)

    assert_same(store.load(info), saved)  # into fresh memory
    live = _sized_state(piece, chunk_size, seed=2)
    store.load_into(info, live)  # known good: straight into the live tensors
    assert_same(live, saved)
    reader = open_store(path=store.path)  # nothing known: checked in fresh memory, then in place
    for seed in (3, 4):
        live = _sized_state(piece, chunk_size, seed=seed)
        reader.load_into(info, live)
        assert_same(live, saved)
    assert reader.verify(info).ok


def record_shifts(monkeypatch) -> list[int]:
    """From here on, the shift of every chunkfile._read_hashing call (the call still runs)."""
    shifts: list[int] = []
    real = chunkfile._read_hashing

    def spy(fd, view, offset, done, shift=0):
        shifts.append(shift)
        return real(fd, view, offset, done, shift)

    monkeypatch.setattr(chunkfile, "_read_hashing", spy)
    return shifts


def _big_state(seed: int) -> dict:
    """One 3.5 MiB chunk (four 1 MiB pieces, the last one short) and a small tensor."""
    return {"w": _bytes(3 * MIB + MIB // 2, seed), "bias": _bytes(100, seed + 1), "step": seed}


def _chunk_of(store, key: str) -> str:
    """The id of the only chunk holding tensor `key` (chunks are named by their bytes)."""
    value = store.load(store.list()[-1])[key]
    return chunk_id(value.reshape(-1).view(torch.uint8))


@pytest.mark.parametrize("packs", [True, False], ids=["packs", "loose"])
@pytest.mark.parametrize("where", ["first", "middle", "last"])
def test_a_byte_flipped_in_a_large_chunk_is_damage_naming_it_and_live_is_left_as_documented(open_store, packs,
                                                                                            where):
    store = open_store(packs=packs, compression="none", chunk_size=4 * MIB)
    saved = _big_state(1)
    info = store.save(saved, index=1, term=1)
    cid = _chunk_of(store, "w")
    victim = region(store.path, cid)
    n = victim.size - HEADER.size
    at = {"first": 0, "middle": n // 2, "last": n - 1}[where]  # pieces 1, 2 and 4 of 4
    victim.flip(HEADER.size + at, 0x10)

    # This store wrote the chunk: it decodes straight into the live tensor, is refused
    # by its hash, and leaves what load_into documents: the damaged chunk's bytes (and
    # those of chunks decoded before it) in place, plain values untouched.
    live = _big_state(2)
    with pytest.raises(snapshots.CorruptSnapshotError) as hot:
        store.load_into(info, live)
    assert hot.value.chunk == cid and "content hash mismatch" in hot.value.reason
    assert live["step"] == 2
    # No longer trusted: the next load decodes into fresh memory and touches nothing.
    live, untouched = _big_state(2), _big_state(2)
    with pytest.raises(snapshots.CorruptSnapshotError) as again:
        store.load_into(info, live)
    assert again.value.chunk == cid
    assert_same(live, untouched)

    # A reader that never checked it refuses it the same way, live untouched.
    reader = open_store(path=store.path)
    with pytest.raises(snapshots.CorruptSnapshotError) as cold:
        reader.load_into(info, live)
    assert cold.value.chunk == cid
    assert_same(live, untouched)
    report = reader.verify(info)
    assert [d.chunk for d in report.damage] == [cid]


def test_a_damaged_remembered_copy_falls_back_to_a_good_one_and_is_forgotten(open_store):
    store = open_store(packs=True, compression="none", chunk_size=4 * MIB)
    saved = _big_state(1)
    info = store.save(saved, index=1, term=1)
    cid = _chunk_of(store, "w")
    live = _big_state(2)
    store.load_into(info, live)  # remembers the packed copy
    [packed] = regions(store.path, cid)
    loose = os.path.join(store.path, "chunks", cid[:2], cid)
    os.makedirs(os.path.dirname(loose), exist_ok=True)
    with open(loose, "wb") as f:  # a packed chunk file is a loose chunk file, byte for byte
        f.write(packed.read())
    packed.flip(HEADER.size + MIB + 3)

    live = _big_state(3)
    store.load_into(info, live)  # the remembered copy fails; the loose one passes
    assert_same(live, saved)
    live = _big_state(4)
    store.load_into(info, live)
    assert_same(live, saved)
    assert store.verify(info).ok  # a chunk with one good copy is not damage


def test_reloads_after_a_prune_rewrote_the_packs_they_remember(open_store, tmp_path):
    root = tmp_path / "s"
    store = open_store(root, packs=True, compression="none", chunk_size=4096, keep_last=1)
    reader = open_store(root)  # another store object: its remembered copies and pack indexes go stale
    frozen = _bytes(3000, 9)

    def state(seed: int) -> dict:
        # The first pack is mostly 1-1's moving bytes: prune rewrites it, moving the
        # frozen chunks 3-1 still uses (FORMAT.md, "Reclaiming space").
        return {"frozen": frozen, "moving": _bytes(40000, seed)}

    for i in (1, 2, 3):
        store.save(state(i), index=i, term=1)
    for who in (store, reader):
        live = state(7)
        who.load_into("3-1", live)
        who.load_into("3-1", live)  # the second reload reads the remembered copies
        assert_same(live, state(3))
    frozen_pack = region(root, _chunk_of(store, "frozen")).pack
    assert store.prune().deleted == ("1-1", "2-1")
    assert region(root, _chunk_of(store, "frozen")).pack != frozen_pack, "the test needs the pack rewritten"
    for who in (store, reader):
        live = state(8)
        who.load_into("3-1", live)
        assert_same(live, state(3))


# -- ChunkCodec.read_open: the digest it returns, and a file cut short in a later piece --

def _raw_chunk(raw: bytes) -> bytes:
    return HEADER.pack(MAGIC, VERSION, CODEC_RAW, 1, 0, len(raw)) + raw


@pytest.mark.parametrize("compression", ["none", "zstd"])
def test_read_returns_the_digest_of_what_it_decoded(tmp_path, monkeypatch, compression):
    monkeypatch.setattr(chunkfile, "HASH_PIECE", 4096)
    raw = torch.zeros(3 * 4096 + 11, dtype=torch.uint8)
    raw[::7] = _bytes(len(raw[::7]), 5)  # compressible, so zstd writes a stream chunk
    codec = ChunkCodec(compression=compression)
    data = b"".join(bytes(part) for part in codec.encode(raw, 1))
    assert (data[5] == CODEC_RAW) == (compression == "none")
    (tmp_path / "c").write_bytes(data)
    out = torch.empty(len(raw), dtype=torch.uint8)
    assert codec.read(str(tmp_path / "c"), len(raw), len(data), out) == chunk_id(raw)
    assert torch.equal(out, raw)
    view = memoryview(bytearray(len(raw)))  # a memoryview is as good a destination
    assert codec.read(str(tmp_path / "c"), len(raw), len(data), view) == chunk_id(raw)
    assert bytes(view) == bytes(raw.numpy())


@pytest.mark.parametrize("piece", [4096, 5000])
@pytest.mark.parametrize("size", [32, 33, 4095, 4096, 3 * 4096 + 17])
def test_a_raw_chunk_reads_exactly_at_every_alignment_of_its_destination(tmp_path, monkeypatch, piece, size):
    # The destination's offset against the payload's alignment in the file decides the
    # shift (0 to 31 bytes, chunkfile.SHIFT_ALIGN): every one reads the same bytes.
    monkeypatch.setattr(chunkfile, "HASH_PIECE", piece)
    monkeypatch.setattr(chunkfile, "SHIFT_MIN", 0)
    raw = os.urandom(size)
    data = _raw_chunk(raw)
    (tmp_path / "p").write_bytes(b"x" * 7 + data + b"y" * 40)  # a pack-like range at an odd offset
    shifts = record_shifts(monkeypatch)
    room = bytearray(size + 64 + 64)
    for lead in range(64):
        room[:] = b"\xee" * len(room)
        out = memoryview(room)[lead:lead + size]
        assert ChunkCodec().read(str(tmp_path / "p"), size, len(data), out, offset=7) == xxhash.xxh3_128_hexdigest(raw)
        assert bytes(out) == raw
        assert room[:lead] == b"\xee" * lead and room[lead + size:] == b"\xee" * (len(room) - lead - size), \
            "a read wrote outside its destination"
    assert set(shifts) == set(range(32)), "every shift should have been taken"


def test_loose_chunks_are_read_shifted_into_aligned_live_tensors(open_store, monkeypatch):
    store = open_store(packs=False, compression="none", chunk_size=4 * MIB)
    saved = _big_state(1)
    info = store.save(saved, index=1, term=1)
    shifts = record_shifts(monkeypatch)
    live = _big_state(2)
    store.load_into(info, live)
    assert_same(live, saved)
    # The 3.5 MiB tensor starts on a 64-byte boundary; its payload is 16 bytes into its file.
    assert 16 in shifts


@pytest.mark.parametrize("cut", [HEADER.size + 4096 + 1, HEADER.size + 3 * 4096])
def test_a_raw_chunk_cut_short_in_a_later_piece_is_damage(tmp_path, monkeypatch, cut):
    monkeypatch.setattr(chunkfile, "HASH_PIECE", 4096)
    data = _raw_chunk(os.urandom(4 * 4096))
    (tmp_path / "c").write_bytes(data[:cut])
    codec = ChunkCodec()
    fd, _ = codec.open_file(str(tmp_path / "c"), len(data))
    try:
        with pytest.raises(ChunkDecodeError, match="ended early"):
            # The size the opener saw was the full one: the file shrank after it.
            codec.read_open(fd, len(data), 4 * 4096, len(data), torch.empty(4 * 4096, dtype=torch.uint8))
    finally:
        os.close(fd)


def test_last_good_copies_are_bounded_and_forgotten():
    copies = LastGoodCopies(keep=2)
    a, b = Copy("/s/packs/p.pack", "/s/packs", "p.pack", 16, 100), Copy("/s/chunks/bb/bb", "/s/chunks/bb")
    copies.put("aa", a)
    copies.put("bb", b)
    assert copies.get("aa") == a and copies.get("bb") == b
    copies.put("aa", b)  # replacing one kept entry does not clear the table
    assert copies.get("aa") == b and copies.get("bb") == b
    copies.put("cc", a)  # a third one: the full table is cleared first
    assert copies.get("aa") is None and copies.get("cc") == a
    copies.forget("cc")
    assert copies.get("cc") is None
