"""Shipping a journal to a replica (file:// and S3 via moto) and restoring it bit for bit.

The helpers here (a tiny workload with an exact reference, a journal wrapped with a
Shipper) are shared by tests/replica/test_restore*.py, test_fencing*.py and
tests/crash/test_replica*.py.
"""

from __future__ import annotations

import contextlib

import pytest
import torch

import replay
from replay.replica.objects import open_store
from replay.replica.restore import restore
from replay.replica.shipper import Shipper

pytestmark = pytest.mark.timeout(120)

WIDTH = 4


def make_ops() -> replay.Ops:
    ops = replay.Ops()

    @ops.op
    def add(state, *, value):
        state["w"].add_(value)
        state["steps"].add_(1)

    return ops


def value_at(index: int) -> float:
    """The payload of user entry `index`: varied, exact in float32 only by accident."""
    return ((index * 7919) % 101) / 13.0


def fresh_state() -> dict:
    return {"w": torch.zeros(WIDTH, dtype=torch.float32), "steps": torch.zeros((), dtype=torch.int64)}


def reference_state(n: int) -> dict:
    """The state after user entries 1..n, by the same torch ops in the same order."""
    state = fresh_state()
    for i in range(1, n + 1):
        state["w"].add_(value_at(i))
        state["steps"].add_(1)
    return state


def assert_state(state, n: int) -> None:
    """`state` is the reference state after `n` user entries, bit for bit."""
    expected = reference_state(n)
    for key in expected:
        assert torch.equal(state[key], expected[key]), f"{key} differs from the reference at {n}"
        assert state[key].dtype == expected[key].dtype


def open_journal(path, *, every: int = 7, durability: str = "group", **kw) -> replay.Journal:
    return replay.Journal.open(path, state=fresh_state(), ops=make_ops(), snapshot=replay.Every(entries=every),
                               durability=durability, keep_last=2, environment="ignore", **kw)


def ship(journal: replay.Journal, url: str, options: dict | None, *, interval: float = 0.05,
         max_lag: float | None = None) -> Shipper:
    """A started Shipper around a plain Journal (what Journal.open(replica=...) will build)."""
    store = open_store(url, options)
    shipper = Shipper(store, journal.path, journal.log, journal.snapshots,
                      lambda: min(journal.log.durable_index, journal.index), interval=interval,
                      term=journal.log.term, max_lag=max_lag)
    shipper.start()
    return shipper


def apply_n(journal: replay.Journal, n: int) -> None:
    for _ in range(n):
        journal.apply("add", value=value_at(journal.count() + 1))


def restored_state(path) -> tuple[dict, replay.Journal]:
    journal = open_journal(path)
    return journal.state, journal


@contextlib.contextmanager
def shipped(path, url, options, **kw):
    journal = open_journal(path, **kw)
    shipper = ship(journal, url, options)
    try:
        yield journal, shipper
    finally:
        shipper.close(timeout=30)
        journal.close()


def test_restore_reproduces_the_state_at_the_replica_index(tmp_path, replica_url):
    url, options = replica_url
    with shipped(tmp_path / "a", url, options) as (journal, shipper):
        apply_n(journal, 23)
        journal.flush()
        assert shipper.wait(journal.index, timeout=60) == 23
        status = shipper.status()
        assert (status.index, status.lag_entries, status.fenced, status.error) == (23, 0, False, None)
        assert status.uploads > 0 and status.bytes > 0
        apply_n(journal, 17)
        journal.flush()
        assert shipper.wait(40, timeout=60) == 40
    report = restore(url, tmp_path / "b", options)
    assert (report.head_index, report.segments >= 1) == (40, True)
    with open_journal(tmp_path / "b") as again:
        assert again.index == 40
        assert_state(again.state, 40)
        values = [e.payload for e in again.log.entries(again.log.first_index)]
        assert len(values) == 40 - again.log.first_index + 1
        apply_n(again, 3)  # and it goes on, bit-identical to an uninterrupted run
        assert_state(again.state, 43)


