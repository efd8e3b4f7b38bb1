"""Large saves write their pack around the page cache (snapshots/directio.py): the bytes on
disk are exactly a buffered save's, a filesystem that refuses O_DIRECT (at fcntl or at
the first write) gets the same bytes through the page cache, and a write that fails
midway leaves no snapshot, no pack and no thread behind."""

from __future__ import annotations

import errno
import fcntl
import os
import random
import signal
import threading

import pytest
import torch

import snapshots
from snapshots import commit, directio
from snapshots.directio import StagingBuffers, WindowedWriter
from snapshots.packfile import PackWriter, read_index

from .conftest import assert_same
from tests.crash.checker.children import kill_at_call

from .forking import fork_child, read_all

WINDOW = 2 * directio.ALIGN  # small windows: a test state spans many of them


@pytest.fixture
def small_windows(monkeypatch):
    """Every direct save from here on: 8 KiB windows, three of them, and the direct path
    whatever the state's size. Returns the WindowedWriters the saves make."""
    monkeypatch.setattr(directio, "WINDOW", WINDOW)
    monkeypatch.setattr(directio, "WINDOWS", 3)
    monkeypatch.setattr(commit, "DIRECT_AFTER", 0)
    made: list[WindowedWriter] = []
    real = WindowedWriter.__init__

    def init(self, *args, **kwargs):
        real(self, *args, **kwargs)
        made.append(self)

    monkeypatch.setattr(WindowedWriter, "__init__", init)
    return made


def _state(seed: int) -> dict:
    """Sizes that are no multiple of 4096 (nor of a window), an empty tensor, and chunks
    (chunk_size 4096 in these stores: chunk files of 4112 bytes) straddling windows."""
    g = torch.Generator().manual_seed(seed)
    return {"model": {"w": torch.randn(30011, generator=g), "b": torch.randn(13, generator=g).to(torch.bfloat16),
                      "empty": torch.empty(0, 3), "ids": torch.randint(0, 1 << 40, (777,), generator=g)},
            "optim": {"m": torch.randn(5003, generator=g).to(torch.float16), "step": seed}}


def _pack_files(root) -> dict[str, bytes]:
    packs = os.path.join(root, "packs")
    return {name: open(os.path.join(packs, name), "rb").read() for name in sorted(os.listdir(packs))}


def store_with_one_snapshot(open_store, seed: int):
    """(a store holding snapshot 1 of `_state(seed)`, that state, its pack files): what
    assert_failed_save_left_nothing compares a failed save of snapshot 2 against."""
    store = open_store()
    before = _state(seed)
    store.save(before, index=1, term=1)
    return store, before, _pack_files(store.path)


def assert_failed_save_left_nothing(store, packs_before: dict, before: dict, goes_on_with: dict | None = None) -> None:
    """After a save that raised: no writer thread, only snapshot 1 (still `before`), the
    packs as they were (the failed save's pack gone, temp name and all), no temp
    manifest; and, given `goes_on_with`, the next save of that state verifies and loads."""
    assert _no_direct_threads()
    assert [i.index for i in store.list()] == [1]
    assert _pack_files(store.path) == packs_before
    assert not [n for n in os.listdir(os.path.join(store.path, "manifests")) if not n[0].isdigit()]
    assert store.verify(store.list()[0]).ok
    assert_same(store.load(store.list()[0]), before)
    if goes_on_with is not None:
        info = store.save(goes_on_with, index=2, term=1)  # the store goes on
        assert store.verify(info).ok
        assert_same(store.load(info), goes_on_with)


def _no_direct_threads() -> bool:
    return not [t for t in threading.enumerate() if t.name == "snapshots-direct"]


def test_a_direct_save_writes_the_bytes_a_buffered_save_writes(open_store, tmp_path, small_windows, monkeypatch):
    state = _state(1)
    direct = open_store(tmp_path / "direct")
    info = direct.save(state, index=1, term=1)
    assert small_windows and all(w.direct for w in small_windows)  # O_DIRECT taken here (ext4, tmpfs)
    monkeypatch.setattr(commit, "DIRECT_AFTER", 1 << 62)
    buffered = open_store(tmp_path / "buffered")
    buffered.save(state, index=1, term=1)
    assert len(small_windows) == 1
    # A small state is cut and appended in order on the commit thread, so both packs have
    # the same chunks at the same offsets: the same name and the same bytes.
    packs = _pack_files(direct.path)
    assert packs == _pack_files(buffered.path) and len(packs) == 1
    (name, data), = packs.items()
    assert len(data) % directio.ALIGN and len(data) > 4 * WINDOW  # the padding was cut off
    assert read_index(os.path.join(direct.path, "packs", name))
    assert direct.verify(info).ok
    assert_same(direct.load(info), state)
    assert _no_direct_threads()


