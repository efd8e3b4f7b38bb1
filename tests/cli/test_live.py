"""`tail -f` beside a live writer, and the commands that change a journal (`truncate`, `prune`)."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import eventlog
from replay.envelope import wrap
from snapshots.manifest import Manifest
from tests.cli import tinyjob
from tests.cli.conftest import ROOT, cli

WRITER_STEPS = 60


def test_tail_follow_prints_every_entry_a_live_writer_appends(tmp_path):
    path, go = tmp_path / "live", tmp_path / "go"
    writer = subprocess.Popen([sys.executable, "-m", "tests.cli.tinyjob", path, "--steps", str(WRITER_STEPS),
                               "--delay", "0.02", "--go", go], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    tail = None
    try:
        assert writer.stdout.readline().strip() == "1"  # entry 1 is in; the writer now waits for `go`
        tail = subprocess.Popen([sys.executable, "-m", "replay", "tail", path, "-f", "-n", "1", "--json",
                                 "--interval", "0.05"], cwd=ROOT, stdout=subprocess.PIPE, text=True)
        seen = [json.loads(tail.stdout.readline())["index"]]  # tail is up and following
        # While the writer runs, operator commands refuse rather than fight it.
        refused = cli("truncate", path, "--after", 1)
        assert refused.returncode == 2 and "open for writing by process" in refused.stderr
        go.touch()
        deadline = time.monotonic() + 60
        while seen[-1] < WRITER_STEPS and time.monotonic() < deadline:
            seen.append(json.loads(tail.stdout.readline())["index"])
        assert writer.wait(timeout=60) == 0  # the writer was never disturbed
        assert seen == list(range(1, WRITER_STEPS + 1))  # in order, none missed, none twice
    finally:
        for proc in (tail, writer):
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.wait()


def test_truncate_removes_a_poison_entry_and_records_it_in_the_log(tmp_path):
    path = tmp_path / "poisoned"
    tinyjob.write(path, 5)
    # A handler raised and the process died before the journal could clean up: the entry stays.
    with eventlog.EventLog.open(path / "log") as log:
        assert log.append("boom", wrap(1, {"row": 0})) == 6
    dry = cli("truncate", path, "--after", 5, "--dry-run")
    assert dry.returncode == 0 and "would drop 1 entries after 5" in dry.stdout and "boom" in dry.stdout
    result = cli("truncate", path, "--after", 5, "--reason", "poison from a crash")
    assert result.returncode == 0, result.stderr
    assert "dropped 1 entries after 5: 6 (boom)" in result.stdout
    assert "replay.truncate" in result.stderr  # the operator's act is logged, not silent
    with eventlog.EventLog.open(path / "log", readonly=True) as log:
        audit = log.entry(log.last_index)
    assert audit.op == "replay.truncate"
    assert audit.payload["p"] == {"after": 5, "dropped": [[6, "boom"]], "reason": "poison from a crash"}


def test_prune_applies_retention_and_keeps_the_newest_snapshot(journal):
    manifests = journal / "snapshots" / "manifests"
    names = ("0-0", "10-1", "20-1", "30-2")
    chunks = {n: {c.id for c in Manifest.decode(n, (manifests / n).read_bytes()).chunks} for n in names}
    # each snapshot's model and table packs; the initial snapshot 0-0 stays (the log still
    # starts at entry 1, and a full replay starts from it)
    only_old = (chunks["10-1"] | chunks["20-1"]) - chunks["30-2"] - chunks["0-0"]
    result = cli("prune", journal, "--keep-last", 1, "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["deleted"] == ["10-1", "20-1"] and report["kept"] == ["0-0", "30-2"]
    assert report["chunks_deleted"] == len(only_old) == 4
    assert sorted(p.name for p in (journal / "snapshots" / "manifests").iterdir()) == ["0-0", "30-2"]
