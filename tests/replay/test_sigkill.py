"""SIGKILL a real training loop under a Journal at random points; the end state is bit-identical."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from .models import assert_same

CHILD = Path(__file__).with_name("sigkill_child.py")
STEPS = 120  # the seeded kills land after 4+15+14+16+26 = 75 new steps, the last run trains on
KILLS = 5


def _run(root, mode, out, kill_after=None):
    """Run the child; with kill_after, SIGKILL it after that many newly applied steps. True if it finished."""
    proc = subprocess.Popen([sys.executable, str(CHILD), str(root), str(STEPS), mode, str(out)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    applied = 0
    for line in proc.stdout:
        if line.startswith("applied"):
            applied += 1
            if kill_after is not None and applied >= kill_after:
                os.kill(proc.pid, signal.SIGKILL)
                break
    proc.wait()
    stderr = proc.stderr.read()
    proc.stdout.close()
    proc.stderr.close()
    if proc.returncode == -signal.SIGKILL:
        return False
    assert proc.returncode == 0, (mode, kill_after, applied, stderr[-3000:])
    return True


@pytest.mark.crash
def test_sigkilled_training_resumes_bit_identical(tmp_path):
    rng = random.Random(20240601)
    assert _run(tmp_path / "unused", "reference", tmp_path / "reference.pt")
    root = tmp_path / "journal"
    kills = 0
    while kills < KILLS:
        finished = _run(root, "journal", tmp_path / "journal.pt", kill_after=rng.randint(1, 30))
        assert not finished, "the child finished before it could be killed; raise STEPS"
        kills += 1
    assert _run(root, "journal", tmp_path / "journal.pt")
    assert_same(torch.load(tmp_path / "journal.pt"), torch.load(tmp_path / "reference.pt"))
