"""replay.testing: property-test the recovery of *your* ops in your own CI.

A hypothesis stateful machine drives a real Journal over your state factory with ops drawn
from your strategies, crashes it at random (in-memory: drop the state and the journal
without a flush, as a kill would; and in a forked child that is SIGKILLed), reopens, and
asserts after every step that the live state equals a reference fold, bit for bit, and
that recovering the same directory twice gives the same bytes::

    import hypothesis.strategies as st
    from replay.testing import recovery_machine

    RecoveryTest = recovery_machine(
        state_factory=lambda: {"model": MyModel(), "optim": make_optim(...)},
        ops=my_ops,                                   # your replay.Ops
        op_strategies={
            "sgd_step": st.fixed_dictionaries({"seed": st.integers(0, 2**31), "lr": st.just(0.1)}),
            # a callable gets the reference state, for payloads that depend on it:
            "consume": lambda state: st.fixed_dictionaries({"ids": st.just(state["data"].peek(4))}),
        },
    ).TestCase                                        # collected by pytest / unittest

What it catches: handlers that read anything but (state, payload) -- global RNG, time,
os.environ, a module-level counter -- because the reference fold, the live journal and a
recovery each draw differently; handlers that are not idempotent under restore (state
kept outside the journaled components); components whose state_dict misses something.
`Settings` and the machine's `settings` work as for any hypothesis machine.

Contracts:

- `recovery_machine(state_factory, ops, op_strategies, *, sigkill=True, **journal_options)`
  returns a new `RecoveryMachine` subclass. `state_factory()` must build a fresh state
  on every call (it is called for the journal, the reference and every reopen);
  the reference is built from the same factory, so it must be deterministic
  (seed inside the factory). journal_options go to `Journal.open` (default: a snapshot
  every 5 entries, keep_last=2, durability="group").
- `assert_states_equal(a, b)`: AssertionError naming the first key path whose dtype,
  shape, bytes or value differ (NaN payloads compare by bits).
- `fingerprint(state)`: {key path: (dtype, shape, bytes) or value}, comparable with ==.
- `op_calls(op_strategies, state=None)`: a strategy of (op, payload) pairs.
- `assert_replay_batch_exact(state_factory, ops, calls)`: the ops' ``replay_batch=``
  functions leave the bytes of the sequential fold (AssertionError naming the path).
  The machine checks it too, through every recovery it compares with the reference.

The SIGKILL rule forks (POSIX only): the parent must not hold the journal at that moment
(the machine releases it first), and the child applies ops, flushes, and is killed.
"""

from __future__ import annotations

import os
import shutil
import signal
import tempfile
from typing import Any, Callable, Mapping

import torch
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from eventlog import decode_payload, encode_payload

from .determinism import fingerprint
from .journal import Journal
from .ops import Ops
from .policies import Every

__all__ = ["RecoveryMachine", "recovery_machine", "assert_states_equal", "assert_replay_batch_exact", "fingerprint",
           "op_calls"]


def assert_states_equal(actual: Any, expected: Any, what: str = "state") -> None:
    """Bit-for-bit equality of two states; the AssertionError names the first differing key path."""
    a, b = fingerprint(actual), fingerprint(expected)
    if a.keys() != b.keys():
        raise AssertionError(f"{what}: key paths differ: {sorted(map(str, a.keys() ^ b.keys()))[:5]}")
    for path in a:
        if a[path] != b[path]:
            raise AssertionError(f"{what} differs from the reference fold at {path}: replay is not deterministic "
                                 "(does a handler read anything besides its state and payload?)")


def assert_replay_batch_exact(state_factory: Callable[[], Mapping[str, Any]], ops: Ops,
                              calls: list[tuple[str, dict]]) -> None:
    """Check the ``replay_batch=`` functions of `ops` against the sequential fold.

    ValueError when no op in `calls` has a replay_batch (nothing would be checked).
    Otherwise `calls` ((op, payload) pairs, in log order) are applied to two fresh
    states from `state_factory`: one by one through each op's handler, and as replay
    applies them, each run of consecutive calls of an op with a replay_batch in one call
    to it (a run of one goes to the handler). Each state gets its own copy of every
    payload, as the log's codec gives it back. AssertionError naming the first key path
    whose bytes differ (assert_states_equal).
    """
    if not any(ops.spec(op).replay_batch is not None for op, _ in calls):
        raise ValueError("no call in `calls` is of an op registered with replay_batch=: nothing to check")
    sequential, batched = state_factory(), state_factory()
    for op, payload in calls:
        spec, logged = ops.spec(op), decode_payload(encode_payload(payload))
        spec.call(sequential, logged, spec.inputs_for(logged))
    at = 0
    while at < len(calls):
        op = calls[at][0]
        stop = at + 1
        while stop < len(calls) and calls[stop][0] == op:
            stop += 1
        spec = ops.spec(op)
        payloads = [decode_payload(encode_payload(payload)) for _, payload in calls[at:stop]]
        if spec.replay_batch is not None and len(payloads) >= 2:
            spec.replay_batch(batched, payloads)
        else:
            for logged in payloads:
                spec.call(batched, logged, spec.inputs_for(logged))
        at = stop
    assert_states_equal(batched, sequential, "the state replay_batch left")


