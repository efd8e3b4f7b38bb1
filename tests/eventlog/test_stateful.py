"""Hypothesis state machine: random appends, truncations, compactions and reopens against
a plain in-memory model of the log, with an archive (compaction seals history, which
stays readable), with a retention policy that keeps nothing (compaction seals and then
deletes every segment) and without one (compaction deletes). Every read must agree with
the model."""

import shutil
import tempfile
from pathlib import Path

import hypothesis.strategies as st
import pytest
from hypothesis import HealthCheck, settings
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from eventlog import Archive, CompactedError, EventLog

payloads = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.floats(allow_nan=False)
    | st.text(max_size=20) | st.binary(max_size=64),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=5) | st.integers(0, 9), inner, max_size=4),
    max_leaves=10,
)
ops = st.sampled_from(["a", "step", "ünï"])


class LogMachine(RuleBasedStateMachine):
    @initialize(mode=st.sampled_from(["sync", "group", "os"]),
                archive=st.sampled_from([Archive(), Archive(keep_bytes=0), None]))
    def open_log(self, mode, archive):
        self.dir = Path(tempfile.mkdtemp())
        self.mode = mode
        self.archive = archive
        self.log = EventLog.open(self.dir / "log", durability=mode, archive=archive)
        self.model: dict[int, tuple[int, str, object]] = {}  # index -> (term, op, payload)
        self.first, self.last, self.boundary_term = 1, 0, 0  # first: the first readable entry
        self.live_first = 1

    def teardown(self):
        self.log.close()
        shutil.rmtree(self.dir, ignore_errors=True)

    @rule(op=ops, payload=payloads)
    def append(self, op, payload):
        index = self.log.append(op, payload)
        self.last += 1
        assert index == self.last
        self.model[index] = (self.log.term, op, payload)

    @rule(items=st.lists(st.tuples(ops, payloads), max_size=5))
    def append_many(self, items):
        got = self.log.append_many(items)
        assert got == range(self.last + 1, self.last + 1 + len(items))
        for index, (op, payload) in zip(got, items):
            self.model[index] = (self.log.term, op, payload)
        self.last += len(items)

    @rule(data=st.data())
    def truncate_after(self, data):
        index = data.draw(st.integers(self.live_first - 1, self.last))
        self.log.truncate_after(index)
        for i in range(index + 1, self.last + 1):
            del self.model[i]
        self.last = index

    @precondition(lambda self: self.last >= self.live_first)
    @rule(data=st.data())
    def compact_through(self, data):
        index = data.draw(st.integers(self.live_first, self.last))
        self.log.compact_through(index)
        self.live_first = index + 1
        if self.archive is None or self.archive.keep_bytes == 0:  # history deleted
            self.boundary_term = self.model[index][0]
            for i in range(self.first, index + 1):
                del self.model[i]
            self.first = index + 1

    @rule()
    def reopen(self):
        self.log.close()
        self.log = EventLog.open(self.dir / "log", durability=self.mode, archive=self.archive)

    @rule(data=st.data())
    def read_one(self, data):
        index = data.draw(st.integers(max(0, self.first - 2), self.last + 1))
        if self.first <= index <= self.last:
            entry = self.log.entry(index)
            assert (entry.term, entry.op, entry.payload) == self.model[index]
        elif index < self.first and index >= 1:
            with pytest.raises(CompactedError):
                self.log.entry(index)
        else:
            with pytest.raises(IndexError):
                self.log.entry(index)

    @invariant()
    def agrees_with_model(self):  # invariants run only after open_log (an @initialize rule)
        assert (self.log.first_index, self.log.live_first_index, self.log.last_index) == (
            self.first, self.live_first, self.last)
        got = {e.index: (e.term, e.op, e.payload) for e in self.log.entries()}
        assert got == self.model
        assert self.log.term_at(self.first - 1) == self.boundary_term
        assert self.log.verify().ok


LogMachine.TestCase.settings = settings(
    max_examples=40, stateful_step_count=25, deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
TestLogMachine = LogMachine.TestCase
