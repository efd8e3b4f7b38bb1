"""Named errors of the replay engine. Each is raised in exactly the situation its docstring says.

Checksum failures are not wrapped: they surface as eventlog's ``CorruptEntryError``,
whose ``index`` names the damaged entry (the op of a damaged entry cannot be trusted).

Damage is every error with the shared base `DamageError` (one class for eventlog,
snapshots and replay: torch_eventlog.errors); `ClosedError` has the shared kind as an
extra base. The table of every package's errors is in replay/INVARIANTS.md.
"""

from __future__ import annotations

from torch_eventlog import errors as kinds

DamageError = kinds.DamageError


class ReplayError(Exception):
    """Base class of every error the replay engine raises on purpose."""


class UnknownOpError(ReplayError):
    """An op name has no registered handler (at apply time, or in an entry being replayed)."""

    def __init__(self, op: str, index: int | None = None):
        self.op = op
        self.index = index
        where = f"log entry {index}: " if index is not None else ""
        super().__init__(f"{where}op {op!r} has no registered handler; register it with the journal's Ops")


class PayloadRejectedError(ReplayError, ValueError):
    """A payload failed its op's declared validation or signature check; nothing was appended."""

    def __init__(self, op: str, reason: str, index: int | None = None):
        self.op = op
        self.reason = reason
        self.index = index
        where = f"log entry {index}: " if index is not None else ""
        super().__init__(f"{where}payload of op {op!r} rejected: {reason}")


class HandlerError(ReplayError):
    """A handler raised while replaying entry `index`; the original exception is the __cause__."""

    def __init__(self, index: int, op: str, cause: BaseException):
        self.index = index
        self.op = op
        super().__init__(
            f"log entry {index} (op {op!r}) failed during replay: {type(cause).__name__}: {cause}. "
            f"If this entry is a poison entry left by a crash, remove it with replay.truncate(path, after={index - 1})"
        )


class VersionMismatchError(ReplayError):
    """An entry's op version differs from the registered handler's and no upcaster bridges the gap."""

    def __init__(self, index: int, op: str, entry_version: int, handler_version: int):
        self.index = index
        self.op = op
        self.entry_version = entry_version
        self.handler_version = handler_version
        super().__init__(
            f"log entry {index}: op {op!r} was written at version {entry_version} but the registered "
            f"handler is version {handler_version}; register an upcaster from version {entry_version}"
            if entry_version < handler_version else
            f"log entry {index}: op {op!r} was written at version {entry_version}, newer than the "
            f"registered handler's version {handler_version}; run newer code"
        )


class EnvelopeError(ReplayError):
    """A (checksum-valid) entry does not hold a replay envelope, so it was not written by a Journal."""

    def __init__(self, index: int, op: str, reason: str):
        self.index = index
        self.op = op
        super().__init__(f"log entry {index} (op {op!r}) is not a replay entry: {reason}")


class DivergenceError(ReplayError, kinds.DamageError):
    """Replay recomputed a state digest that differs from the digest entry at `index`.

    A digest checks only the entries before it: the state after `last_good` (the previous
    digest that matched, or the snapshot replay started from) was right, and some entry
    in ``last_good + 1 .. index - 1`` replayed differently from the live run. Entries
    after `index` are not checked by it (the next digest does). Recover by fixing the
    handler's nondeterminism, then dropping the unverifiable entries with
    ``replay truncate DIR --after <last_good>`` (``replay.truncate(path, after=last_good)``);
    a loop written with ``journal.count()`` redoes those steps.
    """

    def __init__(self, index: int, expected: int, actual: int, last_good: int | None = None):
        self.index = index
        self.expected = expected
        self.actual = actual
        self.last_good = last_good
        if last_good is None:
            todo = "fix the handler's nondeterminism, then truncate the log after the last good index"
        else:
            todo = (f"the state was last verified at index {last_good}, so one of entries {last_good + 1}..{index - 1} "
                    f"replayed differently. Fix the handler's nondeterminism, then run "
                    f"`replay truncate DIR --after {last_good}` (replay.truncate(path, after={last_good})) to drop "
                    "the entries that cannot be replayed; a loop over range(journal.count(), N) redoes them")
        super().__init__(
            f"log entry {index}: state digest {actual:#018x} differs from the recorded {expected:#018x}; "
            f"some handler before it is not deterministic (global RNG, unordered iteration, nondeterministic "
            f"kernels, inputs= that differ from their rebuild?). {todo}"
        )