def _strategy_for(entry, state):
    return entry(state) if callable(entry) and not isinstance(entry, st.SearchStrategy) else entry


def op_calls(op_strategies: Mapping[str, Any], state: Any = None) -> st.SearchStrategy:
    """(op, payload) pairs: an op name, then a payload dict from its strategy (or callable(state))."""
    return st.sampled_from(sorted(op_strategies)).flatmap(
        lambda op: _strategy_for(op_strategies[op], state).map(lambda payload: (op, payload)))


class RecoveryMachine(RuleBasedStateMachine):
    """Apply / snapshot / crash / SIGKILL / close-reopen a Journal against a reference fold.

    Subclass through `recovery_machine`, or set the class attributes `state_factory`,
    `ops`, `op_strategies`, `journal_options` and `sigkill` yourself.
    """

    state_factory: Callable[[], Mapping[str, Any]]
    ops: Ops
    op_strategies: Mapping[str, Any] = {}
    journal_options: dict = {}
    sigkill: bool = True

    def __init__(self):
        super().__init__()
        self.dir = tempfile.mkdtemp(prefix="replay-testing-")
        self.reference = self.state_factory()
        self.journal = None
        self.journal = self._open()

    def _open(self) -> Journal:
        options = {"snapshot": Every(entries=5), "keep_last": 2, "durability": "group", **self.journal_options}
        return Journal.open(os.path.join(self.dir, "journal"), state=self.state_factory(), ops=self.ops, **options)

    def _fold(self, op: str, payload: dict) -> None:
        spec = self.ops.spec(op)
        spec.call(self.reference, payload, spec.inputs_for(payload))  # unlogged inputs rebuilt, as replay does

    @rule(data=st.data())
    def apply(self, data):
        op, payload = data.draw(op_calls(self.op_strategies, self.reference), label="op")
        self.journal.apply(op, **payload)
        self._fold(op, payload)

    @rule()
    def snapshot(self):
        self.journal.snapshot(wait=True)

    @rule()
    def crash_and_reopen(self):
        self.journal.abandon()
        self.journal = self._open()

    @rule()
    def close_and_reopen(self):
        self.journal.close()
        self.journal = self._open()

    @precondition(lambda self: self.sigkill and hasattr(os, "fork"))
    @rule(data=st.data(), count=st.integers(1, 4))
    def sigkill_child(self, data, count):
        """A forked child reopens the journal, applies `count` ops, flushes, and is SIGKILLed."""
        calls = []
        for _ in range(count):
            call = data.draw(op_calls(self.op_strategies, self.reference), label="op in child")
            calls.append(call)
            self._fold(*call)
        self.journal.close()
        pid = os.fork()
        if pid == 0:
            try:
                torch.set_num_threads(1)
                journal = self._open()
                for op, payload in calls:
                    journal.apply(op, **payload)
                journal.flush()
                os.kill(os.getpid(), signal.SIGKILL)
            finally:
                os._exit(1)
        _, status = os.waitpid(pid, 0)
        assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL, f"child failed (status {status})"
        self.journal = self._open()

    @invariant()
    def live_state_equals_reference(self):
        if self.journal is not None:
            assert_states_equal(self.journal.state, self.reference, "live/recovered state")

    @rule()
    def replay_is_deterministic(self):
        """Recover a copy of the directory twice into fresh states: same bytes each time, equal to the reference."""
        self.journal.flush()
        self.journal.close()
        copies = []
        for n in range(2):
            target = os.path.join(self.dir, f"copy{n}")
            shutil.copytree(os.path.join(self.dir, "journal"), target, ignore=shutil.ignore_patterns("*.lock", "LOCK"))
            state = self.state_factory()
            Journal.open(target, state=state, ops=self.ops, keep_log=True).close()
            shutil.rmtree(target)
            copies.append(state)
        assert_states_equal(copies[0], copies[1], "a second recovery")
        assert_states_equal(copies[0], self.reference, "a recovered copy")
        self.journal = self._open()

    def teardown(self):
        try:
            if self.journal is not None:
                self.journal.abandon()
        finally:
            shutil.rmtree(self.dir, ignore_errors=True)


def recovery_machine(state_factory: Callable[[], Mapping[str, Any]], ops: Ops, op_strategies: Mapping[str, Any], *,
                     sigkill: bool = True, max_examples: int = 20, steps: int = 20, **journal_options) -> type:
    """A RecoveryMachine subclass for your state and ops; use its `.TestCase` as a test."""
    machine = type("RecoveryMachineFor", (RecoveryMachine,), {
        "state_factory": staticmethod(state_factory), "ops": ops, "op_strategies": dict(op_strategies),
        "journal_options": dict(journal_options), "sigkill": sigkill,
    })
    machine.TestCase.settings = settings(max_examples=max_examples, stateful_step_count=steps, deadline=None,
                                         suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
    return machine
