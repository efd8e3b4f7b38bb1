"""`replay fork DIR --at I NEWDIR`: the operator's rollback past a snapshot, as a command."""

from __future__ import annotations

import json

import pytest
import torch

import replay
from eventlog import EventLog
from tests.cli import tinyjob


@pytest.fixture(scope="module")
def compacted_master(tmp_path_factory):
    """35 entries in two terms, snapshots every 10 (0, 10, 20, 30 kept), the log sealed into
    the archive through 30: what `truncate --after 23` cannot roll back."""
    path = tmp_path_factory.mktemp("forkcli") / "run"
    tinyjob.write(path, 25, keep_log=False)
    tinyjob.write(path, 10, start=25, keep_log=False)
    return path


@pytest.fixture
def compacted(compacted_master, tmp_path):
    import shutil

    copy = tmp_path / "run"
    shutil.copytree(compacted_master, copy)
    return copy


def _assert_state_at(path, index):
    state = tinyjob.make_state()
    with replay.Journal.open(path, state=state, ops=tinyjob.ops, snapshot_on_close=False) as journal:
        assert journal.index == index + 1
    expected = tinyjob.reference(index)
    for name, tensor in expected["model"].state_dict().items():
        assert torch.equal(state["model"].state_dict()[name], tensor), name
    assert torch.equal(state["table"], expected["table"])
    assert state["counters"] == expected["counters"]


def test_fork_rolls_back_where_truncate_refuses(compacted, tmp_path, cli_here, caplog):
    status, _, err = cli_here("truncate", compacted, "--after", 23)
    assert status == 2 and "snapshot(s) at [30]" in err and f"replay fork {compacted} --at 23 NEWDIR" in err
    with EventLog.open(compacted / "log", readonly=True) as log:
        term = log.term  # unchanged by the refused truncate (tests/replay/test_invariants checks it)
    status, out, err = cli_here("fork", compacted, "--at", 23, tmp_path / "new", "--reason", "bad shard at 24")
    assert status == 0, err
    assert out.splitlines() == [
        f"forked {compacted} at 23 into {tmp_path / 'new'}",
        "history: entries 1..23 of 35 (3 segment(s), 2 hard-linked)",
        "snapshots: 0-0, 10-1, 20-1 (6 chunk(s) hard-linked, 0 copied)",
        f"recorded as a replay.fork audit entry at 24 (term {term + 1}); open {tmp_path / 'new'} with the same ops "
        "to go on from 23",
    ]
    assert any(r.name == "replay" and "replay.fork" in r.getMessage() and "bad shard at 24" in r.getMessage()
               for r in caplog.records)  # the warning on the replay logger
    _assert_state_at(tmp_path / "new", 23)


def test_the_forked_journal_reads_with_every_audit_command(compacted, tmp_path, cli_here):
    assert cli_here("fork", compacted, "--at", 27, tmp_path / "new")[0] == 0
    status, out, err = cli_here("stats", tmp_path / "new")
    assert status == 0, err
    assert "environment when created" in out and "this machine matches it" in out
    status, out, err = cli_here("verify", tmp_path / "new")
    assert status == 0 and "verdict: sound" in out, out + err
    status, out, err = cli_here("log", tmp_path / "new", "--json")
    assert status == 0, err
    last = json.loads(out.splitlines()[-1])
    assert last["index"] == 28 and last["op"] == "replay.fork" and last["term"] == 3


def test_json_output(compacted, tmp_path, cli_here):
    status, out, err = cli_here("fork", compacted, "--at", 23, tmp_path / "new", "--json", "--reason", "r")
    assert status == 0, err
    record = json.loads(out)
    assert {k: record[k] for k in ("at", "first_index", "source_last_index", "source_term", "term", "fork_index",
                                   "segments", "segments_linked", "snapshots", "skipped", "chunks_copied", "reason")} == {
        "at": 23, "first_index": 1, "source_last_index": 35, "source_term": 2, "term": 3, "fork_index": 24,
        "segments": 3, "segments_linked": 2, "snapshots": ["0-0", "10-1", "20-1"], "skipped": [], "chunks_copied": 0, "reason": "r"}
    assert record["dest"] == str(tmp_path / "new") and record["chunks_linked"] == 6


@pytest.mark.parametrize("at, message", [
    (36, "fork at 36: the source holds entries 1..35, and a fork can be taken at 1..35"),
    (0, "fork at 0: the source holds entries 1..35, and a fork can be taken at 1..35"),
])
def test_an_index_outside_the_history_exits_2_naming_it(compacted, tmp_path, cli_here, at, message):
    status, out, err = cli_here("fork", compacted, "--at", at, tmp_path / "new")
    assert status == 2 and message in err and out == ""
    assert not (tmp_path / "new").exists()


def test_refusals_exit_2_and_make_nothing(compacted, tmp_path, cli_here):
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "x").write_text("x")
    status, _, err = cli_here("fork", compacted, "--at", 3, tmp_path / "taken")
    assert status == 2 and "is not empty" in err
    status, _, err = cli_here("fork", tmp_path / "taken", "--at", 3, tmp_path / "new")
    assert status == 2 and "not a journal directory" in err
    status, _, err = cli_here("fork", "file:///some/replica", "--at", 3, tmp_path / "new")
    assert status == 2 and "is a replica URL" in err
    with pytest.raises(SystemExit) as usage:  # argparse's own usage error, exit status 2
        cli_here("fork", compacted, "--at", -1, tmp_path / "new")
    assert usage.value.code == 2
    assert not (tmp_path / "new").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run", "taken"]
