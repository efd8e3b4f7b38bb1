"""Hypothesis stateful test: random apply / failing apply / snapshot / crash / reopen against a reference fold."""

from __future__ import annotations

import shutil
import tempfile

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

import replay

from .harness import crash, open_journal
from .models import assert_same, make_ops, make_state

OPS = make_ops()


class JournalMachine(RuleBasedStateMachine):
    def __init__(self):
        super().__init__()
        self.dir = tempfile.mkdtemp(prefix="replay-stateful-")
        self.reference = make_state(seed=0)  # a plain in-memory fold of every applied entry
        self.entries = 0
        self.state = make_state(seed=0)
        self.journal = self._open()

    def _open(self):
        return open_journal(self.dir, self.state, OPS, snapshot=replay.Every(entries=5), keep_last=2,
                            digest_every=4, durability="group")

    def _applied(self, op, **payload):
        index = self.journal.index + 1  # the entry's own index (a digest may follow it)
        self.journal.apply(op, **payload)
        OPS.spec(op).handler(self.reference, **payload)
        self.entries += 1 + (index % 4 == 0)  # a digest entry follows every 4th index
        assert index <= self.journal.index == self.entries

    @rule(row=st.integers(0, 3), value=st.floats(-1e3, 1e3, allow_nan=False))
    def add(self, row, value):
        self._applied("add", row=row, value=value)

    @rule(seed=st.integers(0, 2**31), batch=st.integers(1, 20))
    def train(self, seed, batch):
        self._applied("train_step", ids=self.reference["data"].peek(batch), seed=seed)

    @rule(row=st.integers(0, 3))
    def failing_apply(self, row):
        try:
            self.journal.apply("boom", row=row)
        except RuntimeError:
            pass
        else:
            raise AssertionError("the handler's exception was not re-raised")

    @rule(wait=st.booleans())
    def snapshot(self, wait):
        self.journal.snapshot(wait=wait)

    @rule(init=st.integers(1, 1000))
    def crash_and_recover(self, init):
        crash(self.journal)
        self.state = make_state(seed=init)  # the in-memory state dies with the process
        self.journal = self._open()
        assert self.journal.index == self.entries

    @rule()
    def close_and_reopen(self):
        self.journal.close()
        self.journal = self._open()
        assert self.journal.recovery.entries_replayed <= self.entries

    @invariant()
    def live_state_equals_the_reference_fold(self):
        assert_same(self.state, self.reference)

    @invariant()
    def compaction_keeps_what_recovery_needs(self):
        retained = [i.index for i in self.journal.snapshots.list()]
        assert retained and self.journal.log.first_index - 1 <= min(retained)

    def teardown(self):
        try:
            self.journal.close()
        finally:
            shutil.rmtree(self.dir, ignore_errors=True)


JournalMachine.TestCase.settings = settings(
    max_examples=15, stateful_step_count=25, deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
test_journal_recovers_the_reference_fold = JournalMachine.TestCase
