"""`replay run` (replay/supervisor) driving real jobs (tests/supervisor/job.py): restarts
after SIGKILLs with a bit-identical end state, a hang caught with a stack dump naming the
function, a deterministic handler failure stopped after one confirmation (65), a command
that cannot start (78), no progress (75), preemption (143, never restarted, the next run
replays nothing), a CUDA OOM class; every attempt recorded and listed by `replay runs`.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.warm import run_replay
import torch

pytestmark = [pytest.mark.crash, pytest.mark.fault_supervisor, pytest.mark.timeout(240)]

ROOT = Path(__file__).resolve().parents[2]
JOB = Path(__file__).with_name("job.py")


def env() -> dict:
    path = [str(ROOT)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    return {**os.environ, "PYTHONPATH": os.pathsep.join(path)}


def supervise(directory, *job_args, options=(), timeout=200):
    """`replay run DIRECTORY ... -- python job.py DIRECTORY ARGS`. The supervisor starts warm
    (tests/warm.py: forked from a server that imported torch once); every job it starts is
    a real interpreter, as in production."""
    args = ["run", str(directory), "--backoff", "0", *map(str, options), "--",
            sys.executable, str(JOB), str(directory), *map(str, job_args)]
    return run_replay(args, cwd=ROOT, timeout=timeout, env=env())


def attempts(directory) -> list[dict]:
    done = run_replay(["runs", directory, "--json"], cwd=ROOT, env=env())
    assert done.returncode == 0, done.stderr
    return [json.loads(line) for line in done.stdout.splitlines()]


def reference(steps: int) -> str:
    w = torch.zeros(16)
    for n in range(1, steps + 1):
        g = torch.Generator().manual_seed(n)
        w.mul_(0.9).add_(torch.randn(w.shape, generator=g))
    return w.numpy().tobytes().hex()


def final(directory) -> str:
    return json.loads((Path(directory) / "final.json").read_text())["w"]


def test_sigkilled_job_is_restarted_and_ends_bit_identical(tmp_path):
    metrics = tmp_path / "replay.prom"
    run = supervise(tmp_path / "j", 20, "--kill", "1:7", "--kill", "2:15", options=("--metrics", metrics))
    assert run.returncode == 0, run.stderr
    text = metrics.read_text()
    assert 'replay_run_attempts_total{class="crashed"} 2.0' in text, text
    assert 'replay_run_attempts_total{class="finished"} 1.0' in text and "replay_run_up 0.0" in text
    assert "replay_run_durable_index 2" in text  # 20 steps plus digests/snapshot records: at least 20
    assert "replay_run_replica" not in text  # no replica configured: no replica gauges
    assert final(tmp_path / "j") == reference(20)
    got = attempts(tmp_path / "j")
    assert [a["class"] for a in got] == ["crashed", "crashed", "finished"]
    assert [a["signal"] for a in got[:2]] == [signal.SIGKILL, signal.SIGKILL]
    assert [a["decision"] for a in got] == ["restart", "restart", "stop"]
    assert got[0]["index_end"] > got[0]["index_start"] and got[1]["index_end"] > got[1]["index_start"]
    assert "replay run: attempt 1 crashed" in run.stderr


def test_a_hang_is_dumped_killed_and_restarted(tmp_path):
    run = supervise(tmp_path / "j", 10, "--hang", "1:5", options=("--hang-timeout", "2", "--grace", "2"))
    assert run.returncode == 0, run.stderr
    assert final(tmp_path / "j") == reference(10)
    got = attempts(tmp_path / "j")
    assert [a["class"] for a in got] == ["hang", "finished"]
    dump = got[0]["dump"]
    assert dump and "stuck_in_data_loading" in Path(dump).read_text(), dump
    assert "hung: no heartbeat" in run.stderr


def test_a_handler_failing_at_the_same_entry_stops_with_65_after_one_confirmation(tmp_path):
    run = supervise(tmp_path / "j", 10, "--raise-at", 6)
    assert run.returncode == 65, run.stderr
    got = attempts(tmp_path / "j")
    assert [a["class"] for a in got] == ["user-error", "user-error"]
    entry = got[-1]["entry"]
    assert entry["op"] == "step" and entry["index"] >= 6
    assert "bad batch at seed 6" in got[-1]["message"]
    assert f"entry {entry['index']} (op 'step')" in run.stderr and "replay truncate" in run.stderr
    stats = run_replay(["stats", tmp_path / "j"], cwd=ROOT, env=env())
    assert "replay run: 2 attempt(s): 2 user-error" in stats.stdout, stats.stdout + stats.stderr


def test_a_command_that_cannot_start_stops_with_78_at_once(tmp_path):
    started = time.monotonic()
    run = run_replay(["run", str(tmp_path / "j"), "--backoff", "0", "--", sys.executable, "-c",
                      "import no_such_module_here"], cwd=ROOT, timeout=120, env=env())
    assert run.returncode == 78, run.stderr
    assert "No module named 'no_such_module_here'" in run.stderr  # the job's stderr passes through
    got = attempts(tmp_path / "j")
    assert [a["class"] for a in got] == ["startup-error"] and got[0]["decision"] == "stop"
    del started


def test_no_progress_stops_with_75(tmp_path):
    first = supervise(tmp_path / "j", 3)
    assert first.returncode == 0, first.stderr
    run = supervise(tmp_path / "j", 3, "--exit-after-open", options=("--no-progress", "3"))
    assert run.returncode == 75, run.stderr
    got = attempts(tmp_path / "j")[1:]
    assert [a["class"] for a in got] == ["crashed"] * 3
    assert all(a["index_end"] == a["index_start"] for a in got)
    assert "without durable progress" in run.stderr


def test_sigterm_to_the_supervisor_stops_the_job_cleanly_and_is_never_restarted(tmp_path):
    ready = tmp_path / "ready"
    cmd = [sys.executable, "-m", "replay", "run", str(tmp_path / "j"), "--backoff", "0", "--",
           sys.executable, str(JOB), str(tmp_path / "j"), "400", "--preemption", "--ready", str(ready)]
    supervisor = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env(), cwd=ROOT)
    try:
        deadline = time.monotonic() + 150
        while not ready.exists():  # the job has applied a few steps
            assert supervisor.poll() is None, supervisor.communicate()
            assert time.monotonic() < deadline
            time.sleep(0.05)
        supervisor.send_signal(signal.SIGTERM)
        out, err = supervisor.communicate(timeout=120)
    finally:
        if supervisor.poll() is None:
            supervisor.kill()
    assert supervisor.returncode == 143, err
    got = attempts(tmp_path / "j")
    assert [a["class"] for a in got] == ["preempted"] and got[0]["decision"] == "stop"
    again = supervise(tmp_path / "j", got[0]["index_end"] // 1 and 1)  # any target already reached
    assert again.returncode == 0, again.stderr
    assert "job: replayed 0 from index" in again.stdout


def test_a_cuda_oom_is_its_own_class_and_the_next_attempt_is_told(tmp_path):
    run = supervise(tmp_path / "j", 8, "--oom", "1:4")
    assert run.returncode == 0, run.stderr
    assert final(tmp_path / "j") == reference(8)
    got = attempts(tmp_path / "j")
    assert [a["class"] for a in got] == ["oom", "finished"]
    assert "job: attempt 2 last-class 'oom' alloc-conf 'expandable_segments:True'" in run.stdout
