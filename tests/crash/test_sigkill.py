"""Row 1: SIGKILL torture. Journal and bare-log writers killed at random moments, hundreds of times.

Each Journal child first recovers (so kills also land inside recovery), reports what it
recovered, then trains (apply, flush, acknowledge) with a snapshot every 6 entries and
keep_last=2, so snapshot writes, prunes and log compaction run all the time and random
kills land in them. Every recovery a child reports is checked against every
acknowledgement so far by the shared checker.
"""

from __future__ import annotations

import random

import pytest

from .checker import Tally, check_journal, check_log, journal_writer, log_writer, recovered_in_fresh_process, run_forked

pytestmark = [pytest.mark.crash, pytest.mark.fault_sigkill]

JOURNAL_KILLS = 160
LOG_KILLS = 120


@pytest.mark.parametrize("durability", ["group", "sync"])
def test_journal_sigkilled_at_random_moments(tmp_path, durability):
    root = str(tmp_path / "journal")
    rng = random.Random(f"sigkill-{durability}")
    tally = Tally(f"1 journal sigkill ({durability})")
    acks: list = []
    interrupted_recoveries = 0
    runs = 0
    # Kill at random moments; a loaded machine starts and recovers children slowly, so
    # keep going (with a longer window) until enough entries were acknowledged for the
    # kills to mean much, instead of failing on the machine's speed.
    while runs < JOURNAL_KILLS // 2 or len(acks) <= 5 * JOURNAL_KILLS // 2 or interrupted_recoveries < 3:
        assert runs < 2 * JOURNAL_KILLS, (len(acks), interrupted_recoveries)
        late = 0.35 if runs < JOURNAL_KILLS // 2 else 1.5
        runs += 1
        run = run_forked(journal_writer, root, kill_after=rng.choice([rng.uniform(0, 0.06), rng.uniform(0.05, late)]),
                         durability=durability, flush_every=rng.randint(1, 3))
        assert run.killed, f"the writer ended on its own: {run.errors} {run.stderr_tail()}"
        tally.runs += 1
        if run.recovered is None:
            interrupted_recoveries += 1
        else:
            check_journal(run.recovered, acks, tally)
        acks += run.acks
    check_journal(recovered_in_fresh_process(root, durability=durability), acks, tally)
    tally.report()
    assert len(acks) > 5 * JOURNAL_KILLS // 2 and interrupted_recoveries >= 3, (len(acks), interrupted_recoveries)


@pytest.mark.parametrize("mode", ["sync", "group"])
def test_bare_log_sigkilled_at_random_moments(tmp_path, mode):
    path = str(tmp_path / "log")
    rng = random.Random(f"log-{mode}")
    tally = Tally(f"1 eventlog sigkill ({mode})")
    acks = []
    runs = 0
    while runs < LOG_KILLS // 2 or len(acks) <= LOG_KILLS:  # see above: enough acks, not a fast machine
        assert runs < 2 * LOG_KILLS, len(acks)
        late = 0.08 if runs < LOG_KILLS // 2 else 0.5
        runs += 1
        run = run_forked(log_writer, path, mode, kill_after=rng.uniform(0.005, late))
        assert run.killed
        tally.runs += 1
        acks += run.acks
        check_log(path, acks, tally)
    tally.report()
    assert len(acks) > LOG_KILLS
