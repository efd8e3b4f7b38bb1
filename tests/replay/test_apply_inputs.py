"""apply returns the handler's result; ``inputs=`` hands unlogged data to a handler and
replay rebuilds it from the payload (replay/ops.py's module doc)."""

from __future__ import annotations

import pytest
import torch

import replay
from replay.testing import assert_states_equal


def _state():
    return {"w": torch.zeros(4, dtype=torch.float64)}


def _dataset_ops(calls=None):
    """`step` adds rows of a fixed 'dataset' picked by ids; the rows are its inputs."""
    ops = replay.Ops()
    data = torch.arange(40, dtype=torch.float64).reshape(10, 4)

    def rebuild(*, ids, scale):
        if calls is not None:
            calls.append(list(ids))
        return data[ids]

    @ops.op(inputs=rebuild)
    def step(state, *, ids, scale, inputs):
        state["w"].add_(inputs.sum(0) * scale)
        return {"loss": float(state["w"].sum()), "rows": len(ids)}

    @ops.op
    def plain(state, *, by):
        state["w"].add_(by)

    return ops, data


def test_apply_returns_the_handler_result_and_index_is_separate(tmp_path):
    ops, _ = _dataset_ops()
    with replay.Journal.open(tmp_path, state=_state(), ops=ops) as journal:
        assert journal.apply("plain", by=1.0) is None
        assert journal.index == 1
        result = journal.apply("step", ids=[0, 1], scale=1.0)
        assert result == {"loss": float(journal.state["w"].sum()), "rows": 2}
        assert journal.index == 2


def test_live_inputs_are_used_and_never_logged_and_replay_rebuilds_them(tmp_path):
    calls = []
    ops, data = _dataset_ops(calls)
    live = _state()
    with replay.Journal.open(tmp_path, state=live, ops=ops, snapshot=replay.Every()) as journal:
        for step in range(5):
            ids = [step, (step * 3) % 10]
            journal.apply("step", ids=ids, scale=0.5, inputs=data[ids].clone())
        assert calls == []  # live inputs were handed over, nothing rebuilt
        entries = list(journal.log.entries(1, journal.index + 1))
        journal.flush()
        journal.abandon()  # no closing snapshot: the next open replays every entry
    assert all(set(e.payload["p"]) == {"ids", "scale"} for e in entries)  # inputs never reach the log
    again = _state()
    with replay.Journal.open(tmp_path, state=again, ops=ops) as journal:
        assert journal.recovery.entries_replayed == 5
    assert calls == [[s, (s * 3) % 10] for s in range(5)]  # replay rebuilt each step's inputs once
    assert_states_equal(again, live)


def test_live_apply_without_inputs_rebuilds_them_before_appending(tmp_path):
    calls = []
    ops, _ = _dataset_ops(calls)
    with replay.Journal.open(tmp_path, state=_state(), ops=ops) as journal:
        journal.apply("step", ids=[2], scale=1.0)
        assert calls == [[2]]
        assert journal.state["w"].tolist() == [8.0, 9.0, 10.0, 11.0]
        with pytest.raises(IndexError):  # the rebuild fails: nothing is appended
            journal.apply("step", ids=[99], scale=1.0)
        assert journal.log.last_index == journal.index == 1


def test_inputs_to_a_handler_without_an_inputs_parameter_is_a_type_error_naming_the_op(tmp_path):
    ops, _ = _dataset_ops()
    with replay.Journal.open(tmp_path, state=_state(), ops=ops) as journal:
        with pytest.raises(TypeError, match="'plain'.*inputs"):
            journal.apply("plain", by=1.0, inputs=torch.ones(1))
        assert journal.log.last_index == 0


def test_inputs_is_reserved_at_registration_and_as_a_payload_key(tmp_path):
    ops = replay.Ops()
    with pytest.raises(ValueError, match="'needs'.*requires 'inputs'"):
        @ops.op
        def needs(state, *, inputs): ...
    with pytest.raises(ValueError, match="'nowhere'.*no 'inputs'"):
        @ops.op(inputs=lambda **p: None)
        def nowhere(state, *, x): ...
    with pytest.raises(TypeError, match="callable"):
        ops.op(inputs=3)

    @ops.op
    def optional(state, *, x, inputs=None):
        return inputs

    with pytest.raises(replay.PayloadRejectedError, match="reserved"):
        ops.check_payload("optional", {"x": 1, "inputs": 2})
    with replay.Journal.open(tmp_path, state=_state(), ops=ops) as journal:
        assert journal.apply("optional", x=1) is None
        assert journal.apply("optional", x=1, inputs="live") == "live"


def test_a_logged_payload_key_named_inputs_stops_replay_naming_the_index(tmp_path):
    from .harness import append_raw

    ops = replay.Ops()

    @ops.op
    def optional(state, *, x, inputs=None): ...

    with replay.Journal.open(tmp_path, state=_state(), ops=ops) as journal:
        journal.apply("optional", x=1)
    append_raw(tmp_path, "optional", {"x": 2, "inputs": 3})
    with pytest.raises(replay.PayloadRejectedError, match="entry 2.*reserved") as err:
        replay.Journal.open(tmp_path, state=_state(), ops=ops)
    assert err.value.index == 2


def test_a_live_batch_that_differs_from_the_rebuilt_one_is_caught_by_the_next_digest(tmp_path):
    ops, data = _dataset_ops()
    with replay.Journal.open(tmp_path, state=_state(), ops=ops, digest_every=2, snapshot=replay.Every()) as journal:
        journal.apply("step", ids=[1], scale=1.0, inputs=data[[1]])
        journal.apply("step", ids=[2], scale=1.0, inputs=data[[3]])  # not what ids=[2] rebuilds
        journal.flush()
        digest_index = journal.index
        journal.abandon()  # no close snapshot: replay must run the entries
    with pytest.raises(replay.DivergenceError) as err:
        replay.Journal.open(tmp_path, state=_state(), ops=ops)
    assert err.value.index == digest_index == 3
