"""Row 17: preemption. A child runs a journal loop with ``preemption=replay.Preemption(...)``
and gets SIGTERM or SIGUSR1 at random moments (inside a handler, between applies); it must
exit as documented (status 128 + signum, or PreemptedError with then="raise"), and the next
open replays nothing and holds the bytes of an uninterrupted fold of the same entries.

The child is forked from the test process (`_Forked`); run as a script, this file is the
child too:  python test_preemption.py DIR STEPS THEN GRACE SLOW_FLAG
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

if __name__ == "__main__":  # the child: importable without the test package
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import pytest  # noqa: E402
import torch  # noqa: E402

import replay  # noqa: E402
from replay.determinism import fingerprint  # noqa: E402

pytestmark = [pytest.mark.crash, pytest.mark.fault_preemption]

STEPS = 400
WIDTH = 48


def make_state():
    g = torch.Generator().manual_seed(3)
    return {"w": torch.randn(WIDTH, WIDTH, generator=g, dtype=torch.float64),
            "used": torch.zeros(STEPS, dtype=torch.int64)}


def make_ops(slow_flag: Path | None = None):
    ops = replay.Ops()

    @ops.op
    def train(state, *, seed):
        # A few ms of real work, so that signals land inside handlers as well as between them.
        g = replay.seeded_generator(seed)
        x = torch.randn(WIDTH, WIDTH, generator=g, dtype=torch.float64)
        w = state["w"]
        for _ in range(20):
            w.copy_(torch.tanh(w @ x * 0.05 + w))
        state["used"][seed] += 1
        if slow_flag is not None and slow_flag.exists():
            time.sleep(120)  # a handler that outlives the grace period
        return float(w.sum())

    return ops


def fold(steps: int):
    """The state of an uninterrupted run of `steps` entries, without a journal."""
    state, train = make_state(), make_ops().spec("train").handler
    for step in range(steps):
        train(state, seed=step)
    return state


def child(root: str, steps: int, then: str, grace: float, slow_flag: str | None) -> None:
    torch.set_num_threads(1)
    ops = make_ops(Path(slow_flag) if slow_flag else None)
    journal = replay.Journal.open(root, state=make_state(), ops=ops, snapshot=replay.Every(entries=7), digest_every=5,
                                  durability="group", preemption=replay.Preemption(grace=grace, then=then))
    print("ready", journal.count(), journal.recovery.entries_replayed, flush=True)
    try:
        for step in range(journal.count(), steps):
            journal.apply("train", seed=step)
            print("applied", step, flush=True)
            time.sleep(0.001)  # "data loading" between applies: signals land here too
    except replay.PreemptedError as exc:
        print("preempted", exc.signum, flush=True)
        sys.exit(0)
    journal.close()
    print("done", flush=True)


class _Forked:
    """`child(...)` in a process forked from the test (torch is already imported), with the
    parts of a subprocess.Popen these tests use: text `stdout` and `stderr` pipes,
    `send_signal`, `communicate`, `poll`, `kill`, `wait` and `returncode` (negative for a
    signal). Its exit status is what the interpreter would give: SystemExit's code, 1 after
    an uncaught exception, or the signal that ended it."""

    def __init__(self, *args):
        out_r, out_w = os.pipe()
        err_r, err_w = os.pipe()
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                os.close(out_r)
                os.close(err_r)
                os.dup2(out_w, 1)
                os.dup2(err_w, 2)
                sys.stdout = open(1, "w", buffering=1, closefd=False)
                sys.stderr = open(2, "w", buffering=1, closefd=False)
                child(*args)
                code = 0
            except SystemExit as stop:
                code = stop.code if isinstance(stop.code, int) else (0 if stop.code is None else 1)
            except BaseException:  # noqa: BLE001 - as the interpreter does with an uncaught exception
                import traceback

                traceback.print_exc()
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(code)
        os.close(out_w)
        os.close(err_w)
        self.pid, self.returncode = pid, None
        self.stdout, self.stderr = open(out_r, encoding="utf-8"), open(err_r, encoding="utf-8")

    def send_signal(self, signum) -> None:
        os.kill(self.pid, signum)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)

    def poll(self):
        if self.returncode is None:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                self.returncode = os.waitstatus_to_exitcode(status)
        return self.returncode

    def wait(self, timeout: float = 120):
        deadline = time.monotonic() + timeout
        while self.poll() is None:
            if time.monotonic() > deadline:
                raise subprocess.TimeoutExpired(f"forked child {self.pid}", timeout)
            time.sleep(0.01)
        return self.returncode

    def communicate(self, timeout: float = 120):
        out, err = self.stdout.read(), self.stderr.read()  # to EOF: the child has exited or closed them
        self.stdout.close()
        self.stderr.close()
        self.wait(timeout)
        return out, err


def _start(root, then="exit", grace=20.0, slow_flag=None, fresh=False):
    """The child, forked; `fresh`: a real interpreter running this file (its exit then goes
    through the interpreter's own shutdown: atexit, thread joins), at ~2 CPU-seconds more."""
    if fresh:
        args = [sys.executable, __file__, str(root), str(STEPS), then, str(grace), str(slow_flag or "")]
        return subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    return _Forked(str(root), STEPS, then, grace, str(slow_flag) if slow_flag else None)


def _wait_for(proc, prefix: str, count: int = 1) -> list[str]:
    seen = []
    while len(seen) < count:
        line = proc.stdout.readline()
        if not line:
            raise AssertionError(f"child ended before {count} {prefix!r} lines: {proc.stderr.read()[-3000:]}")
        if line.startswith(prefix):
            seen.append(line.split())
    return seen


def _recovered(root):
    """Open the journal (no preemption) and return (count, entries replayed, fingerprint); leaves it untouched."""
    journal = replay.Journal.open(root, state=make_state(), ops=make_ops(), snapshot=replay.Every())
    try:
        return journal.count(), journal.recovery.entries_replayed, fingerprint(journal.state)
    finally:
        journal.abandon()


@pytest.mark.timeout(280)
def test_sigterm_or_sigusr1_at_random_moments_exits_as_documented_and_the_next_open_replays_nothing(tmp_path):
    rng = random.Random(1717)
    root = tmp_path / "journal"
    runs, outcomes = 8, []
    for run in range(runs):
        signum = rng.choice([signal.SIGTERM, signal.SIGUSR1])
        then = "raise" if run % 4 == 3 else "exit"
        proc = _start(root, then, fresh=run in (0, 3))  # one exit and one raise in a real interpreter
        try:
            _wait_for(proc, "ready")
            _wait_for(proc, "applied", rng.randint(1, 6))
            time.sleep(rng.uniform(0, 0.004))  # inside a handler or between applies
            proc.send_signal(signum)
            out, err = proc.communicate(timeout=120)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        if then == "exit":
            assert proc.returncode == 128 + signum, (run, proc.returncode, err[-2000:])
        else:
            assert proc.returncode == 0 and f"preempted {int(signum)}" in out, (run, proc.returncode, err[-2000:])
        assert "grace" not in err and "Traceback" not in err, err[-2000:]
        count, replayed, state = _recovered(root)
        assert replayed == 0, f"run {run}: the preempted child left {replayed} entries to replay"
        assert state == fingerprint(fold(count)), f"run {run}: state differs from a fold of {count} entries"
        outcomes.append((then, int(signum), count))
    counts = [c for _, _, c in outcomes]
    assert counts == sorted(counts) and counts[-1] >= runs  # every run made progress and kept it
    assert {s for _, s, _ in outcomes} == {int(signal.SIGTERM), int(signal.SIGUSR1)}


@pytest.mark.timeout(200)
def test_a_stop_that_overruns_the_grace_period_exits_anyway_with_what_is_durable(tmp_path):
    root, flag = tmp_path / "journal", tmp_path / "slow"
    proc = _start(root, "exit", grace=0.5, slow_flag=flag)
    try:
        _wait_for(proc, "ready")
        _wait_for(proc, "applied", 3)
        flag.touch()  # the next handler hangs: the signal waits for it, the grace period runs out
        time.sleep(0.05)
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    flag.unlink()
    assert proc.returncode == 128 + signal.SIGTERM, (proc.returncode, err[-2000:])
    assert "grace of 0.5 s expired" in err
    count, replayed, state = _recovered(root)  # the durable prefix, replayed: invariants 1 and 3
    assert count >= 3
    assert state == fingerprint(fold(count))


@pytest.mark.timeout(120)
def test_a_forked_child_acts_as_the_previous_handler_and_never_touches_the_log(tmp_path):
    """A DataLoader worker is a fork: the inherited handler must not stop the parent's journal there."""
    ops = make_ops()
    journal = replay.Journal.open(tmp_path, state=make_state(), ops=ops,
                                  preemption=replay.Preemption(signals=(signal.SIGUSR1,), then="raise"))
    try:
        journal.apply("train", seed=0)
        pid = os.fork()
        if pid == 0:
            try:
                os.kill(os.getpid(), signal.SIGUSR1)  # default action of SIGUSR1: terminate
                time.sleep(5)
            finally:
                os._exit(7)
        _, status = os.waitpid(pid, 0)
        assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGUSR1
        journal.apply("train", seed=1)  # the parent's journal is untouched and open
        assert journal.count() == 2
    finally:
        journal.close()


if __name__ == "__main__":
    child(sys.argv[1], int(sys.argv[2]), sys.argv[3], float(sys.argv[4]), sys.argv[5] or None)
