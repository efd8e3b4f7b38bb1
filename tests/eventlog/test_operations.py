"""Operational must-haves: map growth, stale readers, fork, cross-process readers,
locking and fencing, refused paths, and damage detection."""

import multiprocessing
import os
import signal
import struct
import subprocess
import sys
import textwrap
import time

import lmdb
import pytest

import eventlog.locking
from eventlog import (
    CorruptEntryError, EventLog, FencedError, FormatError, LockedError, LogError,
)
from eventlog.record import key


def run_child(code, *args, timeout=60):
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code), *map(str, args)],
                          capture_output=True, text=True, timeout=timeout)


# --- map growth ------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["sync", "group"])
def test_map_grows_from_a_tiny_map(tmp_path, mode):
    blob = os.urandom(50_000)
    with EventLog.open(tmp_path / "log", durability=mode, map_size=64 * 1024) as log:
        for i in range(120):  # ~6 MB through a 64 KiB initial map
            log.append("blob", {"i": i, "b": blob})
        log.flush()
        assert log._storage.env.info()["map_size"] >= 6_000_000
        assert [e.payload["i"] for e in log.entries()] == list(range(120))
    with EventLog.open(tmp_path / "log", readonly=True) as reader:
        assert reader.last_index == 120 and reader.verify().ok