def test_a_pool_save_through_the_direct_path_loads_bit_identical_and_reuses_its_buffers(open_store, small_windows,
                                                                                           monkeypatch):
    monkeypatch.setattr(commit, "INLINE_BYTES", {"none": 0, "zstd": 0})  # every chunk on the worker pool
    store = open_store()
    for index in (1, 2, 3):
        state = _state(index)
        info = store.save(state, index=index, term=1)
        assert store.verify(info).ok
        assert_same(store.load(info), state)
    assert len(small_windows) == 3
    # One staging mapping for the store's saves, handed from one to the next.
    assert len({id(w._staging) for w in small_windows}) == 1
    assert _no_direct_threads()
    reopened = snapshots.SnapshotStore(store.path)
    try:
        assert [i.index for i in reopened.list()] == [1, 2, 3]
        assert_same(reopened.load(reopened.list()[-1]), _state(3))
    finally:
        reopened.close()


def test_closing_the_store_unmaps_its_staging_memory(open_store, small_windows):
    store = open_store()
    store.save(_state(10), index=1, term=1)
    kept = store._chunks.staging._kept
    assert kept is not None and not kept.closed  # kept for the next large save
    store.close()
    assert kept.closed and store._chunks.staging._kept is None


def test_zstd_saves_keep_the_buffered_path(open_store, small_windows):
    store = open_store(compression="zstd")
    state = _state(4)
    info = store.save(state, index=1, term=1)
    assert not small_windows
    assert store.verify(info).ok
    assert_same(store.load(info), state)


def test_a_direct_pack_of_zstd_encoded_chunks_reads_back(tmp_path):
    """What the direct path writes does not depend on the encoding: read-only (compressed)
    parts are copied like the raw ones."""
    from snapshots.chunkfile import ChunkCodec, chunk_id

    codec = ChunkCodec(compression="zstd")
    writer = PackWriter(str(tmp_path), direct=True, staging=StagingBuffers(WINDOW, 2))
    raws = [torch.arange(k * 1000, (k + 1) * 1000 + 7 * k, dtype=torch.float32).view(torch.uint8) for k in range(9)]
    for raw in raws:
        writer.append(chunk_id(raw), raw.numel(), codec.encode(raw, 4))
    entries = writer.seal()
    writer.sync()
    assert sorted(e.id for e in entries) == sorted(read_index(os.path.join(tmp_path, writer.name)))
    for raw, e in zip(raws, entries):
        out = torch.empty(e.raw_len, dtype=torch.uint8)
        codec.read(os.path.join(tmp_path, writer.name), e.raw_len, e.stored_len, out, e.offset)
        assert torch.equal(out, raw)


def test_a_filesystem_refusing_o_direct_at_fcntl_gets_the_buffered_path(open_store, small_windows, monkeypatch):
    real = fcntl.fcntl
    refused = []

    def no_direct(fd, cmd, arg=0):
        if cmd == fcntl.F_SETFL and arg & os.O_DIRECT:
            refused.append(fd)
            raise OSError(errno.EINVAL, "Invalid argument")
        return real(fd, cmd, arg)

    monkeypatch.setattr(directio.fcntl, "fcntl", no_direct)
    store = open_store()
    state = _state(5)
    info = store.save(state, index=1, term=1)
    assert refused and not small_windows  # no windows: the pack went through PackWriter's own writes
    assert store.verify(info).ok
    assert_same(store.load(info), state)


def test_a_filesystem_refusing_the_first_direct_write_gets_the_same_bytes_buffered(open_store, tmp_path,
                                                                                  small_windows, monkeypatch):
    real = os.pwrite
    refused = []

    def pwrite(fd, data, offset):
        if fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_DIRECT:
            refused.append(offset)
            raise OSError(errno.EINVAL, "Invalid argument")
        return real(fd, data, offset)

    monkeypatch.setattr(os, "pwrite", pwrite)
    state = _state(6)
    store = open_store(tmp_path / "fallback")
    info = store.save(state, index=1, term=1)
    assert refused and small_windows and not any(w.direct for w in small_windows)
    monkeypatch.setattr(commit, "DIRECT_AFTER", 1 << 62)
    buffered = open_store(tmp_path / "buffered")
    buffered.save(state, index=1, term=1)
    assert _pack_files(store.path) == _pack_files(buffered.path)
    assert store.verify(info).ok
    assert_same(store.load(info), state)


