"""The load path's moving parts (loading.py, pool.WorkerPool.drain, ChunkCodec.read_open,
decoded.DecodedManifests): every chunk read once on a few threads that stop at the first
error; a raw chunk read in one go and a stream chunk of the same size still decoded; a
wide stream table read in two; packs kept open during a load and closed after it, also
when it fails; a manifest decoded once per exact bytes, and nothing shared with callers."""

from __future__ import annotations

import os
import random
import threading

import pytest
import torch
import xxhash
import zstandard

import snapshots
from snapshots.chunkfile import CODEC_RAW, CODEC_STREAMS, CODEC_ZSTD, HEADER, MAGIC, STREAM, VERSION, ChunkCodec, \
    ChunkDecodeError, chunk_id
from snapshots.packfile import read_index
from snapshots.pool import WorkerPool

from .conftest import assert_same


# -- WorkerPool.drain ------------------------------------------------------------------

@pytest.fixture
def pool():
    p = WorkerPool(4)
    yield p
    p.shutdown()


class _Counted:
    """A context that records the threads it was entered and exited on."""

    def __init__(self, log: list):
        self._log = log

    def __enter__(self):
        self._log.append(("enter", threading.get_ident()))
        return threading.get_ident()

    def __exit__(self, *exc):
        self._log.append(("exit", threading.get_ident()))


def test_drain_runs_every_item_once_on_the_callers_thread_and_the_pools(pool):
    seen, log, lock = [], [], threading.Lock()
    # The first three items meet: three threads hold them, so the caller's is one of them.
    three = threading.Barrier(3, timeout=60)

    def fn(item, ctx):
        assert ctx == threading.get_ident(), "fn got another thread's context"
        if item < 3:
            three.wait()
        with lock:
            seen.append((item, threading.get_ident()))

    pool.drain(range(50), fn, 3, lambda: _Counted(log))
    assert sorted(i for i, _ in seen) == list(range(50))
    threads = {t for _, t in seen}
    assert threading.get_ident() in threads and len(threads) == 3
    entered = [t for what, t in log if what == "enter"]
    assert sorted(entered) == sorted(t for what, t in log if what == "exit") and len(entered) == 3
    assert len(set(entered)) == len(entered), "a thread entered its context twice"


def test_drain_of_nothing_runs_nothing(pool):
    log = []
    pool.drain([], lambda item, ctx: pytest.fail("ran"), 4, lambda: _Counted(log))
    assert log == []


def test_drain_stops_at_the_first_error_and_raises_it_after_every_thread_stopped(pool):
    done, log, lock = [], [], threading.Lock()
    failing_thread = []
    recorded = threading.Event()

    class Context(_Counted):
        def __exit__(self, *exc):
            super().__exit__(*exc)
            if failing_thread == [threading.get_ident()]:
                recorded.set()  # drain recorded the failure before this thread's context exits

    def fn(item, ctx):
        if item == 3:  # the fourth thread's first item: the other three hold items 0-2
            failing_thread.append(threading.get_ident())
            raise KeyError("item 3")
        # Held until the failure is recorded (not merely raised), so none of these three
        # can have taken its next item before drain knew.
        assert recorded.wait(timeout=60), "item 3 never ran"
        with lock:
            done.append(item)

    with pytest.raises(KeyError, match="item 3"):
        pool.drain(range(1000), fn, 4, lambda: Context(log))
    assert sorted(done) == [0, 1, 2], "a thread took another item after the failure"
    assert sorted(t for w, t in log if w == "enter") == sorted(t for w, t in log if w == "exit")


def test_drain_from_a_busy_pools_own_thread_does_not_wait_for_tasks_queued_behind_it():
    single = WorkerPool(1)
    try:
        items = []
        # The pool's only thread calls drain: its extra tasks can never start, and the
        # caller drains the queue alone instead of waiting for them.
        single.submit(lambda: single.drain(range(10), lambda i, _: items.append(i), 4)).result(timeout=60)
        assert sorted(items) == list(range(10))
    finally:
        single.shutdown()


# -- ChunkCodec: one read for a raw chunk, a stream chunk of the same size, wide tables --

def _chunk(codec: int, width: int, n: int, table: list[tuple[int, int]], streams: list[bytes]) -> bytes:
    return (HEADER.pack(MAGIC, VERSION, codec, width, 0, n) + b"".join(STREAM.pack(c, k) for c, k in table)
            + b"".join(streams))


