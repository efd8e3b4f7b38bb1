"""Row 10 (races), event-log side: verify beside a live writer, and the takeover lock.

- A writer process compacts, truncates and appends without pause while this process
  verifies the log readonly, over and over, in tiny read batches: every verdict is sound
  (a compaction or truncation between two batches is not damage).
- A hung writer (sleeping, or SIGSTOPped) is taken over by another process; the hung one
  then writes (and is fenced) or is killed. While the takeover writer lives a plain open
  gets LockedError and writer_pid names it; the fenced writer's error says it was fenced
  and never advises reopening.
"""

from __future__ import annotations

import fcntl
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

import eventlog.verification
from eventlog import EventLog, LockedError, writer_pid

pytestmark = [pytest.mark.crash, pytest.mark.fault_race]

CHURN = textwrap.dedent("""
    import sys
    from eventlog import Archive, EventLog
    path, rounds = sys.argv[1], int(sys.argv[2])
    archive = Archive() if sys.argv[4] == "archive" else None
    with EventLog.open(path, durability=sys.argv[3], archive=archive) as log:
        print("READY", flush=True)
        for r in range(rounds):
            log.append_many([("step", {"r": r, "k": k}) for k in range(20)])
            log.flush()
            log.compact_through(log.live_first_index + 14)
            if r % 3 == 0:
                log.truncate_after(log.last_index - 4)
        print("DONE", log.first_index, log.last_index, flush=True)
""")


@pytest.mark.timeout(200)
@pytest.mark.parametrize("mode,archive", [("sync", "none"), ("group", "none"), ("group", "archive")])
def test_verify_beside_a_compacting_truncating_writer_reports_no_phantom_damage(tmp_path, monkeypatch, mode, archive):
    """Compaction deletes (archive=None) or seals into the archive: either way the LMDB
    boundary moves under the reader, and no verdict may call that damage."""
    path = tmp_path / "log"
    with EventLog.open(path) as log:
        log.append_many([("seed", {"k": k}) for k in range(300)])
    monkeypatch.setattr(eventlog.verification, "READ_BATCH", 4)  # many batches: many windows for the race
    writer = subprocess.Popen([sys.executable, "-c", CHURN, str(path), "400", mode, archive],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert writer.stdout.readline().strip() == "READY"
        verdicts = moved = 0
        with EventLog.open(path, readonly=True) as reader:
            while writer.poll() is None or verdicts < 5:
                before = reader.live_first_index
                report = reader.verify()
                verdicts += 1
                assert report.ok, f"verify {verdicts} beside a live writer: {report}"
                moved += reader.live_first_index != before
        assert writer.wait(120) == 0
    finally:
        if writer.poll() is None:
            writer.kill()
            writer.wait()
    print(f"row 10 live verify ({mode}, {archive}): {verdicts} sound verdicts while 400 rounds of append/compact/truncate ran "
          f"({moved} verifies saw the boundary move)")
    assert moved >= 1, "the writer never compacted during a verify: this run tested nothing"


HUNG = textwrap.dedent("""
    import sys
    from eventlog import EventLog, LogError
    log = EventLog.open(sys.argv[1], durability=sys.argv[2])
    log.append("hung", 0)
    log.flush()
    print("READY", flush=True)
    sys.stdin.readline()  # hung until told to write
    try:
        log.append("zombie", 1)
        log.flush()
        print("WROTE", flush=True)
    except LogError as exc:
        print("ERROR", type(exc).__name__, exc, flush=True)
    sys.stdin.readline()
    try:
        log.close()
    except LogError:
        pass
""")

TAKEOVER = textwrap.dedent("""
    import sys
    from eventlog import EventLog
    log = EventLog.open(sys.argv[1], durability=sys.argv[2], takeover=True)
    print("READY", log.append("takeover", 0), flush=True)
    for line in sys.stdin:
        if line.strip() == "append":
            i = log.append("takeover", 1)
            log.flush()
            print("APPENDED", i, flush=True)
        else:
            break
    log.close()
""")


def _holder(lock_file):
    """The pid written in `lock_file` if a live process holds its flock, else None."""
    fd = os.open(lock_file, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return os.pread(fd, 32, 0).decode().strip()
    finally:
        os.close(fd)
    return None


def _start(script, path, mode):
    proc = subprocess.Popen([sys.executable, "-c", script, str(path), mode], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)
    line = proc.stdout.readline().split()
    assert line and line[0] == "READY", line
    return proc


def _tell(proc, line):
    proc.stdin.write(line + "\n")
    proc.stdin.flush()
    return proc.stdout.readline().strip()


def _plain_open_is_refused(path):
    with pytest.raises(LockedError) as raised:
        EventLog.open(path).close()
    return str(raised.value)


@pytest.mark.timeout(120)
@pytest.mark.parametrize("mode", ["sync", "group"])
@pytest.mark.parametrize("hung_ends", ["fenced write, then exit", "SIGSTOP, then SIGKILL"])
def test_takeover_writer_holds_the_lock_once_the_hung_one_is_gone(tmp_path, mode, hung_ends):
    path = tmp_path / "log"
    hung = _start(HUNG, path, mode)
    if hung_ends.startswith("SIGSTOP"):
        os.kill(hung.pid, signal.SIGSTOP)
    taker = _start(TAKEOVER, path, mode)
    try:
        assert writer_pid(path) == str(taker.pid)
        assert str(taker.pid) in _plain_open_is_refused(path)
        if hung_ends.startswith("fenced"):
            reply = _tell(hung, "write")
            assert reply.startswith("ERROR FencedError") and "fenced" in reply, reply
            assert "reopen" not in reply.replace("do not reopen", ""), reply  # never advice to reopen
            hung.stdin.write("exit\n")
            hung.stdin.flush()
        else:
            os.kill(hung.pid, signal.SIGKILL)
        hung.wait(30)
        # The takeover writer claims writer.lock once it is free (it polls; wait for it).
        for _ in range(500):
            if _holder(path / "writer.lock") == str(taker.pid):
                break
            time.sleep(0.01)
        assert _holder(path / "writer.lock") == str(taker.pid), "the takeover writer never took the free lock"
        assert writer_pid(path) == str(taker.pid)
        assert str(taker.pid) in _plain_open_is_refused(path)  # and the takeover writer is not fenced:
        assert _tell(taker, "append").startswith("APPENDED")
        taker.stdin.write("exit\n")
        taker.stdin.flush()
        assert taker.wait(30) == 0
    finally:
        for proc in (hung, taker):
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    assert writer_pid(path) is None
    with EventLog.open(path) as log:  # now a plain open is the writer
        assert [e.op for e in log.entries()] == ["hung", "takeover", "takeover"]
        assert log.verify().ok
