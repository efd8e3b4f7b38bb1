"""The supervisor's loop: one attempt after another until `policy.decide` says stop.

Call sequence of `Supervisor.run` (main thread; signal handlers only set a flag and
forward the signal to the job's process group):
1. Create DIR/supervisor/; install handlers for SIGTERM, SIGINT and SIGUSR1.
2. Per attempt: read the durable index; remove the previous attempts' heartbeats; start
   CMD in its own process group with the REPLAY_RUN_* environment (layout.py).
3. Watch every 0.2 s: the child's exit, the heartbeats of this attempt (one per journal
   process: every rank under torchrun), the hang rule (below), a forwarded preemption
   whose grace ran out (then SIGKILL).
4. When the child has exited: kill what is left of its group, read the durable index and
   the crash records, classify (policy.classify), append the attempt to attempts.jsonl,
   say one line on stderr, and either stop with the decided status or wait the backoff
   (a preemption signal during the wait stops at once) and go to 2.

Hang rule: a heartbeat is stale when its sequence has not changed for longer than its
phase's allowance, and the attempt is hung when one is stale and the durable index has
not moved meanwhile. Before the first heartbeat the allowance is `startup_timeout`
(start-up, then opening); applying and idle: `hang_timeout`, or by default HANG_MULTIPLE
x the p99 of the intervals seen between updates (over every attempt so far), at least
HANG_FLOOR; recovering (which publishes "recovering k/n" at least once per REPLAY_BATCH
entries): REPLAY_BATCH x that, at least `startup_timeout`, so a replay that progresses is
never a hang however long, and a stuck one is; snapshotting and closing:
SLOW_PHASE_MULTIPLE x the apply allowance. A hung job's stacks are dumped
(child.dump_stacks) before it is stopped.
"""

from __future__ import annotations

import os
import random
import signal
import sys
import time
from pathlib import Path

from eventlog import EventLog, LogError

from .. import layout as paths
from ..ranks import layout as ranks_layout
from . import layout, records
from .child import Child, dump_stacks, oom_kills
from .heartbeat import Beat, read as read_heartbeat
from .metrics import REFRESH as _REFRESH, MetricsFile
from .replica_status import read as read_replica_status
from .policy import Decision, Options, Outcome, backoff_delay, classify, decide
from .vocabulary import FailureClass

POLL = 0.2
HANG_FLOOR = 120.0
HANG_MULTIPLE = 20.0
SLOW_PHASE_MULTIPLE = 10.0
REPLAY_BATCH = 64  # entries recovery may replay between two progress updates (replay.readahead.BATCH)
FORWARDED = (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1)


def metrics_refresh() -> float:
    return _REFRESH


def durable_index(journal_dir: Path) -> int:
    """The journal's durable progress: its log's last index (the minimum over ranks for a
    multi-rank journal); 0 when there is no log yet or it cannot be read."""
    ranks = ranks_layout.ranks_on_disk(journal_dir)
    roots = [ranks_layout.rank_dir(journal_dir, r) for r in ranks] if ranks else [journal_dir]
    indexes = []
    for root in roots:
        path = paths.log_dir(root)
        if not paths.log_data_file(root).exists():
            return 0
        try:
            with EventLog.open(path, readonly=True) as log:
                indexes.append(log.last_index)
        except (LogError, OSError):
            return 0
    return min(indexes, default=0)


