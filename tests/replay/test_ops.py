"""The op registry: registration rules, payload checks, versions and upcasters."""

from __future__ import annotations

import pytest

import replay

from .harness import append_raw, open_journal
from .models import make_state


def _counter_ops(version=1):
    ops = replay.Ops()

    @ops.op(name="bump", version=version)
    def bump(state, *, by):
        state["counters"]["total"] += by

    return ops


def test_registration_rules():
    ops = replay.Ops()

    @ops.op
    def step(state, *, x): ...

    assert ops.spec("step").version == 1 and "step" in ops and ops.names() == ["step"]
    with pytest.raises(ValueError, match="already registered"):
        ops.op(step)
    with pytest.raises(ValueError, match="reserved"):
        ops.op(step, name="replay.digest")
    with pytest.raises(ValueError, match="version"):
        ops.op(step, name="other", version=0)
    with pytest.raises(replay.UnknownOpError):
        ops.spec("missing")


def test_validator_false_or_raising_rejects_before_append():
    ops = replay.Ops()
    ops.op(lambda state, **p: None, name="pos", validate=lambda p: p["n"] > 0)
    ops.check_payload("pos", {"n": 1})
    with pytest.raises(replay.PayloadRejectedError, match="returned False"):
        ops.check_payload("pos", {"n": -1})
    with pytest.raises(replay.PayloadRejectedError, match="KeyError"):
        ops.check_payload("pos", {"m": 1})
    ops.op(lambda state, *, n: None, name="sig")
    with pytest.raises(replay.PayloadRejectedError, match="missing a required argument"):
        ops.check_payload("sig", {"m": 1})


def test_version_mismatch_without_upcaster_names_index_and_op(tmp_path):
    with open_journal(tmp_path, make_state(), _counter_ops(version=1), snapshot_on_close=False) as journal:
        journal.apply("bump", by=2)  # (no closing snapshot: the reopen replays these entries)
        journal.apply("bump", by=3)
        index = journal.index
    with pytest.raises(replay.VersionMismatchError) as err:
        open_journal(tmp_path, make_state(), _counter_ops(version=2))
    assert err.value.index == index - 1 and err.value.op == "bump"
    assert (err.value.entry_version, err.value.handler_version) == (1, 2)
    assert "upcaster" in str(err.value)


def test_upcasters_chain_old_entries_to_the_handler_version(tmp_path):
    with open_journal(tmp_path, make_state(), _counter_ops(version=1), keep_log=True,
                      snapshot_on_close=False) as journal:  # the reopen replays (upcasts) these entries
        journal.apply("bump", by=2)
        journal.apply("bump", by=3)
    ops = replay.Ops()

    @ops.op(name="bump", version=3)
    def bump_v3(state, *, amount, times):
        state["counters"]["total"] += amount * times

    @ops.upcaster("bump", from_version=1)
    def v1_to_v2(payload):
        return {"amount": payload["by"]}

    @ops.upcaster("bump", from_version=2)
    def v2_to_v3(payload):
        return {**payload, "times": 10}

    state = make_state()
    with open_journal(tmp_path, state, ops) as journal:
        assert state["counters"]["total"] == 50
        journal.apply("bump", amount=1, times=1)
        assert journal.log.entry(journal.index).payload["v"] == 3


def test_entry_newer_than_the_handler_is_refused(tmp_path):
    with open_journal(tmp_path, make_state(), _counter_ops(version=1)):
        pass
    index = append_raw(tmp_path, "bump", {"by": 1}, version=5)
    with pytest.raises(replay.VersionMismatchError, match="newer") as err:
        open_journal(tmp_path, make_state(), _counter_ops(version=1))
    assert err.value.index == index


def test_entry_without_an_envelope_is_refused(tmp_path):
    from eventlog import EventLog

    with open_journal(tmp_path, make_state(), _counter_ops()):
        pass
    with EventLog.open(tmp_path / "log") as log:
        index = log.append("bump", {"by": 1})  # not written by a Journal
    with pytest.raises(replay.EnvelopeError) as err:
        open_journal(tmp_path, make_state(), _counter_ops())
    assert err.value.index == index and err.value.op == "bump"
