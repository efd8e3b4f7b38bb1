"""The supervisor's pure parts: the heartbeat file, the records read as untrusted input, and
the decision rules (replay/supervisor/policy.py) over attempt histories."""

from __future__ import annotations

import os
import random

import pytest

from replay.supervisor import layout
from replay.supervisor.heartbeat import SIZE, HeartbeatWriter, read
from replay.supervisor.policy import Options, Outcome, backoff_delay, classify, decide
from replay.supervisor.records import append_attempt, read_attempts, read_crash, write_crash
from replay.supervisor.vocabulary import CLASSES, FailureClass as C


def test_heartbeat_round_trip_and_hostile_files(tmp_path):
    path = tmp_path / "hb"
    writer = HeartbeatWriter(path)
    writer.update("applying", 41, "sgd_step")
    beat = read(path)
    assert (beat.phase, beat.index, beat.op, beat.pid) == ("applying", 41, "sgd_step", os.getpid())
    first = beat.sequence
    writer.update("idle", 41)
    assert read(path).sequence == first + 2 and read(path).op == "sgd_step"
    writer.update("applying", 42, "x" * 200)  # a long op name is cut, never overflows
    assert read(path).op == "x" * 63
    writer.update("recovering", 3, done=3, total=10)
    assert read(path).describe() == "recovering 3/10"
    writer.close()
    data = bytearray(path.read_bytes())
    assert len(data) == SIZE
    for bad in (b"", bytes(data[:64]), b"NOTABEAT" + bytes(data[8:]), bytes(data[:24]) + b"\xff" * 4 + bytes(data[28:])):
        path.write_bytes(bad)
        assert read(path) is None
    data[16] |= 1  # a writer that died mid-update: never settles
    path.write_bytes(bytes(data))
    assert read(path) is None
    assert read(tmp_path / "missing") is None
    os.symlink(tmp_path / "elsewhere", tmp_path / "link")
    assert read(tmp_path / "link") is None


def test_a_forked_child_never_writes_the_parents_heartbeat(tmp_path):
    path = tmp_path / "hb"
    writer = HeartbeatWriter(path)
    writer.update("idle", 5)
    pid = os.fork()
    if pid == 0:
        writer.update("idle", 99)
        os._exit(0)
    os.waitpid(pid, 0)
    assert read(path).index == 5
    writer.close()


def test_crash_records_and_attempts_are_read_as_untrusted(tmp_path):
    try:
        raise ValueError("bad batch")
    except ValueError as exc:
        write_crash(tmp_path / "c.json", phase="applying", op="step", index=7, exc=exc)
    record = read_crash(tmp_path / "c.json")
    assert (record["op"], record["index"], record["message"], record["oom"]) == ("step", 7, "bad batch", False)
    assert record["type"] == "builtins.ValueError" and "Traceback" in record["traceback"]
    (tmp_path / "bad.json").write_text('{"phase": "applying", "op": 3}')
    assert read_crash(tmp_path / "bad.json") is None
    (tmp_path / "nan.json").write_text('{"phase": NaN}')
    assert read_crash(tmp_path / "nan.json") is None
    fields = dict.fromkeys(("attempt", "started", "ended", "class", "exit", "signal", "index_start", "index_end",
                            "decision", "entry", "message", "dump"))
    append_attempt(tmp_path, {**fields, "attempt": 1, "class": "crashed"})
    with open(tmp_path / layout.ATTEMPTS, "ab") as f:
        f.write(b'{"attempt": 2, "cla')  # a torn last line
    got, skipped = read_attempts(tmp_path)
    assert [a["attempt"] for a in got] == [1] and skipped == 1
    with pytest.raises(ValueError, match="exactly the fields"):
        append_attempt(tmp_path, {"attempt": 3})


def outcome(n, failure, start=0, end=0, op=None, index=None, signal=None, exit=1):
    return Outcome(n, failure, exit, signal, start, end, op, index)


def test_classify():
    base = dict(preempted_by=None, hung=False, crash=None, opened=True, oom_killed=False)
    assert classify(returncode=0, **{**base, "preempted_by": 15}) is C.FINISHED
    assert classify(returncode=143, **{**base, "preempted_by": 15}) is C.PREEMPTED
    assert classify(returncode=-9, **{**base, "hung": True}) is C.HANG
    assert classify(returncode=-9, **base) is C.CRASHED
    assert classify(returncode=-9, **{**base, "oom_killed": True}) is C.OOM
    assert classify(returncode=1, **{**base, "opened": False}) is C.STARTUP_ERROR
    assert classify(returncode=1, **base) is C.CRASHED
    crash = {"phase": "applying", "oom": False}
    assert classify(returncode=1, **{**base, "crash": crash}) is C.USER_ERROR
    assert classify(returncode=1, **{**base, "crash": {**crash, "oom": True}}) is C.OOM
    assert classify(returncode=1, **{**base, "crash": {**crash, "phase": "recovering"}}) is C.RECOVERY_ERROR
    assert classify(returncode=1, **{**base, "crash": {**crash, "phase": "opening"}}) is C.STARTUP_ERROR
    assert set(CLASSES) == {c.value for c in C}


