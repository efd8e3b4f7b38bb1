"""`replay stats` shows the environment a journal recorded when it was created, where this machine
differs from it, and reports a damaged or hostile environment.json as damage."""

from __future__ import annotations

import json
import os

from tests.cli.conftest import cli


def stats_json(path) -> tuple[int, dict]:
    result = cli("stats", path, "--json")
    sections = [json.loads(line) for line in result.stdout.splitlines()]
    return result.returncode, next(s for s in sections if s["section"] == "environment")


def test_the_recorded_environment_is_shown_and_matches_this_machine(journal):
    status, env = stats_json(journal)
    assert status == 0 and env["damaged"] is None
    assert env["recorded"]["torch"] and env["recorded"]["python"] and env["differs_here"] == []
    text = cli("stats", journal).stdout
    assert "environment when created:" in text and "this machine matches it" in text


def test_differences_from_this_machine_are_named(journal):
    recorded = json.loads((journal / "environment.json").read_text())
    recorded["torch"] = "1.0.0"
    (journal / "environment.json").write_text(json.dumps(recorded))
    status, env = stats_json(journal)
    assert status == 0
    assert any(line.startswith("torch: 1.0.0 when created") for line in env["differs_here"])
    assert "may not be bit-exact" in cli("stats", journal).stdout


def test_a_damaged_or_hostile_environment_file_is_damage(journal):
    target = journal / "environment.json"
    for hostile in ("garbage{", '{"format": 1, "torch": {"nested": 1}}', "[1, 2]"):
        target.write_text(hostile)
        result = cli("stats", journal)
        assert result.returncode == 1, (hostile, result.stdout, result.stderr)
        assert "environment: DAMAGED" in result.stdout and "environment.json" in result.stdout
        assert "Traceback" not in result.stderr
    target.unlink()
    os.mkfifo(target)  # a FIFO must not block the reader
    result = cli("stats", journal, timeout=30)
    assert result.returncode == 1 and "environment: DAMAGED" in result.stdout
