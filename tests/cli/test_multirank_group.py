"""`replay verify` and `replay stats` on a multi-rank journal written by a real process
group: two processes, gloo on 127.0.0.1, `Journal.open(root, group=dist.group.WORLD)`
(tests/cli/ranksjob.py, `run_rank`). What the fixtures of test_multirank.py imitate is
here written by the library itself, so the audit's reading of the layout is checked
against the writer's."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch.distributed as dist

pytestmark = [pytest.mark.timeout(180),
              pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(), reason="no gloo")]

ROOT = Path(__file__).resolve().parents[2]
STEPS = 45  # snapshots at 10, 20, ... 40 and 45 on close; keep_last=3 prunes 10 and 20 on the way


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_real_two_rank_journal_verifies_and_shows_its_common_snapshot(cli_here, tmp_path):
    root = tmp_path / "run"
    env = {**os.environ, "TORCH_DISABLE_SHARE_RDZV_TCP_STORE": "1"}
    env.pop("REPLAY_FAILPOINTS", None)
    port = free_port()
    ranks = [subprocess.Popen([sys.executable, "-m", "tests.cli.ranksjob", root, "--rank", str(r), "--world", "2",
                               "--port", str(port), "--steps", str(STEPS)], cwd=ROOT, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for r in range(2)]
    outputs = [p.communicate(timeout=150)[0] for p in ranks]
    assert [p.returncode for p in ranks] == [0, 0], outputs

    status, out, err = cli_here("verify", root)
    assert status == 0, out + err
    assert "verdict: sound" in out and f"ops: identical on every rank at indexes 1..{STEPS}" in out
    assert f"common snapshot: index {STEPS} (rank 0 {STEPS}-1, rank 1 {STEPS}-1)" in out

    status, out, err = cli_here("stats", root, "--json")
    found = [json.loads(line) for line in out.splitlines()]
    assert status == 0, err
    (group,) = [r for r in found if r.get("section") == "group"]
    assert (group["world_size"], group["ranks"], group["cut"], group["common_snapshot"]) == (2, [0, 1], STEPS, STEPS)
    assert group["above_cut"] == {"0": 0, "1": 0} and group["problems"] == 0
    assert STEPS in group["global_records"] and 10 not in group["global_records"]  # rank 0 dropped the pruned one
    ranks_found = [r for r in found if r.get("section") == "rank"]
    assert [(r["rank"], r["world_size"], r["last_index"], r["entries"]) for r in ranks_found] == \
        [(0, 2, STEPS, STEPS), (1, 2, STEPS, STEPS)]
