"""Issue 19, item 1: a sealed segment of a sibling log (a fork sharing the history up to
entry 100) put in place of this log's segment of the same name must be damage on every
read path that recovery and `entries` use, before any of its entries is handed out.

Such a segment is self-consistent (its file checksum and its own chain are fine, and a
segment straddling the fork point even chains from our entry before it); only its end
disagrees with the next segment's seed, or with the live log's boundary checksum.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from eventlog import CorruptEntryError, DamagedSegmentError, EventLog, segment
from eventlog.archive import list_segments

pytestmark = [pytest.mark.crash, pytest.mark.fault_archive]

SHARED, LAST, SEALED = 100, 320, 300


def payload(i: int, side: str) -> dict:
    # Both sides' entries have the same size, so both logs seal segments of the same names.
    fork = "ours" if i <= SHARED or side == "ours" else "them"
    return {"i": i, "fork": fork, "pad": bytes([i % 251]) * 200}


@pytest.fixture(scope="module")
def forked(tmp_path_factory):
    """Two logs sharing entries 1..100, diverging after, each with 1..300 sealed in small segments."""
    root = tmp_path_factory.mktemp("fork")
    ours, theirs = root / "ours", root / "theirs"
    with EventLog.open(ours) as log:
        log.append_many([("step", payload(i, "ours")) for i in range(1, SHARED + 1)])
    shutil.copytree(ours, theirs, ignore=shutil.ignore_patterns("lock.mdb", "*.lock"))
    saved = segment.TARGET_RAW
    segment.TARGET_RAW = 8 * 1024  # ~30 entries a segment: the fork point falls inside one
    try:
        for path, side in ((ours, "ours"), (theirs, "them")):
            with EventLog.open(path) as log:
                log.append_many([("step", payload(i, side)) for i in range(SHARED + 1, LAST + 1)])
                log.compact_through(SEALED)
    finally:
        segment.TARGET_RAW = saved
    names = list_segments(ours / "archive")
    assert names == list_segments(theirs / "archive") and len(names) >= 6
    assert names[-1].last == SEALED
    return ours, theirs, names


def _swap(forked, tmp_path, pick) -> tuple[Path, list]:
    """A copy of our log with the segments `pick(names)` replaced by the sibling's."""
    ours, theirs, names = forked
    path = tmp_path / "log"
    shutil.copytree(ours, path, ignore=shutil.ignore_patterns("lock.mdb", "*.lock"))
    swapped = pick(names)
    for name in swapped:
        shutil.copy(theirs / "archive" / name.name, path / "archive" / name.name)
    return path, swapped


def _straddling(names):
    return next(n for n in names if n.first <= SHARED < n.last)


CASES = {
    # the segment holding the fork point: it chains from our entry before it, ends elsewhere
    "the segment across the fork point": lambda names: [_straddling(names)],
    # a segment wholly after the fork, with ours on both sides of it
    "a segment after the fork": lambda names: [names[-3]],
    # the last sealed segment: only the live log's boundary checksum can tell
    "the last sealed segment": lambda names: [names[-1]],
    # the whole archive of the sibling copied over ours (same names): every link but the last holds
    "every segment": lambda names: list(names),
}


def _read_all(log, start=None):
    """Entries read from `start` until the read raises; returns (entries, the error)."""
    seen = []
    try:
        for entry in log.entries(start):
            seen.append(entry)
    except CorruptEntryError as exc:
        return seen, exc
    return seen, None


