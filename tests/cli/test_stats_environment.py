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
    assert env["differs_here"] == []  # tinyjob's journal was written on this machine
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


def test_the_training_process_settings_are_not_compared_with_the_cli_process(journal, cli):
    """Threads and determinism flags are what the training script set, not properties of the
    machine: `stats` runs in its own process, whose settings say nothing about a replay's."""
    import torch

    recorded = json.loads((journal / "environment.json").read_text())
    recorded.update(threads=torch.get_num_threads() + 7, deterministic_algorithms=True, cudnn_benchmark=True,
                    cublas_workspace_config=":4096:8")
    (journal / "environment.json").write_text(json.dumps(recorded))
    status, env = stats_json(cli, journal)
    assert status == 0 and env["differs_here"] == []
    text = cli("stats", journal)[1]
    assert "threads=" in text and "this machine matches it" in text and "when created, " not in text
    assert "threads and determinism flags are the training process's own" in " ".join(text.split())


def test_the_library_separates_machine_fields_from_process_settings():
    from replay import environment

    here = environment.fingerprint()
    then = dict(here, threads=here["threads"] + 3, torch="1.0.0", deterministic_algorithms=True)
    assert environment.machine_differences(then, here) == [f"torch: 1.0.0 when created, {here['torch']} now"]
    # Journal.open compares in the training process itself: everything counts there
    assert len(environment.differences(then, here)) == 3


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
