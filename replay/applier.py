"""Applier: a journal's apply path, from the payload's checks to the entry's effect or its rollback.

One job: turn one ``Journal.apply(op, **payload)`` into one log entry and its effect on
the live state, or into nothing at all (invariant 6). `Journal.apply` documents the
contract; this is how it is kept.

Call sequence (the journal's thread only, inside the journal's guard, replay.guards):

1. `apply(op, inputs, payload)`, once per ``Journal.apply``, in this order: usable
   (closed, poisoned), the replica's gate (lag, fenced), the payload's checks and its
   encoding, the inputs' rebuild (nothing is appended when any of these refuses), a
   finished snapshot collected, the entry appended, the handler called on what the log
   will give replay, then the step counted, the policy clock fed, a digest entry
   appended every ``digest_every`` entries and the policy snapshot taken when due
   (replay.cadence). The handler's result is returned last, unchanged.
2. A handler that raises (or a strict rng check after it): `_roll_back` drops its entry
   and rebuilds the state at the previous index (or poisons the journal: the group's
   call, replay.group), then the exception propagates.
3. Every exception leaving `apply` is reported to ``link`` (replay run's crash record,
   replay.supervisor.link) with whether it is the job's own failure (a handler, or a
   payload its op refused) or not (a fenced replica, a failed disk).

`index` (the last applied entry) is written here only; `settled()` is read by the
replica shipper's thread.
"""

from __future__ import annotations

import functools
import time

import torch

from eventlog import decode_payload, encode_payload

from . import components
from .determinism import state_digest
from .envelope import DIGEST_OP, unwrap, wrap
from .errors import JournalPoisonedError
from .supervisor.link import NoSupervisor