@pytest.mark.timeout(120)
@pytest.mark.parametrize("case", list(CASES))
def test_a_sibling_logs_segment_is_damage_before_any_of_its_entries_is_read(forked, tmp_path, case):
    path, swapped = _swap(forked, tmp_path, CASES[case])
    foreign = [n for n in swapped if n.last > SHARED]
    with EventLog.open(path, readonly=True) as log:
        # a scan from the start
        seen, error = _read_all(log)
        assert isinstance(error, DamagedSegmentError), f"no damage reported; read {len(seen)} entries"
        assert all(e.payload["fork"] == "ours" for e in seen), "a sibling's entry was handed out as ours"
        assert error.path.endswith(".seg") and Path(error.path).name in {n.name for n in foreign}, error
        assert error.first <= error.index <= error.last and str(error.index) in str(error)
        # random access: from the middle of the first foreign segment, and one entry of it
        victim = foreign[0]
        middle = max(victim.first, SHARED + 1) + (victim.last - max(victim.first, SHARED + 1)) // 2
        seen, error = _read_all(log, middle)
        assert isinstance(error, DamagedSegmentError) and not seen, (len(seen), error)
        assert Path(error.path).name in {n.name for n in foreign}
        with pytest.raises(DamagedSegmentError):
            log.entry(middle)
        with pytest.raises(DamagedSegmentError):
            list(log.headers(middle, verify=False))  # recovery's preflight reads headers only
        # the live entries after the archive are ours and still read
        assert log.entry(SEALED + 1).payload == payload(SEALED + 1, "ours")
        assert not log.verify().ok


@pytest.mark.timeout(60)
def test_segments_shared_before_the_fork_still_read(forked, tmp_path):
    """A segment wholly before the fork point is the same history: copying it changes nothing."""
    path, swapped = _swap(forked, tmp_path, lambda names: [n for n in names if n.last <= SHARED])
    assert swapped
    with EventLog.open(path, readonly=True) as log:
        entries = list(log.entries())
        assert [e.payload for e in entries] == [payload(i, "ours") for i in range(1, LAST + 1)]
        assert log.entry(swapped[-1].last).index == swapped[-1].last
        assert log.verify().ok


# ------------------------------------------------------------------ recovery through a sibling's segment


def _journal_steps(journal, state, seeds):
    for seed in seeds:
        journal.apply("train_step", ids=state["data"].peek(4), seed=seed)
        journal.apply("add", row=seed % 4, value=0.25)


@pytest.mark.timeout(180)
def test_recovery_from_an_older_snapshot_through_a_sibling_segment_is_damage(tmp_path):
    """A forked run directory: both journals share entries to the fork, then train on. Our
    archive segment holding the entries after our older snapshot is replaced by the
    sibling's of the same name and our newest snapshot is damaged: recovery must stop
    with damage naming the segment and the index, not replay the sibling's entries."""
    import replay
    from tests.replay.harness import damage_snapshot, open_journal
    from tests.replay.models import make_ops, make_state

    ours, theirs = tmp_path / "ours", tmp_path / "theirs"
    state, ops = make_state(), make_ops()
    with open_journal(ours, state, ops, snapshot=replay.Every(), keep_last=3, async_snapshots=False,
                      snapshot_on_close=False) as journal:
        _journal_steps(journal, state, range(10))
        older = journal.snapshot(wait=True).result()
        _journal_steps(journal, state, range(10, 20))
        journal.flush()
        journal.abandon()
    shutil.copytree(ours, theirs, ignore=shutil.ignore_patterns("lock.mdb", "*.lock", "LOCK"))
    newest = {}
    for root, seeds in ((ours, range(20, 60)), (theirs, range(120, 160))):
        again = make_state()
        with open_journal(root, again, ops, snapshot=replay.Every(), keep_last=3, async_snapshots=False,
                          snapshot_on_close=False) as journal:
            _journal_steps(journal, again, seeds)
            newest[root] = journal.snapshot(wait=True).result()
            _journal_steps(journal, again, range(60, 62))
            journal.flush()
            journal.abandon()
    assert newest[ours].index == newest[theirs].index
    ours_names = list_segments(ours / "log" / "archive")
    swap = next(n for n in ours_names if n.first <= older.index + 1 <= n.last)
    assert swap.last == newest[ours].index, ours_names  # the segment sealed when the newest snapshot was taken
    assert swap in list_segments(theirs / "log" / "archive")
    shutil.copy(theirs / "log" / "archive" / swap.name, ours / "log" / "archive" / swap.name)
    damage_snapshot(ours, newest[ours])

    with pytest.raises(CorruptEntryError) as raised:
        open_journal(ours, make_state(seed=5), ops, keep_last=3)
    assert swap.name in str(raised.value) and str(raised.value.index) in str(raised.value), raised.value
    assert swap.first <= raised.value.index <= swap.last
