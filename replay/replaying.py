"""The replay loop: replayed entries applied to the live state, a batch at a time
(the live apply path is replay.applier).

Per entry it does what `Replayer.apply` does (upcast, the reserved ``inputs`` check, the
handler, errors naming the index), with each op's spec resolved once per run rather than
looked up per entry. With `batched`, a run of consecutive entries of an op registered
with ``replay_batch=`` goes to that function in one call (replay.ops); if it raises,
`BatchFailed` tells the caller, which puts the snapshot back and replays sequentially
(replay.recovery), so the failure a user sees is the sequential one.
"""

from __future__ import annotations

from typing import Any

from .counting import is_user_op
from .envelope import ENGINE_OPS
from .errors import HandlerError, PayloadRejectedError, RecoveryError
from .ops import INPUTS


class BatchFailed(Exception):
    """A replay_batch function raised on the run starting at `index`: the state holds an
    unknown part of that run, so the caller must restore it before going on."""

    def __init__(self, index: int, op: str, cause: BaseException):
        self.index, self.op, self.cause = index, op, cause
        super().__init__(f"replay_batch of op {op!r} failed on the run from entry {index}: {cause!r}")


class ReplayLoop:
    """Applies Prepared entries in index order to `replayer.state`, counting into `report`.

    `next` is the index the next entry must have (entries applied so far end before it);
    `last_good` the newest index whose state is known right (a snapshot, or a digest
    that matched), for DivergenceError.
    """

    def __init__(self, replayer, report, start: int, batched: bool):
        self._replayer = replayer
        self._ops = replayer.ops
        self._state = replayer.state
        self._counts = report.counts
        self._report = report
        self._batched = batched
        self._specs: dict[str, Any] = {}  # op -> spec, for entries already at the handler's version
        self._counted: dict[str, bool] = {}
        self.next = start
        self.last_good = start - 1

    def apply(self, entries: list) -> None:
        """Apply `entries` (consecutive from `next`) in order; `next` advances past each one applied.

        RecoveryError when an index is not the next one; the errors of `Replayer.apply`
        (UnknownOpError, VersionMismatchError, PayloadRejectedError, HandlerError,
        DivergenceError) naming the failing index, after the entries before it; BatchFailed
        (batched only) with `next` at the start of the run it could not apply.
        """
        i, n = 0, len(entries)
        while i < n:
            entry = entries[i]
            if entry.index != self.next:
                raise RecoveryError(f"log entry {self.next} is missing (the next entry read is {entry.index})")
            op = entry.op
            spec = self._specs.get(op)
            if spec is not None and entry.version == spec.version:
                payload = entry.payload
            elif op in ENGINE_OPS:
                if self._replayer.apply(entry, self.last_good):
                    self._report.digests_checked += 1
                    self.last_good = entry.index
                self.next += 1
                i += 1
                continue
            else:
                spec, payload = self._ops.upcast(entry.index, op, entry.version, entry.payload)
                if entry.version == spec.version:
                    self._specs[op] = spec
            if INPUTS in payload:
                raise PayloadRejectedError(op, f"{INPUTS!r} is reserved for unlogged inputs but the entry "
                                           "logs it as a payload key", entry.index)
            # A recording op's values are re-recorded entry by entry (replay.recorded), which
            # a batched handler cannot give back: such an op replays one entry at a time.
            if self._batched and spec.replay_batch is not None and not (spec.record and self._replayer.on_result):
                # The run: following entries of the op, contiguous, at the handler's
                # version and clean. Whatever ends it goes through the per-entry path
                # below, which raises what sequential replay raises, after the run.
                stop = i + 1
                while stop < n:
                    following = entries[stop]
                    if (following.op != op or following.version != spec.version
                            or following.index != entry.index + (stop - i) or INPUTS in following.payload):
                        break
                    stop += 1
                if stop - i >= 2:
                    try:
                        spec.replay_batch(self._state, [payload] + [entries[k].payload for k in range(i + 1, stop)])
                    except Exception as exc:
                        raise BatchFailed(entry.index, op, exc) from exc
                    self._count(op, stop - i)
                    self.next += stop - i
                    i = stop
                    continue
            try:
                if spec.rebuild is None:
                    result = spec.handler(self._state, **payload)
                else:
                    # Unlogged inputs are rebuilt from the payload (replay.ops): a rebuild
                    # that fails is as much this entry's failure as the handler's own.
                    result = spec.call(self._state, payload, spec.inputs_for(payload))
            except Exception as exc:
                raise HandlerError(entry.index, op, exc) from exc
            if spec.record and self._replayer.on_result is not None:
                self._replayer.on_result(entry.term, entry.index, spec, result)  # never fed back
            self._count(op, 1)
            self.next += 1
            i += 1

    def _count(self, op: str, n: int) -> None:
        counted = self._counted.get(op)
        if counted is None:
            counted = self._counted[op] = is_user_op(op)
        if counted:
            self._counts[op] = self._counts.get(op, 0) + n