@pytest.mark.parametrize("failing_write", [1, 4])
def test_a_direct_write_failing_midway_leaves_no_snapshot_no_pack_and_no_thread(open_store, small_windows,
                                                                                monkeypatch, failing_write):
    store, before, packs_before = store_with_one_snapshot(open_store, 7)
    real = os.pwrite
    windows = []

    def pwrite(fd, data, offset):
        if len(data) == WINDOW:
            windows.append(offset)
            if len(windows) == failing_write:
                raise OSError(errno.ENOSPC, "No space left on device")
        return real(fd, data, offset)

    monkeypatch.setattr(os, "pwrite", pwrite)
    with pytest.raises(OSError) as raised:
        store.save(_state(8), index=2, term=1)
    assert raised.value.errno == errno.ENOSPC
    monkeypatch.setattr(os, "pwrite", real)
    assert_failed_save_left_nothing(store, packs_before, before, goes_on_with=_state(9))


def _write_ranges(path, data: bytes, ranges: list, windows: int) -> bool:
    """Four threads write `data`'s `ranges` to a new file at `path`, each taking the next
    range of the list (so ranges start in list order and finish in any order); whether
    O_DIRECT stayed in use."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        writer = WindowedWriter(fd, StagingBuffers(WINDOW, windows), direct=directio.enable_direct(fd))
        queue = list(reversed(ranges))
        lock = threading.Lock()
        failed = []

        def work():
            try:
                while True:
                    with lock:
                        if not queue:
                            return
                        start, end = queue.pop()
                    piece = data[start:end]
                    # Read-only and writable buffers, split into parts (one of them empty).
                    half = (end - start) // 2
                    writer.write([memoryview(piece[:half]), memoryview(bytearray()),
                                  memoryview(bytearray(piece[half:]))], start)
            except BaseException as e:  # noqa: BLE001 - reported below
                failed.append(e)

        threads = [threading.Thread(target=work) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert not failed
        writer.finish(len(data))
        return writer.direct
    finally:
        os.close(fd)


@pytest.mark.parametrize("order", ["file order, two buffers", "shuffled, a buffer per window"])
def test_the_windowed_writer_writes_ranges_from_many_threads(tmp_path, order):
    rng = random.Random(3)
    data = rng.randbytes(7 * WINDOW + 1234)
    cuts = sorted(rng.sample(range(1, len(data)), 40)) + [3 * WINDOW, 3 * WINDOW + 1]  # a 1-byte range too
    ranges = sorted(zip([0, *sorted(cuts)], [*sorted(cuts), len(data)]))
    windows = 2
    if order.startswith("shuffled"):
        # Ranges given out of file order need a buffer for every window in between (a
        # PackWriter's ranges start in file order: its offsets are reserved in order).
        rng.shuffle(ranges)
        windows = -(-len(data) // WINDOW)
    _write_ranges(tmp_path / "f", data, ranges, windows)
    assert (tmp_path / "f").read_bytes() == data
    assert _no_direct_threads()


def test_the_windowed_writer_refuses_a_byte_written_twice_or_never(tmp_path):
    fd = os.open(tmp_path / "f", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        writer = WindowedWriter(fd, StagingBuffers(WINDOW, 2))
        writer.write([memoryview(bytes(WINDOW + 10))], 0)
        with pytest.raises(RuntimeError, match="written twice"):
            writer.write([memoryview(b"x")], 5)  # its window is full (written, or being written)
        with pytest.raises(RuntimeError, match="missing"):
            writer.finish(WINDOW + 20)
        writer.close()
        writer.close()  # idempotent
        with pytest.raises(RuntimeError, match="closed"):
            writer.write([memoryview(b"x")], WINDOW + 10)
    finally:
        os.close(fd)
    assert _no_direct_threads()
    with pytest.raises(ValueError, match="multiple of 4096"):
        StagingBuffers(1000, 2)
    with pytest.raises(ValueError, match="windows >= 2"):
        StagingBuffers(WINDOW, 1)


def test_a_discarded_direct_pack_leaves_no_file_and_no_thread(tmp_path):
    writer = PackWriter(str(tmp_path), direct=True, staging=StagingBuffers(WINDOW, 2))
    chunk = bytes(range(256)) * 40
    for k in range(12):
        writer.append(f"{k:032x}", len(chunk), [chunk])
    writer.discard()
    writer.discard()
    assert os.listdir(tmp_path) == []
    assert _no_direct_threads()


def _direct_writer(root: str, ack_fd: int, kill_at: int) -> None:
    """Child: small windows, the direct path for every save; save 1, then save 2 with a
    SIGKILL at this process's `kill_at`-th pwrite, ftruncate, fsync, rename or unlink."""
    directio.WINDOW, directio.WINDOWS, commit.DIRECT_AFTER = WINDOW, 3, 0
    commit.INLINE_BYTES = {"none": 0, "zstd": 0}  # the worker pool writes the windows' bytes
    store = snapshots.SnapshotStore(root, keep_last=2, chunk_size=4096, workers=2)
    if not store.list():
        store.save(_state(1), index=1, term=1)
    os.write(ack_fd, b"1")
    kill_at_call(("pwrite", "ftruncate", "fsync", "rename", "unlink"), kill_at)
    store.save(_state(2), index=2, term=1)
    os.write(ack_fd, b"2")
    store.close()