def test_restore_at_an_intermediate_index_then_more(tmp_path, replica_url):
    url, options = replica_url
    with shipped(tmp_path / "a", url, options) as (journal, shipper):
        apply_n(journal, 5)
        journal.flush()
        shipper.wait(5, timeout=60)
        restore(url, tmp_path / "b", options)
        with open_journal(tmp_path / "b") as copy:
            assert copy.index == 5
            assert_state(copy.state, 5)
        apply_n(journal, 30)
        journal.flush()
        shipper.wait(35, timeout=60)
    restore(url, tmp_path / "c", options)
    with open_journal(tmp_path / "c") as copy:
        assert copy.index == 35
        assert_state(copy.state, 35)


def test_restore_refuses_a_non_empty_directory_and_a_missing_head(tmp_path, replica_url):
    url, options = replica_url
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("x")
    with pytest.raises(FileExistsError):
        restore(url, tmp_path / "full", options)
    if url.startswith("file://"):
        (tmp_path / "replica").mkdir()   # an empty replica; a missing directory is an error of its own
    with pytest.raises(replay.replica.ObjectNotFoundError, match="head.json"):
        restore(url, tmp_path / "new", options)
    assert not (tmp_path / "new").exists()


def test_reopened_journal_continues_its_own_replica(tmp_path, replica_url):
    url, options = replica_url
    with shipped(tmp_path / "a", url, options) as (journal, shipper):
        apply_n(journal, 9)
        journal.flush()
        shipper.wait(9, timeout=60)
    with shipped(tmp_path / "a", url, options) as (journal, shipper):
        apply_n(journal, 6)
        journal.flush()
        assert shipper.wait(15, timeout=60) == 15
        assert shipper.status().fenced is False
    restore(url, tmp_path / "b", options)
    with open_journal(tmp_path / "b") as copy:
        assert copy.index == 15
        assert_state(copy.state, 15)


def test_lag_beyond_max_lag_is_an_error_and_training_goes_on(tmp_path):
    dead = {"endpoint_url": "http://127.0.0.1:9", "region": "us-east-1", "access_key_id": "x",
            "secret_access_key": "x", "connect_timeout": 0.2, "request_timeout": 0.5, "max_retries": 0}
    pytest.importorskip("obstore", reason="obstore is not installed (pip install 'torch-eventlog[s3]')")
    store = open_store("s3://bucket/p", dead)
    journal = open_journal(tmp_path / "a")
    shipper = Shipper(store, journal.path, journal.log, journal.snapshots,
                      lambda: min(journal.log.durable_index, journal.index), interval=0.05,
                      term=journal.log.term, max_lag=0.3)
    shipper.start()
    try:
        apply_n(journal, 3)
        journal.flush()
        with pytest.raises(replay.replica.status.ReplicaLagError, match="behind"):
            shipper.wait(3, timeout=30)
        status = shipper.status()
        assert status.index == 0 and status.lag_entries == 3 and status.last_error is not None
        assert isinstance(shipper.error, replay.replica.status.ReplicaLagError)
        apply_n(journal, 2)  # training is not blocked
        assert journal.index == 5
    finally:
        shipper.close(timeout=10)
        journal.close()


def test_endpoint_stopped_mid_upload_then_back_catches_up(tmp_path, stoppable_s3):
    """The S3 endpoint goes away while entries and snapshots are being shipped: training goes
    on, the lag is reported, nothing partial is ever restored; back, the replica catches up."""
    bucket = stoppable_s3.new_bucket()
    url, options = f"s3://{bucket}/run", stoppable_s3.options()
    with shipped(tmp_path / "a", url, options) as (journal, shipper):
        apply_n(journal, 10)
        journal.flush()
        shipper.wait(10, timeout=60)
        stoppable_s3.stop()  # connections refused from now on, whatever is in flight
        apply_n(journal, 12)  # 22: two snapshots' chunks and manifests are due too
        journal.flush()
        with pytest.raises(TimeoutError, match="last error"):
            shipper.wait(22, timeout=1.5)
        status = shipper.status()
        assert status.index == 10 and status.lag_entries == 12 and status.last_error is not None
        assert not status.fenced
        stoppable_s3.start()
        assert shipper.wait(22, timeout=60) == 22
        assert shipper.status().last_error is None and shipper.status().lag_entries == 0
    report = restore(url, tmp_path / "b", options)
    assert report.head_index == 22 and report.skipped == []
    with open_journal(tmp_path / "b") as copy:
        assert copy.index == 22
        assert_state(copy.state, 22)
