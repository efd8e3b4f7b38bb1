"""The write paths' own guarantees: the map-resize gate keeps a growth away from write
transactions and readers alike (lmdbenv.TxnGate), and sync mode's one-frame append
(Storage.append_one) keeps `write`'s fence, collision check and map growth."""

import threading

import pytest

from eventlog import EventLog, FencedError, LogError, record
from eventlog.lmdbenv import TxnGate


def _grow_in_thread(gate):
    """Start a thread that runs an exclusive section; returns (thread, event set inside it)."""
    ran = threading.Event()
    thread = threading.Thread(target=gate.run_exclusive, args=(ran.set,), daemon=True)
    thread.start()
    return thread, ran


def test_growth_waits_for_a_write_transaction_of_another_thread():
    gate = TxnGate()
    holding, release = threading.Event(), threading.Event()

    def writer():
        with gate.writing:
            holding.set()
            release.wait(30)

    w = threading.Thread(target=writer, daemon=True)
    w.start()
    assert holding.wait(30)
    grower, ran = _grow_in_thread(gate)
    assert not ran.wait(0.2)  # the writer's transaction is open: no resize under it
    release.set()
    assert ran.wait(30)
    grower.join(30)
    w.join(30)


def test_growth_waits_for_readers_and_readers_wait_for_growth():
    gate = TxnGate()
    gate.__enter__()  # a read transaction of this thread
    grower, ran = _grow_in_thread(gate)
    assert not ran.wait(0.2)
    gate.__exit__(None, None, None)
    assert ran.wait(30)
    grower.join(30)
    # Exclusive: a reader arriving during the growth waits for it to end.
    inside, leave, entered = threading.Event(), threading.Event(), threading.Event()

    def grow():
        inside.set()
        leave.wait(30)

    g = threading.Thread(target=gate.run_exclusive, args=(grow,), daemon=True)
    g.start()
    assert inside.wait(30)

    def read():
        with gate:
            entered.set()

    r = threading.Thread(target=read, daemon=True)
    r.start()
    assert not entered.wait(0.2)
    leave.set()
    assert entered.wait(30)
    g.join(30)
    r.join(30)


def test_the_writing_thread_may_grow_the_map_between_its_transactions():
    gate = TxnGate()
    with gate.writing:  # re-entrant: a writer's own growth does not wait for itself
        assert gate.run_exclusive(lambda: "grown") == "grown"


def test_sync_append_refuses_a_colliding_key_and_writes_nothing(tmp_path):
    with EventLog.open(tmp_path / "log", durability="sync") as log:
        log.append("a", 1)
        log.append("b", 2)
        storage = log._storage
        with pytest.raises(LogError, match="index 1 collides"):
            storage.append_one(log.term, record.key(1), b"not an entry")
        assert [(e.op, e.payload) for e in log.entries()] == [("a", 1), ("b", 2)]
        assert log.verify().ok
        assert log.append("c", 3) == 3


def test_sync_append_is_fenced_before_it_writes(tmp_path):
    path = tmp_path / "log"
    old = EventLog.open(path, durability="sync")
    old.append("old", 1)
    new = EventLog.open(path, takeover=True)
    with pytest.raises(FencedError):
        old._storage.append_one(old.term, record.key(2), b"zombie")  # the fence, not the writer's checks
    with pytest.raises(FencedError):
        old.append("zombie", 2)
    assert [e.payload for e in new.entries()] == [1]
    assert new.append("new", 2) == 2
    new.close()
    old.close()


class OpName(str):
    pass


@pytest.mark.parametrize("mode", ["sync", "group"])
def test_op_names_are_checked_whether_or_not_seen_before(tmp_path, mode):
    with EventLog.open(tmp_path / "log", durability=mode) as log:
        assert log.append("seen", 1) == 1
        assert log.append("seen", 2) == 2  # the cached name
        assert log.append(OpName("seen"), 3) == 3  # a str subclass takes check_op: the same bytes
        for bad, error in ((b"seen", TypeError), (["seen"], TypeError), (None, TypeError),
                           ("", ValueError), ("x" * 1025, ValueError), ("\ud800", UnicodeEncodeError)):
            with pytest.raises(error):
                log.append(bad, 4)
        assert log.append("é" * 512, 4) == 4  # 1024 bytes of UTF-8: the longest name
        log.flush()
        assert [e.op for e in log.entries()] == ["seen", "seen", "seen", "é" * 512]


def test_sync_append_on_an_environment_without_meta_syncs_is_durable_on_return(tmp_path):
    """A sync writer that takes over from a group writer of the same process shares its
    environment, opened without LMDB's per-commit meta sync: each sync append then syncs
    once more before it returns."""
    path = tmp_path / "log"
    old = EventLog.open(path, durability="group")
    try:
        with EventLog.open(path, durability="sync", takeover=True) as log:
            assert not log._writer.meta_synced
            for n in range(1, 4):
                assert log.append("step", n) == n
                assert log.durable_index == log.last_index == n
            assert [e.payload for e in log.entries()] == [1, 2, 3]
    finally:
        old.close()
    with EventLog.open(path, readonly=True) as reader:
        assert [e.payload for e in reader.entries()] == [1, 2, 3] and reader.verify().ok


def test_group_appends_readers_and_waiters_beside_commits_in_progress(tmp_path):
    """Group commits put their batches while appenders, a reader and a waiter run in other
    threads (small batches: many commits overlap the appends): nothing is lost, doubled or
    reordered, every read sees a contiguous verified prefix, and the waiter's entries
    are durable when it returns."""
    log = EventLog.open(tmp_path / "log", durability="group", group_max_batch=64, group_window=0.01)
    threads, per = 4, 1500
    errors, seen_lengths = [], []
    done = threading.Event()

    def append(t):
        try:
            for n in range(per):
                i = log.append("step", {"t": t, "n": n})
                if n % 500 == 499:
                    log.wait_durable(i)
                    assert log.durable_index >= i
        except BaseException as exc:  # reported below
            errors.append(exc)

    def read():
        try:
            while not done.is_set():
                entries = list(log.entries())
                assert [e.index for e in entries] == list(range(1, len(entries) + 1))
                seen_lengths.append(len(entries))
        except BaseException as exc:
            errors.append(exc)

    workers = [threading.Thread(target=append, args=(t,), daemon=True) for t in range(threads)]
    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    for w in workers:
        w.start()
    for w in workers:
        w.join(120)
    done.set()
    reader.join(120)
    try:
        assert not errors, errors
        assert not any(w.is_alive() for w in workers) and not reader.is_alive()
        assert log.flush() == threads * per
        payloads = [e.payload for e in log.entries()]
        for t in range(threads):
            assert [p["n"] for p in payloads if p["t"] == t] == list(range(per))
        assert log.verify().ok
        assert seen_lengths == sorted(seen_lengths)  # reads never went backwards
    finally:
        log.close()
