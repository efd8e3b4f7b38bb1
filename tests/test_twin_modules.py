"""The modules eventlog and snapshots each keep a copy of (DESIGN §2: neither may import the
other) behave the same: one test, parametrized over both copies.

- eventlog/safefile.py and snapshots/safefile.py: `open_regular` refuses what a hostile
  directory may hold (a symlink, a FIFO, a directory, an oversized file) the same way.
- eventlog/locking.py and snapshots/locks.py: a lock held when the process forks is not
  kept alive by the child (the child closes its inherited copy; the parent still holds it,
  and once the parent lets go the lock is free although the child lives on).
"""

from __future__ import annotations

import os
import signal
import socket

import pytest

import eventlog.locking
import eventlog.safefile
import snapshots.locks
import snapshots.safefile

pytestmark = pytest.mark.timeout(60)

SAFEFILES = [pytest.param(eventlog.safefile, id="eventlog"), pytest.param(snapshots.safefile, id="snapshots")]


@pytest.mark.parametrize("module", SAFEFILES)
def test_open_regular_reads_a_regular_file_within_its_bound(tmp_path, module):
    path = tmp_path / "f"
    path.write_bytes(b"abc")
    fd, size = module.open_regular(str(path), 3)
    try:
        assert size == 3 and os.read(fd, 10) == b"abc"
    finally:
        os.close(fd)


@pytest.mark.parametrize("module", SAFEFILES)
def test_open_regular_refuses_what_is_not_a_small_regular_file(tmp_path, module):
    target = tmp_path / "target"
    target.write_bytes(b"x" * 10)
    os.symlink(target, tmp_path / "link")
    os.mkfifo(tmp_path / "fifo")
    (tmp_path / "dir").mkdir()
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(tmp_path / "sock"))
    try:
        cases = {"link": "symbolic link", "fifo": "FIFO", "dir": "directory", "target": "more than the 9",
                 "sock": "not a regular file"}
        for name, reason in cases.items():
            with pytest.raises(module.UnsafeFileError, match=reason):
                module.open_regular(str(tmp_path / name), 9)
    finally:
        sock.close()
    with pytest.raises(FileNotFoundError):
        module.open_regular(str(tmp_path / "missing"), 9)


def _take_eventlog(path):
    lock = eventlog.locking.FileLock(path)
    assert lock.try_acquire()
    return lock


def _free_eventlog(path) -> bool:
    probe = eventlog.locking.FileLock(path)
    got = probe.try_acquire()
    probe.release()
    return got


def _take_snapshots(path):
    lock = snapshots.locks.FileLock(str(path))
    assert lock.acquire(exclusive=True, blocking=False)
    return lock


def _free_snapshots(path) -> bool:
    probe = snapshots.locks.FileLock(str(path))
    got = probe.acquire(exclusive=True, blocking=False)
    probe.release()
    return got


LOCKS = [pytest.param(_take_eventlog, _free_eventlog, id="eventlog"),
         pytest.param(_take_snapshots, _free_snapshots, id="snapshots")]


@pytest.mark.parametrize("take, is_free", LOCKS)
def test_a_forked_child_does_not_keep_its_parents_lock(tmp_path, take, is_free):
    path = tmp_path / "lock"
    lock = take(path)
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: signals it is running, then lives on holding whatever it inherited
        try:
            os.close(read)
            os.write(write, b"x")
            signal.pause()
        finally:
            os._exit(0)
    try:
        os.close(write)
        assert os.read(read, 1) == b"x"
        assert not is_free(path)  # the parent still holds it: the child closed only its own copy
        lock.release()
        assert is_free(path)  # the child, still alive, holds nothing
    finally:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        os.close(read)
