"""A forked child (a DataLoader worker) must not keep the store's locks alive after its parent lets go."""

import os
import time

import pytest
import torch

import snapshots
from snapshots.locks import FileLock

pytestmark = pytest.mark.timeout(60)


def test_a_forked_child_does_not_keep_the_writer_lock(tmp_path):
    store = snapshots.SnapshotStore(tmp_path / "store")
    store.save({"w": torch.zeros(2)}, index=1, term=1)
    ready_r, ready_w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child outlives the parent's hold on the store, as an orphaned worker would
        os.write(ready_w, b"x")  # the at-fork handlers have run by the time the child runs code
        time.sleep(3)
        os._exit(0)
    # Until the child is scheduled it still holds the inherited descriptor (fork copies
    # them all); the claim is about a child that has started, as a DataLoader worker has.
    os.close(ready_w)
    assert os.read(ready_r, 1) == b"x"
    os.close(ready_r)
    try:
        store.close()
        again = snapshots.SnapshotStore(tmp_path / "store")  # LockedError if the child kept the flock
        again.save({"w": torch.ones(2)}, index=2, term=1)
        again.close()
    finally:
        os.kill(pid, 9)
        os.waitpid(pid, 0)


def test_the_parent_keeps_its_lock_while_a_child_closes_its_copy(tmp_path):
    lock = FileLock(str(tmp_path / "LOCK"))
    assert lock.acquire(exclusive=True, blocking=False)
    pid = os.fork()
    if pid == 0:
        os._exit(0)  # the at-fork hook closed the child's copy; the parent's flock must survive
    os.waitpid(pid, 0)
    assert not FileLock(str(tmp_path / "LOCK")).acquire(exclusive=True, blocking=False)
    lock.release()
    assert FileLock(str(tmp_path / "LOCK")).acquire(exclusive=True, blocking=False)
