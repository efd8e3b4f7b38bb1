"""Recorded scalars (replay/recorded.py): ``@ops.op(record=...)`` keeps what a handler returns
beside the log, keyed by (term, index); recovery re-records what a crash lost; a truncated
suffix's values are never shown; bad values are refused naming op, index and field."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

import replay
from eventlog import EventLog
from replay import layout
from replay.__main__ import main as cli
from replay.recorded import (HEADER, RecordedFileError, RecordedValueError, read_recorded, read_rows,
                             record_names, values_of)

pytestmark = pytest.mark.timeout(120)

# What the handler of `bad` returns for a payload naming it (values the log could not carry).
RETURNS = {"inf": float("inf"), "vector": torch.ones(2), "bool": True, "complex": torch.tensor(1 + 2j),
           "none": None, "f32": np.float32(0.25), "array": np.array(7)}


def make_ops() -> replay.Ops:
    ops = replay.Ops()

    @ops.op(record=("loss",))
    def step(state, *, lr):
        state["w"].mul_(1 - lr)
        return state["w"].abs().sum()  # a 0-d tensor: .item() is recorded

    @ops.op(record=("a", "b"))
    def pair(state, *, n):
        state["w"].add_(n)
        return {"a": n, "b": float("nan"), "other": "not recorded"}

    @ops.op(record="x")
    def bad(state, *, value):
        state["w"].add_(100.0)  # half-mutated before the refusal: rolled back
        return RETURNS.get(value, value) if isinstance(value, str) else value

    @ops.op
    def plain(state, *, n):
        state["w"].add_(n)
        return 42.0  # returned to the caller, never recorded

    return ops


def open_journal(path, ops=None, **kw):
    return replay.Journal.open(path, state={"w": torch.ones(4)}, ops=ops or make_ops(), environment="ignore",
                               snapshot=replay.Every(entries=1000), **kw)


def recorded(path):
    with EventLog.open(layout.log_dir(path), readonly=True) as log:
        return read_recorded(path, log)


def test_values_are_recorded_by_term_and_index_and_nan_is_kept(tmp_path):
    with open_journal(tmp_path) as journal:
        for _ in range(4):
            journal.apply("step", lr=0.5)
        journal.apply("pair", n=3)
        journal.apply("plain", n=1)
    found = recorded(tmp_path)
    assert found.series["loss"] == [(1, 2.0), (2, 1.0), (3, 0.5), (4, 0.25)]
    assert found.series["a"] == [(5, 3)] and isinstance(found.series["a"][0][1], int)
    assert math.isnan(found.series["b"][0][1])
    assert set(found.series) == {"loss", "a", "b"}  # plain records nothing; "other" is ignored
    first, *rows = layout.recorded_file(tmp_path).read_bytes().splitlines(keepends=True)
    assert first == HEADER
    assert json.loads(rows[-1]) == {"t": 1, "i": 5, "op": "pair", "v": {"a": 3, "b": None}}


@pytest.mark.parametrize("value, reason", [
    ("inf", "not finite"), ("vector", r"shape \(2,\)"), ("bool", "not a real number"),
    ("0.5", "str '0.5' is not a real number"), ("complex", "not a real number"), ("none", "not a real number"),
])
def test_a_bad_value_is_refused_naming_op_index_field_and_the_entry_is_rolled_back(tmp_path, value, reason):
    with open_journal(tmp_path) as journal:
        journal.apply("step", lr=0.5)
        before = journal.state["w"].clone()
        with pytest.raises(RecordedValueError, match=reason) as caught:
            journal.apply("bad", value=value)
        assert (caught.value.op, caught.value.index, caught.value.field) == ("bad", 2, "x")
        assert "op 'bad', entry 2, recorded field 'x'" in str(caught.value)
        assert journal.index == 1 and journal.log.last_index == 1 and torch.equal(journal.state["w"], before)
        journal.apply("bad", value="f32")  # numpy scalars and 0-d arrays are real numbers
        journal.apply("bad", value="array")
    assert recorded(tmp_path).series["x"] == [(2, 0.25), (3, 7)]


def test_a_mapping_without_a_recorded_name_is_refused():
    with pytest.raises(RecordedValueError, match="'b'.*without it"):
        values_of("pair", 9, ("a", "b"), {"a": 1.0})
    with pytest.raises(RecordedValueError, match="must return a mapping"):
        values_of("pair", 9, ("a", "b"), 1.0)


@pytest.mark.parametrize("record, error", [("", ValueError), (("a", "a"), ValueError), ((1,), TypeError),
                                           ("x" * 65, ValueError), (5, TypeError)])
def test_bad_record_names_are_refused_at_registration(record, error):
    with pytest.raises(error):
        replay.Ops().op(lambda state: None, name="f", record=record)
    assert record_names(None) == () and record_names("loss") == ("loss",)


def test_values_lost_in_a_crash_are_recomputed_by_recovery_and_never_change_the_state(tmp_path):
    journal = open_journal(tmp_path, durability="sync")
    for _ in range(6):
        journal.apply("step", lr=0.25)
    live = journal.state["w"].clone()
    journal.abandon()  # killed: the buffered values were never written
    assert read_rows(layout.recorded_file(tmp_path)) == ({}, 0)
    with open_journal(tmp_path) as journal:
        assert journal.recovery.entries_replayed == 6 and torch.equal(journal.state["w"], live)
        journal.apply("step", lr=0.25)
    assert [i for i, _ in recorded(tmp_path).series["loss"]] == list(range(1, 8))
    expected = [float(live.sum()) / 0.75 ** (6 - i) for i in range(1, 7)]
    assert [v for _, v in recorded(tmp_path).series["loss"][:6]] == pytest.approx(expected)


def test_a_snapshot_makes_the_values_it_covers_durable(tmp_path):
    journal = open_journal(tmp_path, durability="sync")
    for _ in range(3):
        journal.apply("step", lr=0.5)
    journal.snapshot(wait=True)
    journal.abandon()
    assert [i for (_, i) in read_rows(layout.recorded_file(tmp_path))[0]] == [1, 2, 3]


def test_values_of_a_truncated_suffix_are_never_shown(tmp_path):
    with open_journal(tmp_path, snapshot_on_close=False) as journal:
        for _ in range(10):
            journal.apply("step", lr=0.5)
    assert cli(["truncate", str(tmp_path), "--after", "5", "--reason", "test"]) == 0
    with open_journal(tmp_path) as journal:
        start = journal.index
        for _ in range(3):
            journal.apply("pair", n=1)
    found = recorded(tmp_path)
    assert [i for i, _ in found.series["loss"]] == [1, 2, 3, 4, 5]
    assert [i for i, _ in found.series["a"]] == [start + 1, start + 2, start + 3]
    assert found.stale == 5  # term 1's entries 6..10


def test_an_op_given_record_later_replays_old_entries_with_a_warning(tmp_path):
    ops = replay.Ops()
    ops.op(lambda state, *, n: [state["w"].add_(n)] and None, name="add")
    journal = open_journal(tmp_path, ops=ops, durability="sync")
    journal.apply("add", n=1)
    journal.abandon()
    recording = replay.Ops()
    recording.op(lambda state, *, n: [state["w"].add_(n)] and None, name="add", record="total")
    with pytest.warns(RuntimeWarning, match="recorded field 'total'.*replay goes on"):
        with open_journal(tmp_path, ops=recording) as journal:
            assert journal.recovery.entries_replayed == 1 and journal.state["w"].tolist() == [2.0] * 4


def test_torn_lines_are_skipped_and_a_foreign_file_is_refused(tmp_path):
    with open_journal(tmp_path) as journal:
        journal.apply("step", lr=0.5)
    path = layout.recorded_file(tmp_path)
    with open(path, "ab") as f:
        f.write(b'{"t":1,"i":2,"op":"step","v":{"lo')  # a crash mid-write
    assert recorded(tmp_path).skipped == 1
    with open_journal(tmp_path) as journal:  # the writer closes the torn line before appending
        journal.apply("step", lr=0.5)
    found = recorded(tmp_path)
    assert [i for i, _ in found.series["loss"]] == [1, 2] and found.skipped == 1
    path.write_bytes(b'{"format": "something-else"}\n')
    with pytest.raises(RecordedFileError, match="not a replay-recorded version 1 file"):
        recorded(tmp_path)
    path.write_bytes(HEADER[:10])  # a header torn by a crash: rewritten by the next writer
    with open_journal(tmp_path) as journal:
        journal.apply("step", lr=0.5)
    assert path.read_bytes().startswith(HEADER)


def test_stats_prints_count_first_last_min_max(tmp_path, capsys):
    with open_journal(tmp_path) as journal:
        for _ in range(3):
            journal.apply("step", lr=0.5)
        journal.apply("pair", n=2)
    assert cli(["stats", str(tmp_path), "--json"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    metrics = {r["metric"]: r for r in rows if r["section"] == "recorded"}
    assert metrics["loss"] | {} == {"section": "recorded", "metric": "loss", "ops": ["step"], "count": 3, "nan": 0,
                                    "first_index": 1, "first": 2.0, "last_index": 3, "last": 0.5, "min": 0.5,
                                    "max": 2.0}
    assert metrics["b"]["nan"] == 1 and metrics["b"]["min"] is None
    assert cli(["stats", str(tmp_path)]) == 0
    text = capsys.readouterr().out
    assert "recorded values" in text and "loss" in text
