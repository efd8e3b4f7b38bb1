"""replay/INVARIANTS.md invariants 1-6, one test (or more) each."""

from __future__ import annotations

import logging

import lmdb
import pytest

import replay
from eventlog import CorruptEntryError, EventLog

from .harness import append_raw, open_journal
from .models import assert_same, fingerprint, make_ops, make_state


def _train(journal, state, steps, start=0):
    for s in range(start, start + steps):
        journal.apply("train_step", ids=state["data"].peek(8), seed=s)
        journal.apply("add", row=s % 4, value=0.25 * s)


# ---------------------------------------------------------------- invariant 1: write-ahead


def test_entry_is_in_the_log_before_its_handler_runs_and_flush_makes_it_durable(tmp_path):
    seen = []
    ops = make_ops()
    journal_box = []

    @ops.op
    def observe(state, *, tag):
        journal = journal_box[0]
        last = journal.log.last_index
        seen.append((last, journal.log.entry(last).op, journal.log.entry(last).payload))

    state = make_state()
    with open_journal(tmp_path, state, ops, durability="group") as journal:
        journal_box.append(journal)
        assert journal.apply("observe", tag="x") is None  # apply returns what the handler returns
        index = journal.index
        assert seen == [(index, "observe", {"v": 1, "p": {"tag": "x"}})]
        for _ in range(20):
            journal.apply("add", row=0, value=1.0)
        assert journal.flush() == journal.index == journal.log.durable_index == journal.log.last_index


# ---------------------------------------------------------------- invariant 2: snapshots


def test_snapshot_holds_exactly_entries_through_its_index_and_never_beyond_durable(tmp_path):
    state, ops = make_state(), make_ops()
    with open_journal(tmp_path, state, ops, snapshot=replay.Every(), durability="group", keep_log=True) as journal:
        store = journal.snapshots
        real_save_async = store.save_async
        durable_at_save = []

        def checking_save_async(tree, *, index, term, meta=None):
            durable_at_save.append((index, journal.log.durable_index))
            return real_save_async(tree, index=index, term=term, meta=meta)

        store.save_async = checking_save_async
        _train(journal, state, 5)
        expected = fingerprint(state)
        handle = journal.snapshot()
        _train(journal, state, 3, start=5)  # must not leak into the staged snapshot
        info = handle.result()
        assert info.index == 10 and info.meta["replay"]["index"] == 10
        assert durable_at_save == [(10, 10)]
        loaded = store.load(info)
        fresh = make_state(seed=5)
        replay.components.restore(fresh, {k: replay.components.kind_of(k, v) for k, v in fresh.items()}, loaded)
        assert_same(fresh, expected)


# ---------------------------------------------------------------- invariant 3: recovery


def test_recovery_replays_every_later_entry_once_to_the_same_bytes_and_is_idempotent(tmp_path):
    state, ops = make_state(), make_ops()
    with open_journal(tmp_path, state, ops, snapshot=replay.Every(entries=7)) as journal:
        _train(journal, state, 12)
        last = journal.index
    expected = fingerprint(state)
    for attempt in range(2):  # recovering twice gives the same state
        again = make_state(seed=10 + attempt)
        with open_journal(tmp_path, again, ops, snapshot=replay.Every()) as journal:
            assert journal.index == last
            assert journal.recovery.replayed.stop == last + 1
            assert journal.recovery.entries_replayed == last - journal.recovery.snapshot_index
            assert_same(again, expected)


def test_crash_during_recovery_then_recover_again_gives_the_same_state(tmp_path):
    state, ops = make_state(), make_ops()
    with open_journal(tmp_path, state, ops, snapshot=replay.Every(), keep_log=True,
                      snapshot_on_close=False) as journal:  # recovery must replay the entries
        _train(journal, state, 6)
    expected = fingerprint(state)

    flaky = replay.Ops()
    flaky.op(ops.spec("train_step").handler, name="train_step")
    calls = []

    @flaky.op(name="add")
    def dies_midway(st, *, row, value):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt  # the process "dies" in the middle of replay
        ops.spec("add").handler(st, row=row, value=value)

    half = make_state(seed=3)
    with pytest.raises(KeyboardInterrupt):
        open_journal(tmp_path, half, flaky)
    # The half-replayed live state is thrown away with the process; a new one recovers fully.
    again = make_state(seed=4)
    with open_journal(tmp_path, again, ops) as journal:
        assert_same(again, expected)
    # And recovery of the (unchanged) directory once more is identical.
    third = make_state(seed=5)
    with open_journal(tmp_path, third, ops):
        assert_same(third, expected)


