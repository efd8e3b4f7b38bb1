"""replay.entries: the journal's history as handlers saw it, across the archive, read-only."""

import os

import pytest
import torch

import eventlog
import replay
from replay.history import entries

pytestmark = pytest.mark.timeout(120)


def make_ops():
    ops = replay.Ops()

    @ops.op
    def add(state, *, value, tag):
        state["w"] += value

    return ops


def run(path, n, **options):
    with replay.Journal.open(path, state={"w": torch.zeros(2)}, ops=make_ops(), snapshot=replay.Every(entries=5),
                             async_snapshots=False, digest_every=4, **options) as journal:
        for step in range(journal.count(), n):
            journal.apply("add", value=float(step), tag=f"s{step}")


def test_entries_read_archived_history_with_payloads_unwrapped(tmp_path):
    run(tmp_path / "j", 20)
    with eventlog.EventLog.open(tmp_path / "j" / "log", readonly=True) as log:
        assert log.live_first_index > 10  # compaction moved most of the history into the archive
    adds = list(entries(tmp_path / "j", op="add"))
    assert [e.payload["tag"] for e in adds] == [f"s{i}" for i in range(20)]
    assert all(e.version == 1 and e.term == 1 and not e.is_engine_entry for e in adds)
    everything = list(entries(tmp_path / "j"))
    assert [e.index for e in everything] == list(range(1, len(everything) + 1))
    digests = [e for e in everything if e.op == "replay.digest"]
    assert digests and all(e.is_engine_entry for e in digests)
    assert [e.index for e in entries(tmp_path / "j", start=3, stop=6)] == [3, 4, 5]


def test_entries_write_nothing_and_take_no_lock(tmp_path):
    run(tmp_path / "j", 8)
    with replay.Journal.open(tmp_path / "j", state={"w": torch.zeros(2)}, ops=make_ops(),
                             snapshot_on_close=False) as journal:  # a live writer holds the lock meanwhile
        assert len(list(entries(tmp_path / "j", op="add"))) == 8
        journal.apply("add", value=1.0, tag="live")
        journal.flush()  # readers see committed entries
        assert [e.payload["tag"] for e in entries(tmp_path / "j", op="add")][-1] == "live"
    run(tmp_path / "k", 3)

    def files():  # LMDB's lock.mdb is its reader table: every reader registers there
        return {p: (p.stat().st_size, p.stat().st_mtime_ns) for p in (tmp_path / "k").rglob("*")
                if p.is_file() and p.name != "lock.mdb"}

    before = files()
    list(entries(tmp_path / "k"))
    assert files() == before


def test_deleted_history_and_missing_logs_are_named(tmp_path):
    run(tmp_path / "j", 20, archive=None)
    with pytest.raises(eventlog.CompactedError):
        list(entries(tmp_path / "j", start=1))
    with pytest.raises(FileNotFoundError, match="not a journal"):
        list(entries(tmp_path))


def test_a_log_of_foreign_entries_is_an_envelope_error(tmp_path):
    with eventlog.EventLog.open(tmp_path / "bare") as log:
        log.append("raw", {"not": "an envelope"})
    with pytest.raises(replay.EnvelopeError, match="log entry 1 "):
        list(entries(tmp_path / "bare"))
