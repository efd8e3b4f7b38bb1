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
        assert "every sample exactly once: yes" in result.stdout
