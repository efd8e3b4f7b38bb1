"""SIGKILL a real training loop under a Journal at random points; the end state is bit-identical."""

from __future__ import annotations

import random

import pytest
import torch

from tests.crash.checker import run_forked

from .models import assert_same
from .sigkill_child import train

STEPS = 120  # the seeded kills land after 4+15+14+16+26 = 75 new steps, the last run trains on
KILLS = 5


def _run(root, mode, out, kill_after=None):
    """Run the child (forked: torch is already imported); with kill_after, SIGKILL it after
    that many newly applied steps. True if it finished."""
    def enough(messages):
        return kill_after is not None and sum(m[0] == "applied" for m in messages) >= kill_after

    run = run_forked(train, root, STEPS, mode, out, kill_on=enough, timeout=200)
    if run.killed:
        return False
    assert run.status == 0, (mode, kill_after, run.stderr_tail())
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