class _Watch:
    """What the supervisor learns from one attempt's heartbeats."""

    def __init__(self, options: Options, intervals: list[float] | None = None):
        self.options = options
        self.beats: dict[Path, tuple[Beat, float]] = {}  # path -> (last beat, when its sequence last changed)
        # Seconds per apply, learnt across attempts (the supervisor hands the list on): the
        # next attempt's recovery replays the same ops at about the same cost.
        self.intervals: list[float] = [] if intervals is None else intervals
        self.opened = False
        self.last_durable: int | None = None  # the durable index when a stale heartbeat was last checked

    def observe(self, paths: list[Path], now: float) -> None:
        for path in paths:
            beat = read_heartbeat(path)
            if beat is None:
                continue
            self.opened = True
            seen = self.beats.get(path)
            if seen is None or seen[0].sequence != beat.sequence:
                if seen is not None and beat.phase in ("applying", "idle") and beat.sequence > seen[0].sequence:
                    updates = (beat.sequence - seen[0].sequence) // 2
                    if updates:
                        self.intervals.append((beat.time_ns - seen[0].time_ns) / 1e9 / updates)
                        del self.intervals[:-1000]
                self.beats[path] = (beat, now)

    def apply_allowance(self) -> float:
        if self.options.hang_timeout is not None:
            return self.options.hang_timeout
        if not self.intervals:
            return HANG_FLOOR
        ordered = sorted(self.intervals)
        p99 = ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))]
        return max(HANG_FLOOR, HANG_MULTIPLE * p99)

    def recovery_allowance(self) -> float:
        """How long a recovering heartbeat may stand still: recovery publishes its progress
        once per batch of replayed entries at the least (replay.recovery), so a batch of
        entries as slow as the applies seen so far must fit, and never less than the
        start-up allowance."""
        if not self.intervals:
            return self.options.startup_timeout
        return max(self.options.startup_timeout, REPLAY_BATCH * self.apply_allowance())

    def stale(self, now: float, started: float) -> tuple[Beat | None, float] | None:
        """(the stale beat or None before any, seconds stale) when past its allowance, else None."""
        if not self.beats:
            waited = now - started
            return (None, waited) if waited > self.options.startup_timeout else None
        for beat, changed in self.beats.values():
            if beat.phase == "closed":
                continue
            if beat.phase == "opening":
                allowance = self.options.startup_timeout
            elif beat.phase == "recovering":
                allowance = self.recovery_allowance()
            elif beat.phase in ("snapshotting", "closing"):
                allowance = SLOW_PHASE_MULTIPLE * self.apply_allowance()
            else:
                allowance = self.apply_allowance()
            if now - changed > allowance:
                return beat, now - changed
        return None