def test_reader_in_another_process_survives_map_growth(tmp_path):
    path = tmp_path / "log"
    with EventLog.open(path, map_size=64 * 1024) as log:
        log.append("first", 0)
        reader = subprocess.Popen([sys.executable, "-c", textwrap.dedent("""
            import sys, time
            from eventlog import EventLog
            log = EventLog.open(sys.argv[1], readonly=True)
            seen = 0
            deadline = time.monotonic() + 60
            while seen < 200 and time.monotonic() < deadline:
                seen = sum(1 for _ in log.entries())
            print(seen, log.verify().ok)
        """), str(path)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        blob = os.urandom(40_000)
        for i in range(1, 200):
            log.append("blob", {"i": i, "b": blob})
        out, err = reader.communicate(timeout=90)
    assert reader.returncode == 0, err
    assert out.split() == ["200", "True"]


# --- readers and fork ---------------------------------------------------------------


HOLDER = """
import sys, lmdb
env = lmdb.open(sys.argv[1], readonly=True, max_dbs=2)
print("ready", flush=True)
for line in sys.stdin:  # each line asks for the reader table
    print(repr(env.readers()), flush=True)
"""


def test_stale_reader_slots_are_cleared_on_open(tmp_path):
    # LMDB resets its reader table when no live process has the environment open, so a
    # stale slot only matters (and only shows) while another process keeps it open.
    path = tmp_path / "log"
    with EventLog.open(path) as log:
        log.append("a", 1)
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(path)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "ready"  # open before the reader, so it never resets the table
    reader = subprocess.Popen([sys.executable, "-c", textwrap.dedent("""
        import sys, time, lmdb
        env = lmdb.open(sys.argv[1], readonly=True, max_dbs=2)
        txn = env.begin()
        print("holding", flush=True)
        time.sleep(60)
    """), str(path)], stdout=subprocess.PIPE, text=True)
    try:
        assert reader.stdout.readline().strip() == "holding"
        os.kill(reader.pid, signal.SIGKILL)
        reader.wait()

        def readers_seen_by_holder():
            holder.stdin.write("?\n")
            holder.stdin.flush()
            return holder.stdout.readline()

        assert f"{reader.pid} " in readers_seen_by_holder()  # the dead reader still owns a slot
        with EventLog.open(path) as log:
            log.append("b", 2)
        assert f"{reader.pid} " not in readers_seen_by_holder()
    finally:
        holder.kill()
        holder.wait()


def _use_parent_log(log, queue):
    try:
        log.append("from-child", 1)
        queue.put("no error")
    except LogError as exc:
        queue.put(f"LogError: {exc}")


def _open_in_child(path, queue):
    with EventLog.open(path, readonly=True) as log:
        queue.put([e.payload for e in log.entries()])


def test_a_log_does_not_cross_fork_but_a_child_process_can_open_it(tmp_path):
    queue_fork = multiprocessing.get_context("fork").Queue()
    with EventLog.open(tmp_path / "log") as log:
        log.append("a", 1)
        child = multiprocessing.get_context("fork").Process(target=_use_parent_log, args=(log, queue_fork))
        child.start()
        child.join(30)
        assert "opened in pid" in queue_fork.get(timeout=5)
        spawn = multiprocessing.get_context("spawn")
        queue_spawn = spawn.Queue()
        child = spawn.Process(target=_open_in_child, args=(str(tmp_path / "log"), queue_spawn))
        child.start()
        assert queue_spawn.get(timeout=60) == [1]
        child.join(30)
        log.append("b", 2)  # the parent's log is untouched by either child
        assert log.verify().ok


def test_forked_child_does_not_keep_the_writer_lock(tmp_path):
    path = tmp_path / "log"
    log = EventLog.open(path)
    pid = os.fork()
    if pid == 0:  # child: outlive the parent's close while holding the inherited fds
        time.sleep(3)
        os._exit(0)
    try:
        log.close()
        with EventLog.open(path) as again:  # would raise LockedError if the child held the lock
            assert again.term == 2
    finally:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)


def test_concurrent_reader_process_sees_a_consistent_prefix(tmp_path):
    path = tmp_path / "log"
    with EventLog.open(path, durability="group") as log:
        log.append("step", 0)
        log.flush()
        reader = subprocess.Popen([sys.executable, "-c", textwrap.dedent("""
            import sys
            from eventlog import EventLog
            log = EventLog.open(sys.argv[1], readonly=True)
            scans = 0
            last = 0
            while last < 3000:
                payloads = [e.payload for e in log.entries()]
                assert payloads == list(range(len(payloads))), "not a prefix"
                assert len(payloads) >= last, "went backwards"
                last = len(payloads)
                scans += 1
            print(scans)
        """), str(path)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for i in range(1, 3000):
            log.append("step", i)
        log.flush()
        out, err = reader.communicate(timeout=120)
    assert reader.returncode == 0, err
    assert int(out) >= 1


# --- locking and fencing -------------------------------------------------------------


def test_second_writer_gets_locked_error_at_once(tmp_path):
    path = tmp_path / "log"
    with EventLog.open(path):
        started = time.monotonic()
        result = run_child("""
            import sys
            from eventlog import EventLog, LockedError
            try:
                EventLog.open(sys.argv[1])
            except LockedError as exc:
                print("locked:", exc)
        """, path)
        assert "locked:" in result.stdout and f"pid {os.getpid()}" in result.stdout
        assert time.monotonic() - started < 30  # did not hang waiting for the lock
        with pytest.raises(LockedError):
            EventLog.open(path)
        with EventLog.open(path, readonly=True) as reader:  # readers need no lock
            assert reader.last_index == 0


def test_takeover_fences_the_old_writer(tmp_path):
    path = tmp_path / "log"
    old = EventLog.open(path)
    old.append("old", 1)
    new = EventLog.open(path, takeover=True)
    assert new.term == old.term + 1
    with pytest.raises(FencedError, match="term 1 is fenced"):
        old.append("zombie", 2)
    with pytest.raises(FencedError):
        old.append("zombie", 3)  # stays fenced
    new.append("new", 2)
    assert [(e.term, e.payload) for e in new.entries()] == [(1, 1), (2, 2)]
    old.close()
    new.close()


def test_fenced_group_writer_loses_only_unacknowledged_entries(tmp_path):
    path = tmp_path / "log"
    old = EventLog.open(path, durability="group", group_window=0.5)
    old.append("durable", 1)
    old.flush()
    new = EventLog.open(path, takeover=True)
    old.append("pending", 2)  # accepted into the buffer, but the flush is fenced
    with pytest.raises(Exception) as raised:
        old.wait_durable(2)
    assert isinstance(raised.value, LogError)
    assert [e.payload for e in new.entries()] == [1]
    new.close()
    with pytest.raises(LogError):
        old.close()


# --- refused paths -------------------------------------------------------------------


def test_network_filesystems_are_refused(tmp_path, monkeypatch):
    monkeypatch.setattr(eventlog.locking, "filesystem_type", lambda path: "nfs4")
    with pytest.raises(LogError, match="network filesystem \\(nfs4\\)"):
        EventLog.open(tmp_path / "log")


def test_paths_that_are_not_logs(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(FormatError, match="is a file"):
        EventLog.open(tmp_path / "file")
    (tmp_path / "foreign").mkdir()
    (tmp_path / "foreign" / "notes.txt").write_text("x")
    with pytest.raises(FormatError, match="non-empty directory"):
        EventLog.open(tmp_path / "foreign")
    with pytest.raises(FormatError, match="does not exist"):
        EventLog.open(tmp_path / "missing", readonly=True)
    with pytest.raises(FormatError, match="not an event log"):
        EventLog.open(tmp_path / "foreign", readonly=True)
    with pytest.raises(ValueError, match="durability"):
        EventLog.open(tmp_path / "log", durability="fast")


def test_a_newer_format_version_is_refused(tmp_path):
    path = tmp_path / "log"
    EventLog.open(path).close()
    env = lmdb.open(str(path), max_dbs=2)
    with env.begin(write=True, db=env.open_db(b"meta")) as txn:
        txn.put(b"format", struct.pack(">I", 3))
    env.close()
    for readonly in (False, True):
        with pytest.raises(FormatError, match="format version 3"):
            EventLog.open(path, readonly=readonly)


# --- damage ------------------------------------------------------------------------


def _rewrite_value(path, index, mutate):
    env = lmdb.open(str(path), max_dbs=2)
    db = env.open_db(b"entries")
    with env.begin(write=True, db=db) as txn:
        txn.put(key(index), mutate(bytearray(txn.get(key(index)))))
    env.close()


def _flip_last_byte(value):
    value[-1] ^= 0x01
    return bytes(value)


def _make_log(path, n=10):
    with EventLog.open(path) as log:
        for i in range(1, n + 1):
            log.append("step", {"i": i, "pad": b"p" * 50})


def test_bit_flip_is_a_named_corrupt_entry(tmp_path):
    path = tmp_path / "log"
    _make_log(path)
    _rewrite_value(path, 6, _flip_last_byte)
    with EventLog.open(path, readonly=True) as log:
        with pytest.raises(CorruptEntryError) as raised:
            log.entry(6)
        assert raised.value.index == 6
        assert log.entry(7).payload["i"] == 7  # the chain seeds from the stored checksum
        seen = []
        with pytest.raises(CorruptEntryError, match="entry 6"):
            for entry in log.entries():
                seen.append(entry.index)
        assert seen == [1, 2, 3, 4, 5]  # nothing after the damage is handed out
        report = log.verify()  # reports, never raises
        assert not report.ok and [d.index for d in report.damage] == [6]
        assert "damaged at 6" in str(report)


def test_truncated_value_is_a_named_corrupt_entry(tmp_path):
    path = tmp_path / "log"
    _make_log(path)
    _rewrite_value(path, 3, lambda v: bytes(v[:-7]))
    with EventLog.open(path, readonly=True) as log:
        with pytest.raises(CorruptEntryError, match="entry 3 .*bytes"):
            log.entry(3)
        assert [d.index for d in log.verify().damage] == [3]


def test_bit_flip_in_the_data_file(tmp_path):
    path = tmp_path / "log"
    with EventLog.open(path) as log:
        for i in range(1, 6):
            log.append("step", {"marker": f"MARK{i:04d}".encode() * 4})
    data = bytearray((path / "data.mdb").read_bytes())
    at = data.find(b"MARK0003")
    assert at > 0
    data[at + 2] ^= 0x10
    (path / "data.mdb").write_bytes(bytes(data))
    with EventLog.open(path, readonly=True) as log:
        assert [d.index for d in log.verify().damage] == [3]
        with pytest.raises(CorruptEntryError) as raised:
            log.entry(3)
        assert raised.value.index == 3


def test_a_damaged_last_entry_blocks_appends_until_truncated(tmp_path):
    path = tmp_path / "log"
    _make_log(path, n=4)
    _rewrite_value(path, 4, lambda v: bytes(v[:10]))
    with EventLog.open(path) as log:
        with pytest.raises(LogError, match=r"truncate_after\(3\)"):
            log.append("next", 5)
        log.truncate_after(3)
        assert log.append("next", 5) == 4
        assert log.verify().ok


def test_writer_pid_names_the_live_writer_only(tmp_path):
    from eventlog import writer_pid

    path = tmp_path / "log"
    assert writer_pid(path) is None  # no log at all
    with EventLog.open(path):
        probe = run_child("import sys; from eventlog import writer_pid; print(writer_pid(sys.argv[1]))", path)
        assert probe.stdout.strip() == str(os.getpid())
    assert writer_pid(path) is None  # the lock file stays, but nobody holds it


# --- observing group commits ---------------------------------------------------------


def test_on_commit_reports_each_group_commit_once_it_is_durable(tmp_path):
    """The hook bench/log.py observes group commits through: contiguous ranges covering
    every appended entry, each already durable when reported."""
    seen = []
    log = EventLog.open(tmp_path / "log", durability="group", group_max_batch=7,
                        on_commit=lambda r: seen.append((r, log.durable_index)))
    with log:
        for i in range(50):
            log.append("op", i)
            if i % 9 == 0:
                log.flush()
        log.flush()
    ranges = [r for r, _ in seen]
    assert [i for r in ranges for i in r] == list(range(1, 51))
    assert all(len(r) <= 7 for r in ranges) and len(ranges) >= 50 // 7
    assert all(durable >= r[-1] for r, durable in seen)


def test_a_probe_holding_the_writer_lock_shared_never_fails_a_writer_open(tmp_path, monkeypatch):
    """`writer_pid` and readers without a lock file probe writer.lock with a brief shared
    flock (issue 19 item 6); a writer opening in that instant tries again, not LockedError."""
    import fcntl

    from eventlog import locking

    real, refused = fcntl.flock, []

    def flock(fd, op):
        if op == fcntl.LOCK_EX | fcntl.LOCK_NB and not refused:
            refused.append(fd)
            raise BlockingIOError(11, "Resource temporarily unavailable")  # the probe held it just then
        return real(fd, op)

    monkeypatch.setattr(locking.fcntl, "flock", flock)
    with EventLog.open(tmp_path / "log") as log:
        assert refused and log.append("step", 1) == 1
