"""Review of the direct-write path (snapshots/directio.py) at its edges: what fallocate
may answer besides success (EINTR, ENOSPC, "not supported"), a failing ftruncate at
finish, a WindowedWriter finished after close, and one StagingBuffers lent to two writers
at once. Each failure leaves no snapshot, no pack, no temp file and no writer thread;
each success writes exactly a buffered save's bytes. (test_direct_io.py has the main
cases; nothing here repeats them.)"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import os
import random
import threading

import pytest

from snapshots import commit, directio
from snapshots.directio import StagingBuffers, WindowedWriter

from .conftest import assert_same
from .test_direct_io import (WINDOW, _no_direct_threads, _pack_files, _state, assert_failed_save_left_nothing,  # noqa: F401
                             small_windows, store_with_one_snapshot)


def _fake_fallocate(monkeypatch, answers: list[int]) -> list[int]:
    """Replace directio's fallocate: the k-th call fails with errno answers[k] (0: the real
    call). Returns the errno of every call, in order."""
    real = directio._fallocate
    calls: list[int] = []

    def fallocate(fd, mode, offset, length):
        code = answers[len(calls)] if len(calls) < len(answers) else 0
        calls.append(code)
        if code:
            ctypes.set_errno(code)  # what ctypes.get_errno() reads for a use_errno function
            return -1
        return real(fd, mode, offset, length)

    monkeypatch.setattr(directio, "_fallocate", fallocate)
    return calls


def _buffered_packs(open_store, tmp_path, monkeypatch, state) -> dict[str, bytes]:
    monkeypatch.setattr(commit, "DIRECT_AFTER", 1 << 62)
    buffered = open_store(tmp_path / "buffered")
    buffered.save(state, index=1, term=1)
    return _pack_files(buffered.path)


def test_a_fallocate_interrupted_by_a_signal_is_retried(open_store, tmp_path, small_windows, monkeypatch):
    """shmem_fallocate (tmpfs) returns EINTR when a signal with a handler is pending (a
    trainer's SIGTERM handler, an itimer), and a ctypes call is not retried by Python (PEP
    475 covers os.* only): the save must not fail for it."""
    calls = _fake_fallocate(monkeypatch, [errno.EINTR, 0, errno.EINTR, errno.EINTR])
    state = _state(11)
    store = open_store(tmp_path / "direct")
    info = store.save(state, index=1, term=1)
    assert small_windows and errno.EINTR in calls and calls[-1] == 0
    assert store.verify(info).ok
    assert_same(store.load(info), state)
    assert _pack_files(store.path) == _buffered_packs(open_store, tmp_path, monkeypatch, state)
    assert _no_direct_threads()


def test_a_fallocate_without_support_grows_the_file_with_holes_and_cuts_it_to_size(open_store, tmp_path,
                                                                                      small_windows, monkeypatch):
    calls = _fake_fallocate(monkeypatch, [errno.EOPNOTSUPP])
    state = _state(12)
    store = open_store(tmp_path / "direct")
    info = store.save(state, index=1, term=1)
    assert calls == [errno.EOPNOTSUPP]  # refused once, never asked again (ftruncate from then on)
    assert store.verify(info).ok
    # The file was grown GROW_AHEAD past its windows; the bytes on disk are a buffered save's.
    assert _pack_files(store.path) == _buffered_packs(open_store, tmp_path, monkeypatch, state)
    assert _no_direct_threads()


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EIO, errno.EINVAL])
def test_a_fallocate_failing_otherwise_fails_the_save_and_leaves_nothing_behind(open_store, small_windows,
                                                                                monkeypatch, code):
    store, before, packs_before = store_with_one_snapshot(open_store, 13)
    _fake_fallocate(monkeypatch, [0, code])  # the second window's allocation fails
    with pytest.raises(OSError) as raised:
        store.save(_state(14), index=2, term=1)
    assert raised.value.errno == code and "fallocate" in str(raised.value)
    monkeypatch.setattr(directio, "_fallocate", directio._load_fallocate())
    assert_failed_save_left_nothing(store, packs_before, before, goes_on_with=_state(15))


def test_an_ftruncate_failing_at_finish_fails_the_save_and_leaves_nothing_behind(open_store, small_windows,
                                                                                 monkeypatch):
    store, before, packs_before = store_with_one_snapshot(open_store, 16)
    real = os.ftruncate
    cut = []

    def ftruncate(fd, length):
        if small_windows and small_windows[-1]._fd == fd:  # the direct pack's final cut
            cut.append(length)
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(fd, length)

    monkeypatch.setattr(os, "ftruncate", ftruncate)
    with pytest.raises(OSError) as raised:
        store.save(_state(17), index=2, term=1)
    monkeypatch.setattr(os, "ftruncate", real)
    assert raised.value.errno == errno.ENOSPC and cut
    assert_failed_save_left_nothing(store, packs_before, before)


def test_finish_after_close_raises_and_touches_no_memory_the_writer_gave_back(tmp_path):
    """close() gives the staging memory back (the next writer takes it) and stops the
    threads: a finish() after it must neither pad a window in that memory nor wait for a
    window no thread will write (it waited forever)."""
    staging = StagingBuffers(WINDOW, 2)
    fd = os.open(tmp_path / "f", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        writer = WindowedWriter(fd, staging)
        writer.write([memoryview(bytearray(b"a" * 100))], 0)  # a window still filling
        writer.close()
        lent = staging.take()  # the next writer's memory now
        lent[:] = b"\x5a" * len(lent)
        with pytest.raises(RuntimeError, match="closed"):
            writer.finish(100)
        assert lent[:] == b"\x5a" * len(lent), "finish padded a window in memory it had given back"
        with pytest.raises(RuntimeError, match="closed"):
            writer.write([memoryview(b"b")], 100)
    finally:
        os.close(fd)
    assert _no_direct_threads()


def test_one_staging_buffers_lent_to_two_writers_at_once_gives_each_its_own_memory(tmp_path):
    """Two writers on one StagingBuffers, writing at the same time (two stores sharing one
    by mistake, or a writer not yet closed when the next starts): the second gets fresh
    memory, both files are whole, and one mapping is kept afterwards."""
    staging = StagingBuffers(WINDOW, 2)
    rng = random.Random(7)
    datas = [rng.randbytes(5 * WINDOW + 321), rng.randbytes(6 * WINDOW + 17)]
    fds = [os.open(tmp_path / f"f{k}", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644) for k in range(2)]
    try:
        writers = [WindowedWriter(fd, staging, direct=directio.enable_direct(fd)) for fd in fds]
        assert writers[0]._buffers is not writers[1]._buffers
        both_started = threading.Barrier(2, timeout=60)
        failed = []

        def run(writer: WindowedWriter, data: bytes) -> None:
            try:
                writer.write([memoryview(data[:WINDOW // 2])], 0)
                both_started.wait()  # each holds a window of its own memory, half filled
                for at in range(WINDOW // 2, len(data), 3000):
                    writer.write([memoryview(data[at:at + 3000])], at)
                writer.finish(len(data))
            except BaseException as e:  # noqa: BLE001 - reported below
                failed.append(e)

        threads = [threading.Thread(target=run, args=(w, d)) for w, d in zip(writers, datas)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert not failed
    finally:
        for fd in fds:
            os.close(fd)
    for k, data in enumerate(datas):
        assert (tmp_path / f"f{k}").read_bytes() == data
    assert staging.take() is not None and _no_direct_threads()


@pytest.mark.parametrize("short", [100, 4096 + 100])
def test_a_short_direct_write_off_the_4k_grid_is_continued_from_the_last_boundary(open_store, tmp_path, small_windows,
                                                                                monkeypatch, short):
    """A direct pwrite may write fewer bytes than asked (a device nearly full). Going on
    from a count off the 4 KiB grid would be an unaligned O_DIRECT write, refused with
    EINVAL (the real cause hidden); the writer goes on from the last boundary instead, and
    the pack holds exactly a buffered save's bytes. Here the kernel writes everything but
    the first direct write reports `short` bytes."""
    real = os.pwrite
    shortened = []

    def pwrite(fd, data, offset):
        wrote = real(fd, data, offset)
        if not shortened and wrote > short and fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_DIRECT:
            shortened.append(offset)
            return short
        return wrote

    monkeypatch.setattr(os, "pwrite", pwrite)
    state = _state(12)
    store = open_store(tmp_path / "direct")
    info = store.save(state, index=1, term=1)
    assert shortened and any(w._wrote_direct for w in small_windows)
    monkeypatch.setattr(os, "pwrite", real)
    assert _pack_files(store.path) == _buffered_packs(open_store, tmp_path, monkeypatch, state)
    assert store.verify(info).ok


def test_a_direct_write_that_twice_writes_under_4k_fails_the_save_with_eio(open_store, tmp_path, small_windows,
                                                                           monkeypatch):
    """A device that keeps writing less than one 4 KiB block makes no progress: the save
    fails with EIO naming the offset (not EINVAL, not a loop) and leaves nothing behind."""
    real = os.pwrite

    def pwrite(fd, data, offset):
        if fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_DIRECT:
            return 100
        return real(fd, data, offset)

    store, before, packs_before = store_with_one_snapshot(open_store, 13)
    monkeypatch.setattr(os, "pwrite", pwrite)
    with pytest.raises(OSError, match="wrote less than 4096 bytes twice") as raised:
        store.save(_state(14), index=2, term=1)
    assert raised.value.errno == errno.EIO
    monkeypatch.setattr(os, "pwrite", real)
    assert_failed_save_left_nothing(store, packs_before, before, goes_on_with=_state(15))