class Supervisor:
    """``replay run DIR -- CMD``: see the module docstring for the call sequence."""

    def __init__(self, journal_dir: str | os.PathLike, command: list[str], options: Options = Options(),
                 err=None, rng: random.Random | None = None, metrics: str | os.PathLike | None = None):
        if not command:
            raise ValueError("replay run: no command to run (give it after --)")
        self.journal_dir = Path(journal_dir).absolute()
        self.records = layout.records_dir(self.journal_dir)
        self.command = list(command)
        self.options = options
        self._err = err if err is not None else sys.stderr
        self._rng = rng or random.Random()
        self._intervals: list[float] = []  # seconds per apply, over every attempt (_Watch)
        self._preempted: int | None = None
        self._preempted_at: float | None = None
        self._child: Child | None = None
        self._started_wall = time.time()
        self._metrics = MetricsFile(metrics) if metrics is not None else None  # ValueError without prometheus_client
        self._attempt_number = 0  # the attempt running or just ended (whose replica status --metrics reads)

    def say(self, line: str) -> None:
        print(f"replay run: {line}", file=self._err, flush=True)

    # ------------------------------------------------------------------ signals

    def _on_signal(self, signum, frame) -> None:
        if self._preempted is None:
            self._preempted, self._preempted_at = signum, time.monotonic()
        if self._child is not None:
            self._child.signal_group(signum)

    def run(self) -> int:
        self.records.mkdir(parents=True, exist_ok=True)
        previous = {s: signal.signal(s, self._on_signal) for s in FORWARDED}
        try:
            return self._loop()
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler)

    # ------------------------------------------------------------------ attempts

    def _loop(self) -> int:
        history: list[Outcome] = []
        attempt = self._first_attempt()
        while True:
            outcome, dump = self._attempt(attempt, history[-1].failure.value if history else "")
            history.append(outcome)
            decision = decide(history, self.options)
            self._record(outcome, decision, dump)
            self._report(outcome, decision)
            self._update_metrics(running=False, ended=outcome.failure.value, index=outcome.index_end)
            if not decision.restart:
                return decision.status
            delay = backoff_delay(history, self.options, self._rng)
            self.say(f"next attempt in {delay:.1f} s")
            deadline = time.monotonic() + delay
            while time.monotonic() < deadline and self._preempted is None:
                time.sleep(min(POLL, max(0.0, deadline - time.monotonic())))
            if self._preempted is not None:
                status = 128 + self._preempted
                self.say(f"preempted by signal {self._preempted} between attempts: stopping ({status})")
                return status
            attempt += 1

    def _first_attempt(self) -> int:
        """1 + the last attempt number recorded (a second `replay run` goes on counting)."""
        try:
            done, _ = records.read_attempts(self.records)
        except records.JsonFileError:
            done = []
        numbers = [a["attempt"] for a in done if isinstance(a["attempt"], int)]
        return max(numbers, default=0) + 1

    def _environment(self, attempt: int, last_class: str) -> dict[str, str]:
        env = dict(os.environ)
        env[layout.ENV_JOURNAL] = str(self.journal_dir)
        env[layout.ENV_ATTEMPT] = str(attempt)
        env[layout.ENV_LAST_CLASS] = last_class
        if last_class == FailureClass.OOM.value and "PYTORCH_CUDA_ALLOC_CONF" not in env:
            env["PYTORCH_CUDA_ALLOC_CONF"] = "expandable_segments:True"
        return env

    def _attempt(self, attempt: int, last_class: str) -> tuple[Outcome, str | None]:
        self._attempt_number = attempt
        for path in [*self.records.glob("heartbeat-a*"), *self.records.glob("replica-a*")]:  # liveness, not records
            try:
                path.unlink()
            except OSError:
                pass
        index_start = durable_index(self.journal_dir)
        oom_before = oom_kills()
        started = time.monotonic()
        self._started_wall = time.time()
        self.say(f"attempt {attempt}: {' '.join(self.command)} (durable index {index_start})")
        watch = _Watch(self.options, self._intervals)
        hung, dump, opened_after = False, None, None
        try:
            self._child = child = Child(self.command, self._environment(attempt, last_class))
        except OSError as exc:
            outcome = Outcome(attempt, FailureClass.STARTUP_ERROR, 127, None, index_start, index_start,
                              message=f"cannot start {self.command[0]!r}: {exc.strerror or exc}")
            return outcome, None
        if self._preempted is not None:  # a signal that arrived while it was starting
            child.signal_group(self._preempted)
        while True:
            status = child.wait(POLL)
            if status is not None:
                break
            now = time.monotonic()
            if self._preempted_at is not None and now - self._preempted_at > self.options.grace:
                self.say(f"the job did not stop within --grace {self.options.grace:g} s: SIGKILL")
                child.signal_group(signal.SIGKILL)
                continue
            watch.observe(layout.of_attempt(self.records, "heartbeat", attempt), now)
            if watch.opened and opened_after is None:
                opened_after = now - started
                self._update_metrics(running=True, recovery_seconds=opened_after, force=True)
            else:
                self._update_metrics(running=True)
            stale = watch.stale(now, started)
            if stale is not None and self._preempted is None and not self._progressed(watch, index_start):
                beat, seconds = stale
                hung = True
                where = beat.describe() if beat is not None else "before its journal opened"
                self.say(f"attempt {attempt} hung: no heartbeat for {seconds:.0f} s while {where}")
                written = []
                for pid in sorted({b.pid for b, _ in watch.beats.values() if b.phase != "closed"}):
                    path = layout.dump_path(self.records, attempt, pid)  # every journal process: every rank
                    if dump_stacks(pid, path):
                        written.append(str(path))
                if written:
                    dump = os.pathsep.join(written)
                    self.say(f"stacks of every thread: {', '.join(written)}")
                status = child.stop(self.options.grace)
                break
        child.reap_group()
        self._child = None
        index_end = durable_index(self.journal_dir)
        crash = self._crash(attempt)
        oom_after = oom_kills()
        failure = classify(returncode=status, preempted_by=self._preempted, hung=hung, crash=crash,
                           opened=watch.opened, oom_killed=oom_before is not None and oom_after is not None
                           and oom_after > oom_before)
        message = ""
        if crash is not None:
            message = f"{crash['type'].rsplit('.', 1)[-1]}: {crash['message']}"
        return Outcome(attempt, failure, status if status >= 0 else None,
                       -status if status < 0 else self._preempted if failure is FailureClass.PREEMPTED else None,
                       index_start, index_end, crash.get("op") if crash else None,
                       crash.get("index") if crash else None, message[:2000]), dump

    def _update_metrics(self, *, running: bool, index: int | None = None, **kw) -> None:
        if self._metrics is None:
            return
        if index is None:
            if not kw.get("force") and time.monotonic() - self._metrics._written < metrics_refresh():
                return  # the durable index is read only when the file is due
            index = durable_index(self.journal_dir)
        replica = [s for p in layout.of_attempt(self.records, "replica", self._attempt_number)
                   if (s := read_replica_status(p)) is not None]
        try:
            self._metrics.update(index=index, running=running, replica=replica, **kw)
        except OSError as exc:
            self.say(f"cannot write --metrics {self._metrics.path}: {exc.strerror or exc}")

    def _progressed(self, watch: _Watch, index_start: int) -> bool:
        """Whether the durable index moved since the stale heartbeat last changed (then it is
        not a hang: e.g. a long snapshot or a writer busy outside the journal's thread)."""
        current = durable_index(self.journal_dir)
        moved = current > (index_start if watch.last_durable is None else watch.last_durable)
        watch.last_durable = current
        if moved:
            now = time.monotonic()
            watch.beats = {p: (b, now) for p, (b, _) in watch.beats.items()}
        return moved

    def _crash(self, attempt: int) -> dict | None:
        """The crash record that blames this attempt's failure: the earliest written that is not
        a cascade (a rank failing because a peer died); None when every record is one (the
        peer died without one: killed, segfaulted), so the exit decides."""
        found = []
        for path in layout.of_attempt(self.records, "crash", attempt):
            record = records.read_crash(path)
            if record is not None and not record["cascade"]:
                try:
                    found.append((path.stat().st_mtime_ns, record))
                except OSError:
                    continue
        return min(found, key=lambda item: item[0])[1] if found else None

    # ------------------------------------------------------------------ records and messages

    def _record(self, outcome: Outcome, decision: Decision, dump: str | None) -> None:
        entry = {"op": outcome.op, "index": outcome.index} if outcome.op is not None or outcome.index is not None else None
        now = time.time()
        records.append_attempt(self.records, {
            "attempt": outcome.attempt, "started": self._started_wall, "ended": now, "class": outcome.failure.value,
            "exit": outcome.exit, "signal": outcome.signal, "index_start": outcome.index_start,
            "index_end": outcome.index_end, "decision": "restart" if decision.restart else "stop",
            "entry": entry, "message": outcome.message, "dump": dump,
        })

    def _report(self, outcome: Outcome, decision: Decision) -> None:
        how = (f"exit {outcome.exit}" if outcome.exit is not None else f"signal {outcome.signal}")
        line = (f"attempt {outcome.attempt} {outcome.failure.value} ({how}), durable index "
                f"{outcome.index_start} -> {outcome.index_end}")
        if outcome.op is not None or outcome.index is not None:
            line += f", entry {outcome.index} (op {outcome.op!r})"
        if outcome.message:
            line += f": {outcome.message.splitlines()[0][:300]}"
        self.say(line)
        if decision.restart:
            return
        self.say(f"stopping with exit status {decision.status}: {decision.reason}")
        if decision.status == 65 and outcome.failure is FailureClass.USER_ERROR:
            self.say(f"remedy: inspect the entry with `replay show {self.journal_dir} {outcome.index}`; fix the "
                     f"handler, or drop the entry with `replay truncate {self.journal_dir} --after "
                     f"{(outcome.index or 1) - 1}`")
        elif decision.status == 65:
            self.say(f"remedy: `replay verify {self.journal_dir}`; `replay show {self.journal_dir} "
                     f"{outcome.index}` names the entry; fix the handler or the damage before running again")
