"""`replay prune` and `replay truncate` find a journal's parts through replay/layout.py.

A journal is what `replay.audit.locate` says it is (DIR/log/data.mdb beside DIR/snapshots),
never "a directory named log": the journal's own log directory, given alone, is a bare
event log, and neither command reaches out of it into its parent's snapshots.
"""

from __future__ import annotations

import json

from replay import layout
from replay.cli.errors import EXIT_BAD_INPUT, EXIT_OK
from replay.ranks import layout as ranks_layout


def _manifests(journal) -> list[str]:
    return sorted(p.name for p in layout.manifests_dir(journal).iterdir())


def test_prune_refuses_a_journals_log_directory_given_alone(cli_here, journal):
    before = _manifests(journal)
    status, out, err = cli_here("prune", layout.log_dir(journal), "--keep-last", "1")
    assert status == EXIT_BAD_INPUT, (out, err)
    assert f"{layout.log_dir(journal)} is a bare event log" in err
    assert _manifests(journal) == before  # the parent's snapshots were not touched


def test_truncate_refuses_a_bare_event_log(cli_here, journal):
    status, out, err = cli_here("truncate", layout.log_dir(journal), "--after", 30)
    assert status == EXIT_BAD_INPUT, (out, err)
    assert "is a bare event log, not a journal" in err


def test_prune_refuses_one_rank_of_a_multirank_journal(cli_here, journal):
    ranks_layout.write_rank_record(journal, 0, 2)
    before = _manifests(journal)
    status, out, err = cli_here("prune", journal, "--keep-last", "1")
    assert status == EXIT_BAD_INPUT, (out, err)
    assert f"{journal} is one rank of a multi-rank journal" in err
    assert _manifests(journal) == before


def test_prune_works_in_the_journals_store(cli_here, journal):
    before = _manifests(journal)
    assert len(before) >= 2
    status, out, err = cli_here("prune", journal, "--keep-last", "1", "--json")
    assert status == EXIT_OK, (out, err)
    report = json.loads(out.splitlines()[-1])
    newest = max(before, key=lambda name: int(name.split("-")[0]))
    assert newest in report["kept"] and report["deleted"]  # (the oldest may stay: the log needs it)
    assert sorted(report["kept"] + report["deleted"]) == before
    assert _manifests(journal) == sorted(report["kept"])
