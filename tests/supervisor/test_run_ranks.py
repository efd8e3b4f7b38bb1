"""`replay run` supervising a 2-rank torchrun group (gloo on 127.0.0.1): one rank
SIGKILLed, then one rank hung; the group is restarted as a whole, the hung rank's stack
dump names the function it is stuck in, and both ranks end bit-identical to an
uninterrupted run and to each other."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

from tests.once import once_per_run
from tests.warm import run_replay

from .test_run import ROOT, attempts, env

pytestmark = [pytest.mark.crash, pytest.mark.fault_supervisor, pytest.mark.timeout(400)]

JOB = Path(__file__).with_name("ddp_job.py")
STEPS = 24


def supervise_group(directory, *job_args, options=()):
    cmd = ["run", str(directory), "--backoff", "0", *map(str, options), "--",
           sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "--max-restarts",
           "0", str(JOB), str(directory), str(STEPS), *map(str, job_args)]
    environment = {**env(), "TORCH_DISABLE_SHARE_RDZV_TCP_STORE": "1"}
    return run_replay(cmd, cwd=ROOT, timeout=350, env=environment)  # a warm supervisor, real torchrun and ranks


def finals(directory) -> list[str]:
    return [json.loads((Path(directory) / f"final-rank{r}.json").read_text())["w"] for r in (0, 1)]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    def run_it():
        directory = tmp_path_factory.mktemp("ddp") / "clean"
        run = supervise_group(directory)
        assert run.returncode == 0, run.stdout + run.stderr
        got = finals(directory)
        assert got[0] == got[1]
        return got[0]

    return once_per_run(tmp_path_factory, "supervisor-ranks-uninterrupted", run_it)


def test_a_killed_rank_restarts_the_group_and_it_ends_bit_identical(tmp_path, uninterrupted):
    run = supervise_group(tmp_path / "j", "--kill", "1:1:11")
    assert run.returncode == 0, run.stdout + run.stderr
    assert finals(tmp_path / "j") == [uninterrupted, uninterrupted]
    got = attempts(tmp_path / "j")
    assert [a["class"] for a in got] == ["crashed", "finished"], got
    assert got[0]["index_end"] > 0  # the group's durable index (min over ranks) moved before the kill
    # Each rank recorded its own losses (seeds differ by rank), every step once in the log's
    # view, the killed rank's lost tail recomputed by the restarted group's replay.
    from eventlog import EventLog
    from replay import layout
    from replay.recorded import read_recorded

    losses = []
    for rank in (0, 1):
        rank_dir = layout.rank_dir(tmp_path / "j", rank)
        with EventLog.open(layout.log_dir(rank_dir), readonly=True) as log:
            headers = [h.index for h in log.headers(verify=False) if h.op == "train_step"]
            series = read_recorded(rank_dir, log).series["loss"]
        assert [i for i, _ in series] == headers and len(headers) == STEPS
        losses.append([v for _, v in series])
    assert losses[0] != losses[1]
    page = run_replay(["report", str(tmp_path / "j"), "--rank", "1", "--out", str(tmp_path / "r.html")], cwd=ROOT,
                      timeout=120, env=env())
    assert page.returncode == 0, page.stderr
    assert "(rank 1)" in (tmp_path / "r.html").read_text() and 'alt="metric loss"' in (tmp_path / "r.html").read_text()


def test_a_hung_rank_is_dumped_and_the_group_restarted(tmp_path, uninterrupted):
    run = supervise_group(tmp_path / "j", "--hang", "1:1:9", options=("--hang-timeout", "3", "--grace", "3"))
    assert run.returncode == 0, run.stdout + run.stderr
    assert finals(tmp_path / "j") == [uninterrupted, uninterrupted]
    got = attempts(tmp_path / "j")
    # The job's own output (each rank prints why it exits 1) is in the supervisor's: an extra
    # attempt is diagnosable from the failure alone.
    assert [a["class"] for a in got] == ["hang", "finished"], (got, run.stdout[-3000:], run.stderr[-3000:])
    dumps = [Path(p) for p in got[0]["dump"].split(os.pathsep)]
    assert any("stuck_in_collective" in p.read_text() for p in dumps), [p.read_text()[:500] for p in dumps]
