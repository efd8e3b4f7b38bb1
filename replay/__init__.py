"""replay: event-sourced PyTorch state. Every mutation is a logged op; recovery replays it bit-exactly.

    import replay
    ops = replay.Ops()

    @ops.op
    def sgd_step(state, *, ids, seed, lr): ...     # mutates state in place, pure in (state, payload)

    with replay.Journal.open("runs/exp1", state={"model": m, "optim": opt, "data": cursor},
                             ops=ops, snapshot=replay.Every(entries=1000, seconds=600)) as journal:
        print(journal.recovery)                     # which snapshot, how many entries replayed
        journal.apply("sgd_step", ids=cursor.peek(32), seed=step, lr=0.1)

Guarantees (numbered in replay/INVARIANTS.md): an entry is in the log before its effect is visible and
``flush()`` makes every applied entry durable; a snapshot at i holds exactly entries
1..i and never commits beyond the durable index; recovery loads the newest verified
snapshot and replays every later entry once, in order, to the same bytes; compaction
never deletes the entries a fallback to an older snapshot needs (they move to the log's
archive, or stay); unknown ops, rejected payloads,
checksum failures, version mismatches and divergences stop recovery naming the index;
a handler that raises in a live apply leaves no entry and no half-mutated state behind.

Read-only audits (safe beside a live writer): ``replay.verify_journal(path)`` checks the log,
every snapshot and whether they meet; ``replay.state_at(path, ops, state, index)`` rebuilds
the state right after any retained entry. The on-disk entry envelope is documented in
``replay/envelope.py``.

Operator commands: ``replay.truncate(path, after=i)`` drops a poison entry at the end of
a closed journal; ``replay.fork(path, at=i, dest=newdir)`` goes back past a snapshot by
making a new journal whose history is the entries up to i (the source is only read).
"""

from .audit import JournalReport, state_at, verify_journal
from .data import DataCursor
from .determinism import state_digest
from . import environment
from .errors import (
    DamageError,
    DivergenceError,
    EnvironmentMismatchError,
    PreemptedError,
    RankDivergenceError,
    RankFailureError,
    RankBehindError,
    WorldSizeError,
    EnvelopeError,
    HandlerError,
    ConcurrentUseError,
    ClosedError,
    JournalPoisonedError,
    PayloadRejectedError,
    RecoveryError,
    ReplayError,
    UnknownOpError,
    VersionMismatchError,
)
from .history import JournalEntry, entries
from .journal import Journal
from .loader import Batch, JournaledLoader, StaleBatchError
from .loadstate import LoadedState, LoadStateError, ReplayNeededError, load_state
from .forking import ForkError, ForkIndexError, ForkReport, fork
from .operator import truncate
from .ops import Ops, OpSpec
from .policies import Every
from .preemption import Preemption
from .recovery import RecoveryReport
from .replica.errors import ReplicaDamageError, ReplicaError, ReplicaFencedError, ReplicaUnavailableError
from .replica.status import ReplicaLagError
from .rng import seeded_generator, seeded_rng
from .rng_check import UnseededDrawError, UnseededDrawWarning

__all__ = [
    "Journal", "Ops", "OpSpec", "Every", "Preemption", "environment", "RecoveryReport", "DataCursor", "seeded_generator",
    "seeded_rng", "JournaledLoader", "Batch", "StaleBatchError", "load_state", "LoadedState", "LoadStateError",
    "ReplayNeededError", "entries", "JournalEntry",
    "state_digest", "truncate", "fork", "ForkReport", "ForkError", "ForkIndexError", "verify_journal", "JournalReport", "state_at",
    "ReplayError", "UnknownOpError", "PayloadRejectedError", "HandlerError", "VersionMismatchError",
    "EnvelopeError", "DamageError", "DivergenceError", "RecoveryError", "JournalPoisonedError", "ClosedError", "ConcurrentUseError",
    "PreemptedError", "EnvironmentMismatchError", "RankFailureError", "RankBehindError", "WorldSizeError",
    "RankDivergenceError",
    "ReplicaError", "ReplicaFencedError", "ReplicaUnavailableError", "ReplicaDamageError", "ReplicaLagError",
    "UnseededDrawError", "UnseededDrawWarning",
]