@pytest.mark.crash
def test_a_direct_save_killed_at_every_write_truncate_fsync_or_rename_loses_nothing_acknowledged(tmp_path):
    """Every crash point of a direct save (a process crash: what was written stays):
    afterwards the store opens, every snapshot it lists verifies and loads bit for bit,
    the first is there, the second once acknowledged, and a prune leaves a store that
    still verifies."""
    kill_at = 0
    while True:
        kill_at += 1
        assert kill_at < 400, "the save never ran to its end"
        root = str(tmp_path / f"run{kill_at}")
        r, w = os.pipe()
        pid = fork_child(_direct_writer, root, w, kill_at)
        os.close(w)
        _, status = os.waitpid(pid, 0)
        acked = read_all(r)
        with snapshots.SnapshotStore(root) as store:
            present = [i.index for i in store.list()]
            assert 1 in present and (b"2" not in acked or 2 in present), (kill_at, acked, present)
            for info in store.list():
                assert store.verify(info).ok, kill_at
                assert_same(store.load(info), _state(info.index))
            store.prune()
            assert all(store.verify(info).ok for info in store.list())
            assert not [n for n in os.listdir(os.path.join(root, "packs")) if n.startswith(".tmp.")]
        if os.WIFEXITED(status):
            assert os.WEXITSTATUS(status) == 0 and acked == b"12"
            break
        assert os.WTERMSIG(status) == signal.SIGKILL
    assert kill_at > 10  # the sweep crossed the windows of the second save


def test_two_writer_threads_refused_at_once_both_fall_back(tmp_path, monkeypatch):
    """A filesystem that takes O_DIRECT at fcntl but refuses the writes: two writer threads
    hold a refused direct write at once, and the second learns of its refusal only after the
    first one's buffered retry has succeeded. Both fall back; the bytes are whole."""
    fd = os.open(tmp_path / "f", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    if not directio.enable_direct(fd):
        os.close(fd)
        if os.environ.get("CI"):  # CI's filesystem takes O_DIRECT: a refusal there is a failure, not a skip
            pytest.fail("the test directory's filesystem refuses O_DIRECT at fcntl")
        pytest.skip("this filesystem refuses O_DIRECT at fcntl")
    real = os.pwrite
    both_refused = threading.Barrier(2, timeout=30)
    first_retry_done = threading.Event()
    refusals = []

    def pwrite(fd_, data, offset):
        if fcntl.fcntl(fd_, fcntl.F_GETFL) & os.O_DIRECT:
            refusals.append(offset)
            both_refused.wait()  # both threads are inside a direct write
            if len(refusals) == 2 and offset == max(refusals):
                first_retry_done.wait(30)  # the later window: refused after the other's retry wrote
            raise OSError(errno.EINVAL, "Invalid argument")
        done = real(fd_, data, offset)
        first_retry_done.set()
        return done

    monkeypatch.setattr(os, "pwrite", pwrite)
    data = random.Random(5).randbytes(2 * WINDOW + 100)
    try:
        writer = WindowedWriter(fd, StagingBuffers(WINDOW, 3), writers=2)
        writer.write([memoryview(data)], 0)  # two full windows: one for each writer thread
        writer.finish(len(data))
        assert not writer.direct and len(refusals) >= 2
    finally:
        os.close(fd)
    assert (tmp_path / "f").read_bytes() == data
    assert _no_direct_threads()
