"""The README's main job, run as a user would: kill -9 several times, end bit-identical."""

import subprocess
import sys

import pytest

pytestmark = pytest.mark.crash


@pytest.mark.parametrize("task, extra", [("train", ["--steps", "300"]), ("inference", [])])
def test_demo_survives_kills_bit_identically(tmp_path, task, extra):
    result = subprocess.run(
        [sys.executable, "-m", "replay", "demo", "--task", task, "--kills", "3", "--snapshot-every", "100",
         "--dir", str(tmp_path / "journal"), *extra],
        capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "bit-identical: yes" in result.stdout
    assert "recovery 1:" in result.stdout  # at least one kill really happened and was recovered
    if task == "inference":
        assert "every sample exactly once, every output in the log: yes" in result.stdout
        # Compaction really ran: outputs were proven from archived entries, not a log kept whole.
        archived = int(result.stdout.split("entries read from the archive")[0].rsplit(";", 1)[1].split()[0])
        assert archived > 0, result.stdout
