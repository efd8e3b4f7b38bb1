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


def test_readers_of_a_mistyped_replica_url_create_nothing(tmp_path, cli_here):
    """`log`, `stats`, `verify` and `restore` read a replica: a missing directory is an error
    naming it, and neither it nor its `.tmp/` (nor the restore's target) is created."""
    typo = tmp_path / "typo" / "replica"
    for args in (("log", typo.as_uri()), ("stats", typo.as_uri()), ("verify", typo.as_uri()),
                 ("restore", typo.as_uri(), tmp_path / "copy")):
        status, _, err = cli_here(*args)
        assert status == 2, (args, err)
        assert f"there is no directory '{typo}'" in err and "check the URL" in err, err
        assert not (tmp_path / "typo").exists() and not (tmp_path / "copy").exists(), args


def test_restore_into_the_current_directory_says_what_to_do_before_downloading(tmp_path, shipped, cli_here,
                                                                               monkeypatch):
    _, url = shipped
    here = tmp_path / "here"
    here.mkdir()
    monkeypatch.chdir(here)
    status, out, err = cli_here("restore", url, ".")
    assert status == 2 and out == ""
    assert err.startswith("replay restore: error: cannot restore into '.'") and "current directory" in err
    assert f"{here / 'journal'}" in err and "ValueError" not in err and "Errno" not in err
    assert list(here.iterdir()) == [] and not (tmp_path / ".here.restoring").exists()
    status, out, _ = cli_here("restore", url, "journal")
    assert status == 0 and "at index 12" in out


def test_restore_over_a_leftover_that_is_not_a_restore_names_it(tmp_path, shipped, cli_here):
    _, url = shipped
    leftover = tmp_path / ".copy.restoring"
    leftover.symlink_to(tmp_path / "run")
    status, _, err = cli_here("restore", url, str(tmp_path / "copy"))
    assert status == 2 and f"{leftover} is a symbolic link" in err and f"rm {leftover}" in err
    assert "rmtree" not in err and leftover.is_symlink() and (tmp_path / "run" / "log").is_dir()
    leftover.unlink()
    leftover.write_bytes(b"")
    status, _, err = cli_here("restore", url, str(tmp_path / "copy"))
    assert status == 2 and f"{leftover} is not a directory" in err and "NotADirectoryError" not in err


def test_a_symlinked_segments_directory_is_reported_as_damage(tmp_path, shipped, cli_here):
    _, url = shipped
    segments = tmp_path / "replica" / "segments"
    segments.rename(tmp_path / "elsewhere")
    segments.symlink_to(tmp_path / "elsewhere")
    status, _, err = cli_here("restore", url, str(tmp_path / "copy"))
    assert status == 1 and "segments is damaged: is a symbolic link" in err and "unsafe" in err
    assert "no segment ends" not in err and not (tmp_path / "copy").exists()