def test_optimizer_references_and_plain_dict_identity_survive_recovery(tmp_path):
    state, ops = make_state(), make_ops()
    with open_journal(tmp_path, state, ops) as journal:
        _train(journal, state, 3)
    expected = fingerprint(state)
    again = make_state(seed=1)
    params = list(again["model"].parameters())
    counters, table = again["counters"], again["table"]
    with open_journal(tmp_path, again, ops):
        assert_same(again, expected)
        assert again["counters"] is counters and again["table"] is table
        assert all(p is q for p, q in zip(again["optim"].param_groups[0]["params"], params))


# ---------------------------------------------------------------- invariant 4: compaction


def test_without_an_archive_the_log_is_compacted_only_through_the_oldest_retained_snapshot(tmp_path):
    state, ops = make_state(), make_ops()
    with open_journal(tmp_path, state, ops, snapshot=replay.Every(entries=5), keep_last=2,
                      async_snapshots=False, archive=None) as journal:  # compaction deletes
        for i in range(40):
            journal.apply("add", row=i % 4, value=1.0)
            retained = [s.index for s in journal.snapshots.list()]
            assert journal.log.first_index - 1 <= min(retained)
        assert len(retained) == 2
        assert journal.log.first_index - 1 == min(retained) > 0


def test_with_an_archive_lmdb_is_compacted_through_the_newest_snapshot_and_history_stays_readable(tmp_path):
    state, ops = make_state(), make_ops()
    with open_journal(tmp_path, state, ops, snapshot=replay.Every(entries=5), keep_last=2,
                      async_snapshots=False) as journal:  # the default archive keeps everything
        for i in range(40):
            journal.apply("add", row=i % 4, value=1.0)
            retained = [s.index for s in journal.snapshots.list()]
            assert journal.log.live_first_index - 1 <= max(retained)
        assert journal.log.live_first_index - 1 == max(retained) == 40
        assert journal.log.first_index == 1  # nothing deleted: every entry is read from the archive
        assert [e.index for e in journal.log.entries()] == list(range(1, 41))


def test_keep_log_never_compacts(tmp_path):
    state, ops = make_state(), make_ops()
    with open_journal(tmp_path, state, ops, snapshot=replay.Every(entries=5), keep_last=2, keep_log=True,
                      async_snapshots=False) as journal:
        for i in range(30):
            journal.apply("add", row=0, value=1.0)
        assert journal.log.first_index == 1


# ---------------------------------------------------------------- invariant 5: stop naming the index


def _written(tmp_path):
    state, ops = make_state(), make_ops()
    with open_journal(tmp_path, state, ops, snapshot=replay.Every(), keep_log=True,
                      snapshot_on_close=False) as journal:  # recovery must replay the entries
        for i in range(6):
            journal.apply("add", row=i % 4, value=1.0)
    return ops


def test_unknown_op_stops_recovery_naming_index_and_op(tmp_path):
    _written(tmp_path)
    index = append_raw(tmp_path, "mystery", {"x": 1})
    with pytest.raises(replay.UnknownOpError) as err:
        open_journal(tmp_path, make_state(), make_ops())
    assert err.value.index == index and err.value.op == "mystery"
    assert f"log entry {index}" in str(err.value)


def test_payload_the_handler_rejects_stops_recovery_naming_index(tmp_path):
    _written(tmp_path)
    index = append_raw(tmp_path, "add", {"row": 0})  # missing `value`: the handler rejects it
    with pytest.raises(replay.HandlerError) as err:
        open_journal(tmp_path, make_state(), make_ops())
    assert err.value.index == index and err.value.op == "add"
    assert isinstance(err.value.__cause__, TypeError)


