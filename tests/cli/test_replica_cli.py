"""`replay restore URL DIR`, `replay log/stats/verify URL`, and the replica line of `replay stats DIR`."""

from __future__ import annotations

import json

import pytest

import replay

from ..replay.models import make_ops, make_state

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def shipped(tmp_path):
    """(journal dir, replica URL) of a 12-step journal fully shipped to a directory replica."""
    url = (tmp_path / "replica").as_uri()
    (tmp_path / "replica").mkdir()
    with replay.Journal.open(tmp_path / "run", state=make_state(), ops=make_ops(), replica=url,
                             ship_interval=0.05, snapshot=replay.Every(entries=5)) as journal:
        for step in range(12):
            journal.apply("train_step", ids=journal.state["data"].peek(4), seed=step)
        journal.flush(replica=True, timeout=60)
    return tmp_path / "run", url


def test_restore_makes_a_journal_that_opens_at_the_replica_index(tmp_path, shipped, cli_here):
    _, url = shipped
    status, out, _ = cli_here("restore", url, str(tmp_path / "copy"))
    assert status == 0 and "at index 12" in out
    with replay.Journal.open(tmp_path / "copy", state=make_state(), ops=make_ops()) as journal:
        assert journal.index == 12 and journal.count() == 12
    status, _, err = cli_here("restore", url, str(tmp_path / "copy"))
    assert status == 2 and "not empty" in err


def test_log_stats_and_verify_read_a_replica_url(shipped, cli_here):
    _, url = shipped
    status, out, err = cli_here("verify", url)
    assert status == 0 and "verdict: sound" in out and "reading that copy" in err
    status, out, _ = cli_here("log", url, "--json")
    assert status == 0 and [json.loads(line)["index"] for line in out.splitlines()][-1] == 12
    status, out, _ = cli_here("stats", url)
    assert status == 0 and "snapshot" in out


def test_stats_of_a_journal_says_where_its_replica_stands(shipped, cli_here):
    root, url = shipped
    status, out, _ = cli_here("stats", str(root))
    assert status == 0
    assert f"replica {url}: head at index 12" in out and "0 entries behind" in out and "this journal writes it" in out
    status, out, _ = cli_here("stats", str(root), "--json")
    [record] = [json.loads(line) for line in out.splitlines() if '"replica"' in line]
    assert (record["head_index"], record["lag_entries"], record["writer"]) == (12, 0, "this")


def test_a_damaged_replica_is_damage_and_other_commands_refuse_urls(tmp_path, shipped, cli_here):
    _, url = shipped
    head = tmp_path / "replica" / "head.json"
    head.write_bytes(b"{not json")
    status, _, err = cli_here("verify", url)
    assert status == 1 and "head.json" in err
    status, _, err = cli_here("show", url, "1")
    assert status == 2 and "replica URL" in err
