"""The multi-rank demo, run as a user would: DDP on 2 ranks under torchrun, random SIGKILLs
of random ranks, elastic restarts, every rank bit-identical to an uninterrupted run."""

import re
import subprocess
import sys

import pytest

pytestmark = pytest.mark.crash


@pytest.mark.timeout(240)
def test_demo_ranks_survives_kills_bit_identically(tmp_path):
    result = subprocess.run([sys.executable, "-m", "replay", "demo", "--ranks", "2", "--steps", "120", "--kills", "2",
                             "--dir", str(tmp_path / "journal")],
                            capture_output=True, text=True, timeout=220)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "bit-identical: yes" in result.stdout
    assert "ranks agree: yes" in result.stdout
    kills = int(re.search(r"kills: (\d+) SIGKILLs", result.stdout).group(1))
    restarts = int(re.search(r"restarts: (\d+) by torchrun", result.stdout).group(1))
    assert kills > 0 and restarts == kills, result.stdout  # every kill really restarted the group
    # Each kill says what was acknowledged (the last global flush) by then; a restart that resumes
    # before the step printed last explains the gap, and never resumes before the acknowledged step.
    killed = re.search(r"kills: \d+ SIGKILLs \((.*)\)$", result.stdout, re.M).group(1).split(", rank ")
    for n, kill in enumerate(killed, 1):
        if "during recovery" in kill:
            continue
        printed, acknowledged = map(int, re.search(r"after step (\d+) \(acknowledged through (\d+)\)", kill).groups())
        line = re.search(rf"restart {n}: (.*)$", result.stdout, re.M).group(1)
        if "resumed at step" not in line:
            continue  # this generation was killed during its recovery
        resumed = int(re.search(r"resumed at step (\d+)", line).group(1))
        assert acknowledged <= printed and acknowledged <= resumed, result.stdout
        if resumed < printed:
            assert f"{printed - resumed} steps printed after the last acknowledged flush were dropped" in line
    # Every rank's directory was written by the journal, one per rank.
    assert sorted(p.name for p in (tmp_path / "journal").iterdir() if p.name.startswith("rank-")) == ["rank-0", "rank-1"]
