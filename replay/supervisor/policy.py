"""What an attempt was (`classify`) and what to do next (`decide`): pure functions.

The rules (README, "Keep it running"):
- finished: stop, 0. preempted: stop, 128 + the signal; never restarted.
- recovery-error: stop, 65 (replaying durable history failed; a restart replays it again).
- user-error: restart once to confirm; the same op at the same index failing again stops
  with 65.
- startup-error: on the first attempt stop with 78; later it counts as crashed.
- crashed, hang, oom: restart with backoff; `no_progress` consecutive failed attempts
  without the durable index moving stop with 75, as does a total of `max_restarts` restarts.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from .vocabulary import (EXIT_DETERMINISTIC, EXIT_FINISHED, EXIT_STARTUP, EXIT_TRANSIENT, FailureClass,
                         preempted_status)


@dataclass(frozen=True)
class Options:
    """`replay run`'s options (defaults fit a long job; `--help` and the README list them)."""

    max_restarts: int = 30
    no_progress: int = 3
    hang_timeout: float | None = None  # None: HANG_MULTIPLE x the observed p99 apply interval, at least HANG_FLOOR
    startup_timeout: float = 900.0     # spawn until the journal opened, recovery included
    grace: float = 30.0
    backoff: float = 5.0
    backoff_cap: float = 300.0

    def __post_init__(self):
        for name in ("max_restarts", "no_progress"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < (0 if name == "max_restarts" else 1):
                raise ValueError(f"--{name.replace('_', '-')} must be an integer >= "
                                 f"{0 if name == 'max_restarts' else 1}, got {value!r}")
        for name in ("startup_timeout", "grace", "backoff", "backoff_cap"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or isinstance(value, bool) or not value >= 0:
                raise ValueError(f"--{name.replace('_', '-')} must be a number >= 0, got {value!r}")
        if self.hang_timeout is not None and not self.hang_timeout > 0:
            raise ValueError(f"--hang-timeout must be a number > 0, got {self.hang_timeout!r}")


@dataclass(frozen=True)
class Outcome:
    """One finished attempt, as `classify` and the records see it."""

    attempt: int
    failure: FailureClass
    exit: int | None            # the exit status, None when killed by a signal
    signal: int | None          # the signal that ended it, or the preemption signal forwarded
    index_start: int
    index_end: int
    op: str | None = None       # the failing entry, where known
    index: int | None = None
    message: str = ""

    @property
    def progressed(self) -> bool:
        return self.index_end > self.index_start


@dataclass(frozen=True)
class Decision:
    restart: bool
    status: int | None  # the supervisor's exit status when it stops
    reason: str


def classify(*, returncode: int, preempted_by: int | None, hung: bool, crash: dict | None, opened: bool,
             oom_killed: bool) -> FailureClass:
    """The class of an attempt that ended with `returncode` (negative: killed by that signal).

    `crash`: the journal's crash record of this attempt, if any; `opened`: a heartbeat was
    seen (the journal opened); `oom_killed`: the cgroup counted an OOM kill meanwhile."""
    if returncode == 0:
        return FailureClass.FINISHED
    if preempted_by is not None:
        return FailureClass.PREEMPTED
    if hung:
        return FailureClass.HANG
    if crash is not None:
        if crash.get("oom"):
            return FailureClass.OOM
        if crash["phase"] == "applying" and not crash.get("handler", True):
            return FailureClass.CRASHED  # the journal refused (a failed disk, a fenced replica): not the op's fault
        return {"recovering": FailureClass.RECOVERY_ERROR, "applying": FailureClass.USER_ERROR,
                "opening": FailureClass.STARTUP_ERROR}[crash["phase"]]
    if returncode < 0:
        return FailureClass.OOM if oom_killed else FailureClass.CRASHED
    if not opened:
        return FailureClass.STARTUP_ERROR
    return FailureClass.CRASHED


def decide(history: list[Outcome], options: Options) -> Decision:
    """What to do after the last attempt of `history` (oldest first, at least one)."""
    last = history[-1]
    failure = last.failure
    if failure is FailureClass.FINISHED:
        return Decision(False, EXIT_FINISHED, "the command finished")
    if failure is FailureClass.PREEMPTED:
        return Decision(False, preempted_status(last.signal or 15), "preempted: the job was told to stop")
    if failure is FailureClass.RECOVERY_ERROR:
        return Decision(False, EXIT_DETERMINISTIC, "recovery failed while replaying durable entries; "
                                                   "a restart would replay them again")
    if failure is FailureClass.STARTUP_ERROR and last.attempt == 1:
        return Decision(False, EXIT_STARTUP, "the command could not start")
    if failure is FailureClass.USER_ERROR and len(history) >= 2:
        before = history[-2]
        if before.failure is FailureClass.USER_ERROR and (before.op, before.index) == (last.op, last.index):
            return Decision(False, EXIT_DETERMINISTIC, "the same entry failed again: the failure is deterministic")
    restarts = len(history) - 1
    if restarts >= options.max_restarts:
        return Decision(False, EXIT_TRANSIENT, f"{restarts} restarts used (--max-restarts {options.max_restarts})")
    stalled = stalled_attempts(history)
    if stalled >= options.no_progress:
        return Decision(False, EXIT_TRANSIENT, f"{stalled} attempts in a row without durable progress "
                                               f"(--no-progress {options.no_progress})")
    return Decision(True, None, "restarting")


def stalled_attempts(history: list[Outcome]) -> int:
    """How many of the last attempts in a row failed without moving the durable index."""
    count = 0
    for outcome in reversed(history):
        if outcome.progressed or outcome.failure in (FailureClass.FINISHED, FailureClass.PREEMPTED):
            break
        count += 1
    return count


def backoff_delay(history: list[Outcome], options: Options, rng: random.Random) -> float:
    """Seconds before the next attempt: `backoff` doubled per stalled attempt, capped, with
    jitter (x 0.5..1); back to `backoff` after an attempt that made progress."""
    stalled = max(stalled_attempts(history), 1)
    base = min(options.backoff * 2 ** (stalled - 1), options.backoff_cap)
    return base * rng.uniform(0.5, 1.0)
