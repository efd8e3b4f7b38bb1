"""`replay stats` shows the environment a journal recorded when it was created, where this machine
differs from it, and reports a damaged or hostile environment.json as damage."""

from __future__ import annotations

import json
import os

import pytest


@pytest.fixture
def cli(cli_here):
    return cli_here


def stats_json(cli, path) -> tuple[int, dict]:
    status, out, _ = cli("stats", path, "--json")
    sections = [json.loads(line) for line in out.splitlines()]
    return status, next(s for s in sections if s["section"] == "environment")


def test_the_recorded_environment_is_shown_and_matches_this_machine(journal, cli):
    status, env = stats_json(cli, journal)
    assert status == 0 and env["damaged"] is None
    assert env["recorded"]["torch"] and env["recorded"]["python"]
    # tinyjob's journal was written in this process: only the thread count may differ
    assert all(line.startswith("threads:") for line in env["differs_here"])
    text = cli("stats", journal)[1]
    assert "environment when created:" in text


def test_differences_from_this_machine_are_named(journal, cli):
    recorded = json.loads((journal / "environment.json").read_text())
    recorded["torch"] = "1.0.0"
    (journal / "environment.json").write_text(json.dumps(recorded))
    status, env = stats_json(cli, journal)
    assert status == 0
    assert any(line.startswith("torch: 1.0.0 when created") for line in env["differs_here"])
    assert "may not be bit-exact" in cli("stats", journal)[1]


@pytest.mark.timeout(60)  # a FIFO that blocked the reader would hang here
def test_a_damaged_or_hostile_environment_file_is_damage(journal, cli):
    target = journal / "environment.json"
    for hostile in ("garbage{", '{"format": 1, "torch": {"nested": 1}}', "[1, 2]"):
        target.write_text(hostile)
        status, out, err = cli("stats", journal)
        assert status == 1, (hostile, out, err)
        assert "environment: DAMAGED" in out and "environment.json" in out
        assert "Traceback" not in err
    target.unlink()
    os.mkfifo(target)  # a FIFO must not block the reader
    status, out, _ = cli("stats", journal)
    assert status == 1 and "environment: DAMAGED" in out
