"""The apply path's shortcuts (issue 22) keep their contracts:

- a payload of plain scalars reaches the handler as the caller gave it, which is what
  decoding the appended bytes gives (replay/applier.py, `_plain`); anything else (a
  subclass of int, a tuple, a numpy scalar) is still decoded from those bytes;
- rng_check="warn" stops checking an op it has reported (once per op), and still checks
  every other op; "strict" checks every apply;
- the one-thread guard without its generator frame (Guards.run) still names the thread
  inside and what it is doing, and a refused call changes nothing.
"""

from __future__ import annotations

import enum
import threading
import warnings

import pytest
import torch

import replay
import replay.layout
from eventlog import EventLog

from .harness import open_journal


class Colour(enum.IntEnum):
    RED = 1


def _recording_ops(seen: list):
    ops = replay.Ops()

    @ops.op
    def record(state, **payload):
        seen.append(payload)
        state["w"].add_(1.0)

    return ops


@pytest.mark.parametrize("payload", [
    {"seed": 7, "lr": 0.1, "name": "step", "flag": True, "none": None},
    {"big": 2**64 - 1, "neg": -2**63, "zero": -0.0, "inf": float("inf"), "text": "héllo"},
])
def test_a_plain_payload_reaches_the_handler_as_replay_will_give_it(tmp_path, payload):
    seen = []
    with open_journal(tmp_path, {"w": torch.zeros(1)}, _recording_ops(seen), snapshot_on_close=False) as journal:
        journal.apply("record", **payload)
    live = seen[0]
    with EventLog.open(replay.layout.log_dir(tmp_path), readonly=True) as log:
        stored = log.entry(1).payload["p"]  # decoded from the stored bytes, as replay reads them
    assert [(type(v), repr(v)) for v in live.values()] == [(type(v), repr(v)) for v in stored.values()]
    assert list(live) == list(stored)
    seen.clear()
    with open_journal(tmp_path, {"w": torch.zeros(1)}, _recording_ops(seen)) as journal:  # replays entry 1
        assert journal.index == 1
    assert [(type(v), repr(v)) for v in seen[0].values()] == [(type(v), repr(v)) for v in live.values()]


def test_a_payload_that_is_not_plain_is_still_decoded_from_the_appended_bytes(tmp_path):
    seen = []
    import numpy  # a dependency of the package (pyproject.toml): never skipped
    with open_journal(tmp_path, {"w": torch.zeros(1)}, _recording_ops(seen), snapshot_on_close=False) as journal:
        journal.apply("record", colour=Colour.RED, pair=(1, 2), half=numpy.float32(0.1), ids=[1, 2])
    got = seen[0]
    assert type(got["colour"]) is int and got["colour"] == 1  # an IntEnum comes back as the int replay reads
    assert got["pair"] == [1, 2]  # a tuple as the list replay reads
    assert type(got["half"]) is float and got["half"] == float(numpy.float32(0.1))
    assert got["ids"] == [1, 2]


def _drawing_ops():
    ops = replay.Ops()

    @ops.op
    def draws(state, *, seed):
        state["w"].add_(torch.rand(1))

    @ops.op
    def draws_too(state, *, seed):
        state["w"].add_(torch.rand(1))

    return ops


def test_warn_mode_reports_each_op_once_and_keeps_checking_the_others(tmp_path):
    with open_journal(tmp_path, {"w": torch.zeros(1)}, _drawing_ops()) as journal:
        with pytest.warns(replay.UnseededDrawWarning, match="'draws'") as caught:
            journal.apply("draws", seed=1)
        assert caught[0].filename == __file__  # it points at the line that called apply
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            journal.apply("draws", seed=2)  # reported already: not checked again
        with pytest.warns(replay.UnseededDrawWarning, match="'draws_too'"):
            journal.apply("draws_too", seed=3)  # another op is still checked


def test_strict_mode_checks_every_apply_of_an_op(tmp_path):
    with open_journal(tmp_path, {"w": torch.zeros(1)}, _drawing_ops(), rng_check="strict") as journal:
        for seed in (1, 2):
            with pytest.raises(replay.UnseededDrawError, match="'draws'"):
                journal.apply("draws", seed=seed)
        assert journal.index == 0  # each rolled back


def test_the_guard_names_the_thread_inside_and_a_refused_call_does_nothing(tmp_path):
    inside, release = threading.Event(), threading.Event()
    ops = replay.Ops()

    @ops.op
    def slow(state, *, row):
        inside.set()
        assert release.wait(30)
        state["w"].add_(1.0)

    @ops.op
    def add(state, *, row):
        state["w"].add_(1.0)

    with open_journal(tmp_path, {"w": torch.zeros(1)}, ops) as journal:
        worker = threading.Thread(target=journal.apply, args=("slow",), kwargs={"row": 0}, name="trainer")
        worker.start()
        assert inside.wait(30)
        with pytest.raises(replay.ConcurrentUseError, match=r"while thread trainer \(apply\) is inside"):
            journal.apply("add", row=1)
        release.set()
        worker.join(30)
        assert journal.index == 1
        journal.apply("add", row=2)  # the guard was left: the next call gets in
        assert journal.index == 2
        assert journal.state["w"].item() == 2.0
