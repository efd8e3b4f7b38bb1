"""Bad input: one line on stderr, a non-zero exit, no traceback unless --debug."""

from __future__ import annotations

import pytest

from eventlog import EventLog
from tests.cli import tinyjob
from tests.cli.conftest import OPS, cli


@pytest.fixture(scope="module")
def compacted(tmp_path_factory):
    """A journal whose history through its only retained snapshot (index 20) was deleted:
    compacted with no archive (the default archive would keep it readable)."""
    path = tmp_path_factory.mktemp("compacted") / "run"
    tinyjob.write(path, 25, keep_last=1)
    with EventLog.open(path / "log", archive=None) as log:
        log.compact_through(20)
    return path


def test_archived_history_reads_as_the_log(tmp_path):
    """Compaction into the default archive deletes nothing: the CLI reads across it."""
    path = tmp_path / "run"
    tinyjob.write(path, 25, keep_last=1, keep_log=False)
    with EventLog.open(path / "log", readonly=True) as log:
        assert log.first_index == 1 and log.live_first_index == 21  # sealed 1..20, live 21..25
    shown = cli("show", path, 5)
    assert shown.returncode == 0 and "entry 5" in shown.stdout, shown.stderr
    assert len(cli("log", path).stdout.splitlines()) == 25
    stats = cli("stats", path)
    assert "entries 1..25" in stats.stdout and "entries 1..20 archived" in stats.stdout


def one_line_error(result, *fragments: str) -> None:
    assert result.returncode == 2, result.stdout + result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    for fragment in fragments:
        assert fragment in lines[0]


def test_a_path_that_is_not_a_journal(tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    one_line_error(cli("log", tmp_path), "is not a journal")


def test_a_compacted_index(compacted):
    one_line_error(cli("show", compacted, 5), "log index 5 is compacted", "first retained entry is 21")


def test_a_state_before_the_compaction_boundary(compacted, tmp_path):
    one_line_error(cli("state", compacted, "--at", 15, *OPS, "--out", tmp_path / "x.safetensors"),
                   "log index 15 is compacted")
    assert not (tmp_path / "x.safetensors").exists()


def test_an_index_past_the_end(journal_master):
    one_line_error(cli("show", journal_master, 36), "past the end", "last entry is 35")


def test_an_ops_spec_that_does_not_import_and_debug_shows_the_traceback(journal_master, tmp_path):
    args = ["diff", journal_master, 1, 2, "--ops", "no_such_module_xyz:ops", "--state", "tests.cli.tinyjob:make_state"]
    one_line_error(cli(*args), "--ops 'no_such_module_xyz:ops' does not import", "ModuleNotFoundError")
    debug = cli(*args, "--debug")
    assert debug.returncode == 2 and "Traceback (most recent call last)" in debug.stderr