def _read(path, raw_len: int, stored_len: int, offset=None) -> bytes:
    out = torch.empty(raw_len, dtype=torch.uint8)
    ChunkCodec().read(str(path), raw_len, stored_len, out, offset)
    return bytes(out.numpy())


def _interleave(streams: list[bytes]) -> bytes:
    width, size = len(streams), len(streams[0])
    return bytes(streams[i % width][i // width] for i in range(width * size))


def test_a_raw_chunk_reads_whole_and_from_a_pack_range(tmp_path):
    raw = os.urandom(5000)
    data = _chunk(CODEC_RAW, 1, len(raw), [], [raw])
    (tmp_path / "c").write_bytes(data)
    assert _read(tmp_path / "c", len(raw), len(data)) == raw
    (tmp_path / "p").write_bytes(b"x" * 100 + data + b"y" * 7)
    assert _read(tmp_path / "p", len(raw), len(data), offset=100) == raw


def _frame_of_length(size: int, length: int) -> tuple[bytes, bytes]:
    """(stream, its zstd frame of exactly `length` bytes): random bytes with more and more
    zeros until level 1 compresses them to that length."""
    rng = random.Random(0)
    order = rng.sample(range(size), size)
    stream = bytearray(rng.randrange(1, 256) for _ in range(size))
    for i in order:
        stream[i] = 0
        frame = zstandard.ZstdCompressor(level=1).compress(bytes(stream))
        if len(frame) == length:
            return bytes(stream), frame
        if len(frame) < length:
            break
    pytest.fail(f"no frame of {length} bytes for {size} found")


def test_a_stream_chunk_exactly_the_size_of_a_raw_one_is_decoded_not_taken_raw(tmp_path):
    # 16 streams (a 128-byte table, also wider than the first read), one of them a zstd
    # frame exactly 128 bytes shorter than raw: the chunk file is as long as a raw one, so
    # the reader reads it as if raw first (one read), then sees the header and decodes.
    size, width = 4096, 16
    streams = [os.urandom(size) for _ in range(width)]
    streams[3], frame = _frame_of_length(size, size - STREAM.size * width)
    table = [(CODEC_RAW, size)] * width
    table[3] = (CODEC_ZSTD, len(frame))
    data = _chunk(CODEC_STREAMS, width, width * size, table, streams[:3] + [frame] + streams[4:])
    assert len(data) == HEADER.size + width * size
    (tmp_path / "c").write_bytes(data)
    assert _read(tmp_path / "c", width * size, len(data)) == _interleave(streams)


def test_a_stream_table_wider_than_the_first_read_is_read_whole(tmp_path):
    streams = [os.urandom(64) for _ in range(16)]  # 16 raw streams: a 128-byte table
    data = _chunk(CODEC_STREAMS, 16, 16 * 64, [(CODEC_RAW, 64)] * 16, streams)
    (tmp_path / "c").write_bytes(data)
    assert _read(tmp_path / "c", 16 * 64, len(data)) == _interleave(streams)


@pytest.mark.parametrize("cut", [3, HEADER.size + 1, 600])
def test_a_chunk_cut_short_after_its_size_was_checked_is_damage(tmp_path, cut):
    raw = os.urandom(1000)
    data = _chunk(CODEC_RAW, 1, len(raw), [], [raw])
    (tmp_path / "c").write_bytes(data[:cut])
    codec = ChunkCodec()
    fd, _ = codec.open_file(str(tmp_path / "c"), len(data))
    try:
        with pytest.raises(ChunkDecodeError):
            # The size the opener saw was the full one: the file shrank after it.
            codec.read_open(fd, len(data), len(raw), len(data), torch.empty(len(raw), dtype=torch.uint8))
    finally:
        os.close(fd)


@pytest.mark.parametrize("n", [1, 63, 64, 240, 4096, 1 << 20])
def test_chunk_id_is_the_xxh3_128_of_the_bytes(n):
    raw = torch.randint(0, 256, (n,), dtype=torch.uint8)
    assert chunk_id(raw) == xxhash.xxh3_128_hexdigest(bytes(raw.numpy()))


# -- loads: every compression and file kind, packs closed after ----------------------

def _big_state(seed: int) -> dict:
    g = torch.Generator().manual_seed(seed)
    return {"bf16": torch.randn(30000, generator=g).to(torch.bfloat16), "fp32": torch.randn(200, 90, generator=g),
            "ints": torch.arange(5000, dtype=torch.int64) * seed, "small": [torch.randn(3, generator=g) for _ in range(9)]}


def _open_fds() -> set[str]:
    return set(os.listdir("/proc/self/fd"))


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="counts descriptors through /proc")
@pytest.mark.parametrize("compression", ["zstd", "none"])
@pytest.mark.parametrize("packs", [False, True])
def test_loads_of_every_kind_are_exact_and_leave_no_file_open(open_store, compression, packs):
    store = open_store(compression=compression, packs=packs, chunk_size=4096, workers=4)
    saved = _big_state(1)
    info = store.save(saved, index=1, term=1)
    before = _open_fds()
    live = _big_state(2)
    store.load_into(info, live)  # known good: straight into the live tensors
    assert_same(live, saved)
    assert_same(store.load(info), saved)
    reader = open_store(path=store.path, compression=compression)  # checks before trusting
    assert_same(reader.load(info), saved)
    live = _big_state(3)
    reader.load_into(info, live)
    assert_same(live, saved)
    assert _open_fds() - before == set(), "a load left a file open"


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="counts descriptors through /proc")
def test_a_load_that_hits_a_damaged_packed_chunk_closes_its_packs_and_leaves_live_untouched(open_store):
    writer = open_store(packs=True, compression="none")
    saved = _big_state(1)
    info = writer.save(saved, index=1, term=1)
    (pack,) = [os.path.join(writer.path, "packs", n) for n in os.listdir(os.path.join(writer.path, "packs"))]
    first = min(e.offset for e in read_index(pack).values())  # after the pack's header and padding
    with open(pack, "r+b") as f:  # one byte of the first chunk's payload
        f.seek(first + HEADER.size + 5)
        byte = f.read(1)
        f.seek(-1, os.SEEK_CUR)
        f.write(bytes([byte[0] ^ 0xFF]))
    reader = open_store(path=writer.path)
    live, untouched = _big_state(2), _big_state(2)
    before = _open_fds()
    with pytest.raises(snapshots.CorruptSnapshotError):
        reader.load_into(info, live)
    assert _open_fds() - before == set()
    assert_same(live, untouched)