class RecoveryError(ReplayError):
    """The snapshots and the log cannot be combined into a state (a gap, or a snapshot ahead of the log)."""


class JournalPoisonedError(ReplayError):
    """The log failed a write or sync, or a rollback failed, so the journal refuses all further work."""


class ConcurrentUseError(ReplayError):
    """A second thread called into a Journal while another thread was inside a call; nothing was done."""

    def __init__(self, what: str, holder: str | None, caller: str):
        super().__init__(
            f"thread {caller!r} called Journal.{what} while thread {holder or '?'} is inside the journal; "
            "a Journal is used from one thread at a time (hand it over only between calls)")


class ClosedError(ReplayError, kinds.ClosedError):
    """The object was used after close()."""


class PreemptedError(ReplayError):
    """A preemption signal stopped the journal (``Preemption(then="raise")``): it was closed
    cleanly, with a snapshot at its last index; `signum` is the signal. Raised from an
    apply, that apply completed first (its entry is applied and durable)."""

    def __init__(self, signum: int, where: str = "journal"):
        self.signum = int(signum)
        super().__init__(f"{where}: preempted by signal {self.signum}; the journal was snapshotted and closed, "
                         "so the next open replays nothing")


class EnvironmentMismatchError(ReplayError):
    """``environment="strict"`` and the journal was created in another environment (torch,
    device, CUDA, determinism flags...); nothing was written. `differences` lists them."""

    def __init__(self, path, differences: list[str]):
        self.path = path
        self.differences = list(differences)
        listed = "; ".join(self.differences)
        super().__init__(f"{path}: created in another environment, and replay across it may not be bit-exact: "
                         f"{listed}. Open with environment=\"warn\" to recover anyway")


class RankFailureError(ReplayError):
    """A multi-rank journal could not go on: another rank failed (its error is quoted), or a
    collective on the journal's process group failed (a peer died or timed out)."""


class WorldSizeError(ReplayError):
    """A multi-rank journal was opened by a group of another size than the one that created it."""

    def __init__(self, path, recorded: int, current: int):
        self.path = path
        self.recorded = recorded
        self.current = current
        super().__init__(f"{path} was created by a group of {recorded} ranks but this group has {current}; "
                         f"open it with {recorded} ranks (changing the world size, resharding, is not supported)")


class RankBehindError(RecoveryError):
    """A rank's log ends below an index the group acknowledged (a flush returned it): that rank's
    directory was put back from an older copy or lost entries. Raised on every rank by
    recovery before anything is changed (replay/ranks/cut.py); names the rank, its last
    index, the acknowledged index, where it is recorded and the remedy."""


class RankDivergenceError(DivergenceError):
    """Components replicated on every rank (DDP parameters) differ across ranks at digest entry `index`."""

    def __init__(self, index: int, components: list[str], digests: list[int]):
        groups: dict[int, list[int]] = {}
        for rank, digest in enumerate(digests):
            groups.setdefault(digest, []).append(rank)
        majority = max(groups.values(), key=len)
        self.index = index
        self.components = list(components)
        self.digests = list(digests)
        self.ranks = [r for r in range(len(digests)) if r not in majority]
        self.expected = digests[majority[0]] & ((1 << 64) - 1)
        self.actual = digests[self.ranks[0]] & ((1 << 64) - 1)
        self.last_good = None
        shown = ", ".join(f"rank {r}: {d & ((1 << 64) - 1):#018x}" for r, d in enumerate(digests))
        ReplayError.__init__(
            self, f"log entry {index}: replicated components {self.components} differ across ranks: rank(s) "
                  f"{self.ranks} differ from the rest ({shown}); some handler does not update them alike on every "
                  "rank (a rank-dependent update, an unsynchronised buffer, a skipped collective)")
