"""Row 15 (audit path). Item 18: `replay truncate` drops entries and writes its audit record in one
transaction. The operator command (`replay.operator.truncate`, what `replay truncate` runs)
runs in a forked child SIGKILLed by strace at its 1st, 2nd, ... fdatasync (and,
separately, pwrite64) until a run completes; after every kill the log holds either the
original entries untouched or the truncation together with its `replay.truncate` record.
Item 21 (first part): a full disk in group mode is reported as a full disk.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import textwrap

import pytest

from eventlog import EventLog
from replay.envelope import TRUNCATE_OP
from tests.crash.checker.traced import TracedChild
from tests.crash.checker.tracing import injecting

pytestmark = [pytest.mark.crash, pytest.mark.fault_audit]

ENTRIES, AFTER = 12, 8

def operator_truncate(root, after, out_fd):
    """The operator's truncate, in a child traced by strace (checker/traced.py)."""
    from replay.operator import truncate

    truncate(str(root), after=after, reason="poison entry")


def _state(root):
    with EventLog.open(root / "log", readonly=True) as log:
        assert log.verify().ok
        return [(e.index, e.op, e.payload) for e in log.entries()]


@pytest.mark.timeout(240)
@pytest.mark.parametrize("syscall", ["fdatasync", "pwrite64"])
def test_killed_truncate_keeps_both_or_neither(strace, tmp_path, syscall):
    source = tmp_path / "source"
    with EventLog.open(source / "log", durability="sync") as log:
        log.append_many([("step", {"n": n}) for n in range(ENTRIES)])
    original = _state(source)
    outcomes = {"untouched": 0, "truncated with record": 0}
    for when in range(1, 40):
        root = tmp_path / f"run{syscall}{when}"
        shutil.copytree(source, root)
        run = TracedChild(operator_truncate, root, AFTER, strace=strace,
                          inject=f"{syscall}:signal=KILL:when={when}").finish(timeout=120)
        assert run.status == 0 or run.killed, (run.status, run.stderr_tail())
        after = _state(root)
        if after == original:
            outcomes["untouched"] += 1
        else:
            assert after[:AFTER] == original[:AFTER], f"kill at {syscall} {when}: kept entries changed"
            assert len(after) == AFTER + 1, f"kill at {syscall} {when}: dropped entries without their record: {after}"
            index, op, payload = after[AFTER]
            assert (index, op) == (AFTER + 1, TRUNCATE_OP), after[AFTER]
            assert payload["p"]["after"] == AFTER and [d[0] for d in payload["p"]["dropped"]] == list(
                range(AFTER + 1, ENTRIES + 1))
            outcomes["truncated with record"] += 1
        shutil.rmtree(root)
        if run.status == 0:  # the command finished: every sync point before it was tried
            break
    else:
        pytest.fail(f"the truncate command never completed under {syscall} kills")
    print(f"row 15 truncate: {when - 1} kills at every {syscall} of `replay truncate` + 1 completed run: {outcomes}")
    assert outcomes["truncated with record"] >= 1


DISK_FULL_WRITER = textwrap.dedent("""
    import sys
    from eventlog import EventLog, LogError
    with EventLog.open(sys.argv[1], durability="group") as log:
        for n in range(30):
            try:
                log.wait_durable(log.append("step", {"n": n}))
            except LogError as exc:
                print("ERROR", type(exc).__name__, exc, flush=True)
                break
""")


@pytest.mark.timeout(120)
@pytest.mark.parametrize("fault", ["pwrite64:error=ENOSPC:when=6", "fdatasync:error=ENOSPC:when=5",
                                   "pwrite64:error=ENOSPC:when=9+"])
def test_disk_full_in_group_mode_says_the_disk_is_full(strace, tmp_path, fault):
    """Item 21: ENOSPC injected into a group-mode flush: the poisoned log's error says the
    disk is full, naming the log's path and the free bytes (not "Input/output error")."""
    path = tmp_path / "log"
    EventLog.open(path).close()
    proc = subprocess.run([*injecting(strace, fault),
                           sys.executable, "-c", DISK_FULL_WRITER, str(path)], capture_output=True, text=True,
                          timeout=100)
    errors = [line for line in proc.stdout.splitlines() if line.startswith("ERROR")]
    assert errors, f"{fault} never hit: {proc.stdout} {proc.stderr[-2000:]}"
    assert "LogPoisonedError" in errors[0] and "the disk is full" in errors[0], errors[0]
    assert str(path) in errors[0] and "bytes free" in errors[0], errors[0]