class Applier:
    """The apply path of the journal at `path` (module doc). Holds no part of its own: every
    collaborator is the journal's, handed over as the journal is built (replay.journal)."""

    def __init__(self, path, replayer, log, store, *, guards, snapshotter, cadence, group, replica, steps,
                 rng_check, recorder, digest_every: int | None, index: int):
        self.path = path
        self.index = index  # the last applied entry (0 before the first)
        self.link = NoSupervisor()  # replay run's heartbeat and crash records (set by open when supervised)
        self._replayer = replayer
        self._state = replayer.state
        self._ops = replayer.ops
        self._log = log
        self._store = store
        self._guards = guards
        self._snapshotter = snapshotter
        self._cadence = cadence
        self._group = group
        self._replica = replica
        self._steps = steps
        self._rng_check = rng_check
        self.recorder = recorder  # recorded scalars (replay.recorded); the closing writes it too
        self._digest_every = digest_every
        # Fixed for the journal's life, so looked up once here rather than on every apply:
        # where payload tensors go (None: nowhere, since decoded tensors are CPU tensors and
        # a CPU journal's handler takes them as they are), and the policy clock.
        device = replayer.device
        self._device = None if device is None or torch.device(device).type == "cpu" else device
        self._clock = cadence.clock

    def apply(self, op: str, inputs, payload: dict):
        """``Journal.apply`` inside its guard (its docstring is the contract): the handler's result."""
        handler_failed = False  # whether the exception leaving here is the handler's (or its payload's)
        try:
            self._guards.check_usable()
            self._replica.gate(self.path, op, self.index)  # lag, fenced: refused before appending
            handler_failed = True  # until the entry is appended: a payload its op refuses
            spec = self._ops.check_payload(op, payload)
            if inputs is not None and not spec.takes_inputs:
                raise TypeError(f"op {op!r}: inputs= was given but its handler has no 'inputs' parameter "
                                "(inputs are handed to the handler, never logged)")
            # The handler gets what the log will give replay, decoded from the very bytes
            # appended: a numpy float32 arrives as the float replay reads, a payload tensor
            # is a fresh one (never an alias of the caller's reused buffer), a tuple a list.
            if _plain(payload):
                # Keyword arguments with plain values: str keys throughout (the envelope's too)
                encoded = encode_payload(wrap(spec.version, payload), str_keys=True)
                replayed = payload  # what decoding `encoded` would give, value for value and type for type
            else:
                encoded = encode_payload(wrap(spec.version, payload))
                replayed = unwrap(self.index + 1, op, decode_payload(encoded))[1]
                if self._device is not None:
                    replayed = components.to_device(replayed, self._device)
            inputs = spec.inputs_for(replayed, inputs)  # before appending: a failing rebuild leaves no entry
            handler_failed = False
            self._snapshotter.collect(block=False)
            index = self._guards.guarded(self._append_encoded, op, encoded)
            self.link.applying(op, index)
            rng_check = self._rng_check
            started = time.perf_counter()
            try:
                drawn = rng_check.before(op)
                result = spec.call(self._state, replayed, inputs)
                if drawn is not None:  # None: not compared this time (off, reported, or not sampled)
                    rng_check.after(op, drawn)  # strict: raises, and the entry is rolled back
                if spec.record:  # replay.recorded; a bad value is rolled back like the handler's exception
                    self.recorder.add(self._log.term, index, spec, result)
            except BaseException as exc:
                handler_failed = True
                self._roll_back(index, exc)
                raise
            # The handler returned and its entry stands: what follows is the journal's
            # bookkeeping of an applied entry (a per-entry hook on the result goes here).
            self.index = index
            self.link.applied(index)
            self._steps.add(op)
            self._clock.add_entry(self._log.bytes_appended, time.perf_counter() - started)
            if self._digest_every is not None and index % self._digest_every == 0:
                self._append_digest()
            self._cadence.after_entry(self.index)
            return result
        except BaseException as exc:
            # replay run's crash record: a handler that raised (or a payload it refused) is
            # the job's own failure; a fenced replica or a failed disk is not
            self.link.failed("applying", op, self.index + 1, exc, handler=handler_failed)
            raise

    def settled(self) -> int:
        """What may ship: applied and durable (read by the shipper's thread)."""
        return min(self._log.durable_index, self.index)

    def _append_encoded(self, op: str, encoded: bytes) -> int:
        return self._log.append(op, encoded=encoded)

    def _append_digest(self) -> None:
        started = time.perf_counter()
        digest = state_digest(self._state)
        self.index = self._guards.guarded(self._log.append, DIGEST_OP, wrap(1, {"digest": digest}))
        self._clock.add_entry(self._log.bytes_appended, time.perf_counter() - started)
        self._guards.collective(self._group.check_replicated, self.index)

    def _roll_back(self, index: int, cause: BaseException) -> None:
        """Undo entry `index` whose handler raised: drop it from the log, rebuild the state at index - 1.

        The log is truncated first, then the in-flight snapshot is waited for (invariant 8):
        its follow-up compacts only through snapshots, which never cover `index`. The
        rebuild restores a snapshot, which drops the failed handler's gradients first
        (components.forget_transient), so it replays on what a cold reopen would have
        (invariant 15).

        Whether the state is rebuilt is the group's call (Group.after_handler_error):
        multi-rank, the entry is dropped but the journal poisoned instead, as the rebuild's
        replay needs every rank (invariant 11); the handler's exception is re-raised."""
        try:
            self._log.truncate_after(index - 1)
            self._snapshotter.collect(block=True)
            self._guards.poison = self._group.after_handler_error(index, cause, functools.partial(
                self._replayer.recover, self._log, self._store, at=index - 1, progress=False))
        except BaseException as exc:
            self._guards.poison = exc
            raise JournalPoisonedError(
                f"{self.path}: the handler of entry {index} raised ({type(cause).__name__}: {cause}) and rolling "
                f"back failed ({type(exc).__name__}: {exc}); the live state is not trustworthy. Reopen the journal."
            ) from exc


# Values the log gives back as they went in, the same value of the same type (msgpack's
# nil, bool, int, float64, str); a subclass (an IntEnum, a numpy scalar) is not one of them.
_PLAIN_TYPES = frozenset({type(None), bool, int, float, str})


def _plain(payload: dict) -> bool:
    """Whether every value of `payload` is one of _PLAIN_TYPES, so that the handler may be
    handed `payload` itself (a fresh dict: Journal.apply's keywords) instead of
    ``decode(encode(payload))``, which equals it: a training step's usual payload (a seed,
    a step, a learning rate) then skips the decode. Anything else (a list, a tensor, a
    float32) is decoded from the appended bytes, as replay will."""
    for value in payload.values():
        if type(value) not in _PLAIN_TYPES:
            return False
    return True