# -- decoded manifests ---------------------------------------------------------------

def test_a_manifest_saved_again_under_its_name_is_decoded_again(store):
    info = store.save({"w": torch.zeros(10)}, index=5, term=1, meta={"v": 1})
    assert torch.equal(store.load(info)["w"], torch.zeros(10))
    store.save({"w": torch.ones(10)}, index=5, term=1, meta={"v": 2})  # same name, new bytes
    assert torch.equal(store.load("5-1")["w"], torch.ones(10))
    assert store.list()[-1].meta == {"v": 2}


def test_a_manifest_damaged_after_it_was_decoded_is_damage(store):
    info = store.save({"w": torch.zeros(10)}, index=5, term=1)
    store.load(info)
    path = os.path.join(store.path, "manifests", "5-1")
    data = bytearray(open(path, "rb").read())
    data[-3] ^= 0x01
    with open(path, "wb") as f:
        f.write(data)
    with pytest.raises(snapshots.CorruptSnapshotError):
        store.load(info)
    assert not store.verify(info).ok


def test_a_callers_change_to_a_snapshots_meta_is_not_seen_by_later_reads(store):
    info = store.save({"w": torch.zeros(4)}, index=1, term=1, meta={"tags": ["a"], "n": {"k": 1}})
    first = store.load_into(info, {"w": torch.empty(4)})
    first.meta["tags"].append("changed")
    first.meta["n"]["k"] = 99
    again = store.load_into(info, {"w": torch.empty(4)})
    assert again.meta == {"tags": ["a"], "n": {"k": 1}}
    assert store.list()[0].meta == {"tags": ["a"], "n": {"k": 1}}


def test_decoded_manifests_are_bounded_by_count_and_bytes():
    from snapshots.decoded import DecodedManifests

    class M:  # what the cache reads of a manifest
        meta = None

    cache = DecodedManifests(keep=2, keep_bytes=100)
    cache.put("1-1", b"a" * 40, M())
    cache.put("2-1", b"b" * 40, M())
    assert cache.get("1-1", b"a" * 40) is not None
    cache.put("3-1", b"c" * 40, M())  # three would be over both bounds: the least recent goes
    assert cache.get("2-1", b"b" * 40) is None and cache.get("1-1", b"a" * 40) is not None
    cache.put("4-1", b"d" * 101, M())  # larger than the byte bound alone: never kept
    assert cache.get("4-1", b"d" * 101) is None
    assert cache.get("1-1", b"x" * 40) is None, "other bytes under the same name must not hit"
