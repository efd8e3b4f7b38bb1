"""An entry missing from LMDB exactly where a read batch starts is damage, named by its index.

Every reader reads the log in batches of READ_BATCH entries, each in its own read
transaction. Inside a batch a missing key was always CorruptEntryError; at a batch's
first index (1, 1025, 2049, ... with the default batch) the batch came back empty and the
reader took that for the end of the log (a writer's concurrent truncation), so entries(),
headers(), entry_batches() and `replay log` silently showed a shorter log. The reader now
decides from the bounds read in the same transaction: entries after the missing one mean
a gap (CorruptEntryError(index)); none mean the log ends there.

A missing *last* entry leaves no trace: last_index is the last key in LMDB (meta records
only the boundaries), exactly as after `truncate_after(N - 1)`. Every reader then agrees
the log ends at N - 1; that case is pinned too, so a change to it is a decision.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import replay
from eventlog import CorruptEntryError, EventLog
from eventlog import reader as reader_module
from tests.cli import tinyjob
from tests.eventlog.raw import delete_entry
from tests.warm import run_replay

ROOT = Path(__file__).resolve().parents[2]
N = 2100  # three default read batches: 1..1024, 1025..2048, 2049..2100
MISSING_REASON = "entry is missing from the log"


@pytest.fixture(scope="module")
def master(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("gap") / "log"
    with EventLog.open(path, durability="os") as log:
        log.append_many([("put", {"i": i}) for i in range(1, N + 1)])
    return path


def _copy_without(master: Path, tmp_path: Path, index: int) -> Path:
    """A copy of the master log with entry `index` deleted by raw LMDB, the log closed."""
    path = tmp_path / "log"
    path.mkdir()
    for name in ("data.mdb", "lock.mdb"):
        if (master / name).exists():
            (path / name).write_bytes((master / name).read_bytes())
    delete_entry(path, index)
    return path


def _read_until_error(iterator):
    """(indexes yielded, the CorruptEntryError raised); fails if the iterator ends cleanly."""
    seen = []
    with pytest.raises(CorruptEntryError) as raised:
        for item in iterator:  # entries and headers one at a time, entry_batches in lists
            if isinstance(item, list):
                seen.extend(e.index for e in item)
            else:
                seen.append(item.index)
    return seen, raised.value


# 1: the first batch's first entry (seeded from the boundary); 1025, 2049: later batch
# starts; 1026: inside a batch (raised before, but before yielding that batch's 1025).
@pytest.mark.parametrize("missing", [1, 1025, 2049, 1026])
def test_a_missing_entry_at_a_batch_start_is_named_by_every_reader(master, tmp_path, missing):
    path = _copy_without(master, tmp_path, missing)
    with EventLog.open(path, readonly=True) as log:
        assert log.last_index == N
        readers = {
            "entries": lambda start=None: log.entries(start),
            "headers": lambda start=None: log.headers(start, verify=True),
            "headers-unverified": lambda start=None: log.headers(start, verify=False),
            "entry_batches": lambda start=None: log.entry_batches(start, size=64),
        }
        for name, read in readers.items():
            seen, error = _read_until_error(read())
            assert error.index == missing and MISSING_REASON in str(error), (name, error)
            assert seen == list(range(1, missing)), name
            seen, error = _read_until_error(read(missing))  # a read that starts at the gap raises at once
            assert (seen, error.index) == ([], missing), name
        with pytest.raises(CorruptEntryError) as raised:
            log.entry(missing)
        assert raised.value.index == missing
        with pytest.raises(CorruptEntryError) as raised:
            log.term_at(missing)
        assert raised.value.index == missing
        # The entry after the gap cannot be verified (the checksum that seeds it is gone) and
        # says which entry is missing; the ones after it read as ever.
        seen, error = _read_until_error(log.entries(missing + 1))
        assert (seen, error.index) == ([], missing)
        assert [e.index for e in log.entries(missing + 2, missing + 5)] == list(range(missing + 2, missing + 5))
        report = log.verify()
        assert not report.ok and report.damage[0].index == missing, str(report)


@pytest.mark.parametrize("missing", [1025, 2049, 1026])
def test_a_missing_entry_at_a_batch_start_is_damage_in_replay_log(master, tmp_path, missing):
    """`replay log DIR` lists the gap as a damaged row naming its index, goes on with the
    rest of the log and exits 1. At a batch start the listing used to end at the gap (one
    row 'entries K..N are missing'); inside a batch (1026) it left out the entries before
    the gap in that batch (1025), and listed the gap twice."""
    path = _copy_without(master, tmp_path, missing)
    ran = run_replay(["log", path, "--json"], cwd=ROOT, timeout=120)
    assert ran.returncode == 1, ran
    rows = [json.loads(line) for line in ran.stdout.splitlines()]
    damaged = [r for r in rows if "damaged" in r]
    assert [r["index"] for r in damaged[:1]] == [missing] and MISSING_REASON in damaged[0]["damaged"], damaged
    assert [r["index"] for r in rows] == list(range(1, N + 1)), "the listing stopped at the gap"
    # The entry after the gap is listed as unverifiable (its chain seed is the missing entry).
    assert [r["index"] for r in damaged] == [missing, missing + 1], damaged
    assert f"its link to entry {missing} cannot be checked" in damaged[1]["damaged"], damaged


@pytest.mark.parametrize("read_batch", [7, 1024])
def test_a_reader_ends_cleanly_where_every_reader_says_the_log_ends(tmp_path, monkeypatch, read_batch):
    """A missing last entry is indistinguishable from a truncation (nothing records the old
    last index), so every reader agrees the log ends before it: no phantom damage, with
    small batches and the default alike."""
    monkeypatch.setattr(reader_module, "READ_BATCH", read_batch)
    original = tmp_path / "original"
    with EventLog.open(original, durability="os") as log:
        log.append_many([("put", {"i": i}) for i in range(1, 2101)])
    path = _copy_without(original, tmp_path, 2100)
    with EventLog.open(path, readonly=True) as log:
        assert log.last_index == 2099
        assert [e.index for e in log.entries()][-1] == 2099
        assert [h.index for h in log.headers(verify=False)][-1] == 2099
        assert list(log.entries(2100)) == []
        with pytest.raises(IndexError):
            log.entry(2100)
        assert log.verify().ok


def test_a_batch_that_starts_past_a_truncation_ends_the_read(tmp_path, monkeypatch):
    """A writer truncates between two of a reader's batches: the reader's next batch finds
    no entry where it starts and the log ending before it, and ends, as it always did."""
    monkeypatch.setattr(reader_module, "READ_BATCH", 7)
    path = tmp_path / "log"
    with EventLog.open(path, durability="sync") as writer, EventLog.open(path, readonly=True) as log:
        writer.append_many([("put", {"i": i}) for i in range(1, 31)])
        seen = []
        for entry in log.entries():
            seen.append(entry.index)
            if entry.index == 7:  # the first batch is read: the second starts at 8
                writer.truncate_after(7)
        assert seen == list(range(1, 8))
        # Truncated further back than the reader had got: the next batch (15..) starts past the end.
        writer.append_many([("put", {"i": i}) for i in range(8, 31)])
        seen = []
        for entry in log.entries():
            seen.append(entry.index)
            if entry.index == 14:
                writer.truncate_after(3)
        assert seen == list(range(1, 15))


def test_recovery_names_a_missing_entry_at_a_batch_start(tmp_path, monkeypatch):
    """Replay reads with entry_batches: a gap where a read batch starts stops recovery with
    CorruptEntryError naming it (it was 'log entries 15..30 disappeared during replay')."""
    monkeypatch.setattr(reader_module, "READ_BATCH", 7)  # batches start at 1, 8, 15, ...
    journal = tmp_path / "run"
    tinyjob.write(journal, 30, snapshot_every=1000)  # no snapshot: recovery replays from 1
    delete_entry(journal / "log", 15)
    with pytest.raises(CorruptEntryError) as raised:
        replay.Journal.open(journal, state=tinyjob.make_state(), ops=tinyjob.ops).close()
    assert raised.value.index == 15 and MISSING_REASON in str(raised.value)


def test_a_writers_own_reads_name_the_gap_and_still_see_its_tail(master, tmp_path):
    """A writer's view (committed entries plus its group-commit tail): the gap is damage as
    for a reader, and the entries it appended since are read past it. (On a writer the
    empty batch used to be retried as a group commit in flight, forever: still_appended
    is true for every index up to the writer's last.)"""
    path = _copy_without(master, tmp_path, 1025)
    with EventLog.open(path, durability="group") as log:
        log.append_many([("put", {"i": i}) for i in range(N + 1, N + 6)])
        seen, error = _read_until_error(log.entries())
        assert (seen, error.index) == (list(range(1, 1025)), 1025)
        seen, error = _read_until_error(log.headers(1000, verify=False))
        assert (seen, error.index) == (list(range(1000, 1025)), 1025)
        assert [e.payload["i"] for e in log.entries(N - 1)] == list(range(N - 1, N + 6))