def test_decide():
    o = Options(max_restarts=5, no_progress=3)
    assert decide([outcome(1, C.FINISHED, exit=0)], o).status == 0
    assert decide([outcome(1, C.PREEMPTED, signal=10)], o).status == 138
    assert decide([outcome(1, C.RECOVERY_ERROR)], o).status == 65
    assert decide([outcome(1, C.STARTUP_ERROR)], o).status == 78
    assert decide([outcome(1, C.CRASHED, 0, 5), outcome(2, C.STARTUP_ERROR, 5, 5)], o).restart
    first = outcome(1, C.USER_ERROR, 0, 5, "step", 6)
    assert decide([first], o).restart
    assert decide([first, outcome(2, C.USER_ERROR, 5, 5, "step", 6)], o).status == 65
    assert decide([first, outcome(2, C.USER_ERROR, 5, 9, "step", 10)], o).restart  # another entry
    stalled = [outcome(1, C.CRASHED, 0, 4)] + [outcome(n, C.HANG, 4, 4) for n in (2, 3, 4)]
    assert decide(stalled[:3], o).restart and decide(stalled, o).status == 75
    moving = [outcome(n, C.CRASHED, n, n + 1) for n in range(1, 7)]
    assert decide(moving[:5], o).restart and decide(moving, o).status == 75  # 5 restarts used


def test_backoff_doubles_without_progress_and_resets_after_it():
    o = Options(backoff=1.0, backoff_cap=5.0)
    rng = random.Random(1)
    stalled = [outcome(n, C.CRASHED, 3, 3) for n in range(1, 6)]
    delays = [backoff_delay(stalled[:k], o, rng) for k in range(1, 6)]
    assert 0.5 <= delays[0] <= 1.0 and 1.0 <= delays[1] <= 2.0 and 2.0 <= delays[2] <= 4.0
    assert all(d <= 5.0 for d in delays)
    assert 0.5 <= backoff_delay(stalled + [outcome(6, C.CRASHED, 3, 9)], o, rng) <= 1.0


def test_options_are_checked():
    for bad in ({"max_restarts": -1}, {"no_progress": 0}, {"grace": -1}, {"hang_timeout": 0}, {"backoff": "1"}):
        with pytest.raises(ValueError, match="--"):
            Options(**bad)


def test_a_peers_death_is_a_cascade_not_a_failure_of_its_own():
    from replay.errors import RankFailureError
    from replay.supervisor.records import is_peer_failure

    assert is_peer_failure(RankFailureError("rank 1 is gone"))
    assert is_peer_failure(RuntimeError("[../gloo/transport/tcp/pair.cc:534] Connection closed by peer [127.0.0.1]"))
    try:
        try:
            raise RuntimeError("Connection reset by peer")
        except RuntimeError as inner:
            raise ValueError("handler failed") from inner
    except ValueError as outer:
        assert is_peer_failure(outer)
    assert not is_peer_failure(ValueError("bad batch"))


def test_an_apply_the_journal_refused_is_not_a_user_error():
    base = dict(preempted_by=None, hung=False, opened=True, oom_killed=False)
    crash = {"phase": "applying", "oom": False, "handler": False}
    assert classify(returncode=1, crash=crash, **base) is C.CRASHED
    assert classify(returncode=1, crash={**crash, "handler": True}, **base) is C.USER_ERROR


def test_a_recovering_heartbeat_may_stand_still_for_a_batch_of_applies_as_slow_as_those_seen():
    """The recovering allowance: the start-up allowance until applies have been timed; then a
    replay batch of entries at the apply allowance, never less than start-up's."""
    from replay.supervisor.runner import REPLAY_BATCH, _Watch

    options = Options(startup_timeout=100.0, hang_timeout=None)
    learnt: list[float] = []
    watch = _Watch(options, learnt)
    assert watch.recovery_allowance() == 100.0
    learnt.extend([30.0] * 10)  # an earlier attempt's applies took 30 s each
    assert watch.recovery_allowance() == REPLAY_BATCH * watch.apply_allowance() > 100.0
    assert _Watch(options, learnt).recovery_allowance() == watch.recovery_allowance()  # kept across attempts

    fast = _Watch(Options(startup_timeout=100.0, hang_timeout=1.0))
    assert fast.recovery_allowance() == 100.0  # no applies timed yet
    fast.intervals.append(0.01)
    assert fast.recovery_allowance() == max(100.0, REPLAY_BATCH * 1.0)