def test_checksum_failure_stops_recovery_naming_index(tmp_path):
    _written(tmp_path)
    env = lmdb.open(str(tmp_path / "log"), max_dbs=2, subdir=True)
    entries = env.open_db(b"entries")
    with env.begin(write=True) as txn:
        key = (4).to_bytes(8, "big")
        value = bytearray(txn.get(key, db=entries))
        value[-1] ^= 0x01
        txn.put(key, bytes(value), db=entries)
    env.close()
    with pytest.raises(CorruptEntryError) as err:
        open_journal(tmp_path, make_state(), make_ops())
    assert err.value.index == 4


def test_refused_payload_is_never_appended(tmp_path):
    state, ops = make_state(), make_ops()
    with open_journal(tmp_path, state, ops) as journal:
        with pytest.raises(replay.PayloadRejectedError):
            journal.apply("train_step", ids=[], seed=1)  # the op's validator says no
        with pytest.raises(replay.PayloadRejectedError):
            journal.apply("add", row=1)  # does not bind to the handler's signature
        with pytest.raises(replay.UnknownOpError):
            journal.apply("nope", x=1)
        with pytest.raises(TypeError):
            journal.apply("add", row=1, value=object())  # the log cannot encode it
        assert journal.log.last_index == journal.index == 0


# ---------------------------------------------------------------- invariant 6: poison entries


def test_raising_handler_leaves_no_entry_and_rolls_state_back(tmp_path):
    state, ops = make_state(), make_ops()
    with open_journal(tmp_path, state, ops, snapshot=replay.Every(entries=4), durability="group") as journal:
        _train(journal, state, 5)
        before = fingerprint(state)
        index = journal.index
        with pytest.raises(RuntimeError, match="boom"):
            journal.apply("boom", row=2)
        assert journal.log.last_index == journal.index == index
        assert_same(state, before)
        journal.apply("add", row=0, value=1.0)
        assert journal.index == index + 1  # the index is reused
    again = make_state(seed=8)
    with open_journal(tmp_path, again, ops):
        assert again["counters"]["total"] == state["counters"]["total"]
        assert_same(again, state)


def test_poison_entry_left_by_a_crash_stops_recovery_until_the_operator_truncates(tmp_path, caplog):
    _written(tmp_path)
    index = append_raw(tmp_path, "boom", {"row": 1})  # the process died before the cleanup
    with pytest.raises(replay.HandlerError) as err:
        open_journal(tmp_path, make_state(), make_ops())
    assert err.value.index == index and err.value.op == "boom"
    assert f"after={index - 1}" in str(err.value)
    with caplog.at_level(logging.WARNING, logger="replay"):
        dropped = replay.truncate(tmp_path, after=index - 1, reason="poison entry")
    assert dropped == [(index, "boom")]
    assert "replay.truncate" in caplog.text and "poison entry" in caplog.text
    with EventLog.open(tmp_path / "log", readonly=True) as log:
        audit = log.entry(index)
        assert audit.op == "replay.truncate" and audit.payload["p"]["dropped"] == [[index, "boom"]]
    state = make_state(seed=2)
    with open_journal(tmp_path, state, make_ops()) as journal:
        assert journal.index == index and state["counters"]["total"] == 6


def test_truncate_refuses_to_drop_entries_a_snapshot_covers(tmp_path):
    state, ops = make_state(), make_ops()
    with open_journal(tmp_path, state, ops, snapshot=replay.Every(entries=3), async_snapshots=False,
                      keep_log=True) as journal:
        for i in range(7):
            journal.apply("add", row=0, value=1.0)
    from eventlog import EventLog

    def term():
        with EventLog.open(tmp_path / "log", readonly=True) as log:
            return log.term

    before = term()
    with pytest.raises(replay.RecoveryError):
        replay.truncate(tmp_path, after=1)
    assert replay.truncate(tmp_path, after=7) == []
    assert term() == before, "a refused (or no-op) truncate opened the log for writing: it took a term"
