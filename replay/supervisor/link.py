"""The journal's side of ``replay run``: heartbeats, crash records, the stack-dump signal.

`Journal.open(path)` asks `link_for(path)`: when the environment names this journal
directory (``REPLAY_RUN_JOURNAL``, set by the supervisor), it gets a `SupervisorLink`,
else `NoSupervisor`, whose methods do nothing. The journal calls the same methods either
way and never asks which. On the hot path (`applying`, `applied`) a link makes memory
writes into the mapped heartbeat: no system call per apply.

On the dump signal (DUMP_SIGNAL) Python's faulthandler writes every thread's stack to
``dump-a<attempt>-p<pid>.txt`` from its C signal handler, so a process blocked in a
C call or a lock still answers; the supervisor sends it before killing a hung job when
py-spy is not installed.
"""

from __future__ import annotations

import contextvars
import faulthandler
import functools
import os
import signal
from pathlib import Path

from . import layout
from .heartbeat import HeartbeatWriter
from .records import write_crash
from .replica_status import ReplicaStatusWriter

DUMP_SIGNAL = signal.SIGRTMIN + 2 if hasattr(signal, "SIGRTMIN") else signal.SIGUSR2


class NoSupervisor:
    """No supervisor watches this journal: every call does nothing."""

    def phase(self, name: str, index: int = 0) -> None:
        pass

    def recovering(self, done: int, total: int) -> None:
        pass

    def applying(self, op: str, index: int) -> None:
        pass

    def applied(self, index: int) -> None:
        pass

    def failed(self, phase: str, op: str | None, index: int | None, exc: BaseException,
               handler: bool = True) -> None:
        pass

    def watch_replica(self, status) -> None:
        pass

    def close(self) -> None:
        pass


class SupervisorLink(NoSupervisor):
    """A journal's heartbeat and crash record for the supervisor of attempt `attempt`.

    Every method is called from the journal's thread; none raises (an I/O error while
    reporting must never replace the user's exception or stop training)."""

    def __init__(self, records: Path, attempt: int):
        pid = os.getpid()
        self._pid = pid
        self._records, self._attempt = records, attempt
        self._replica: ReplicaStatusWriter | None = None
        self._crash = layout.crash_path(records, attempt, pid)
        self._crash_written = False
        self._beat = HeartbeatWriter(layout.heartbeat_path(records, attempt, pid))
        self._dump = None
        try:
            self._dump = open(layout.dump_path(records, attempt, pid), "a", encoding="utf-8")
            faulthandler.register(DUMP_SIGNAL, file=self._dump, all_threads=True, chain=False)
        except (OSError, ValueError, RuntimeError):
            self._dump = None

    def phase(self, name: str, index: int = 0) -> None:
        self._beat.update(name, index)

    def recovering(self, done: int, total: int) -> None:
        self._beat.update("recovering", done, done=done, total=total)

    def applying(self, op: str, index: int) -> None:
        self._beat.update("applying", index, op)

    def applied(self, index: int) -> None:
        self._beat.update("idle", index)
        if self._crash_written:  # the job caught the exception and went on: no crash
            self._crash_written = False
            try:
                os.unlink(self._crash)
            except OSError:
                pass

    def failed(self, phase: str, op: str | None, index: int | None, exc: BaseException,
               handler: bool = True) -> None:
        if os.getpid() != self._pid:
            return
        try:
            write_crash(self._crash, phase=phase, op=op, index=index, exc=exc, handler=handler)
            self._crash_written = True
        except (OSError, ValueError, TypeError):
            pass

    def watch_replica(self, status) -> None:
        """Publish the replica's lag (`status()`: a ReplicaStatus) for the supervisor's --metrics."""
        self._replica = ReplicaStatusWriter(layout.replica_status_path(self._records, self._attempt, self._pid),
                                            status)

    def close(self) -> None:
        if self._replica is not None:
            self._replica.close()  # the journal's last shipping round is done: its final lag
            self._replica = None
        self._beat.update("closed", 0)
        self._beat.close()
        if self._dump is not None and os.getpid() == self._pid:
            try:
                faulthandler.unregister(DUMP_SIGNAL)
            except (ValueError, RuntimeError):
                pass
            self._dump.close()
            self._dump = None


# The link of the `Journal.open` running in this context, so recovery (deep inside it)
# can publish `recovering k/n` without every layer in between passing the link along.
_OPENING: contextvars.ContextVar = contextvars.ContextVar("replay_supervisor_opening")


def opening_link() -> NoSupervisor:
    """The link of the `Journal.open` in progress in this thread; NoSupervisor outside one."""
    return _OPENING.get(None) or NoSupervisor()


def link_for(path) -> NoSupervisor:
    """The link for a journal opened at `path`: a SupervisorLink when ``replay run`` watches
    that directory (and its records directory exists), else NoSupervisor."""
    watched = os.environ.get(layout.ENV_JOURNAL)
    if not watched:
        return NoSupervisor()
    try:
        if Path(path).resolve() != Path(watched).resolve():
            return NoSupervisor()  # another journal of the same script (a pretrained run it reads)
        attempt = int(os.environ.get(layout.ENV_ATTEMPT, "0"))
        records = layout.records_dir(watched)
        if attempt < 1 or not records.is_dir():
            return NoSupervisor()
        return SupervisorLink(records, attempt)
    except (OSError, ValueError):
        return NoSupervisor()


def failure_phase(exc: BaseException) -> str:
    """Where in `Journal.open` `exc` happened, as a crash record says it: "recovering" for
    recovery's failures (replaying durable entries, damage, divergence), else "opening"
    (options refused, a lock held, the script's own error)."""
    from eventlog import LogError
    from snapshots import SnapshotError

    from ..errors import DivergenceError, HandlerError, RecoveryError, UnknownOpError, VersionMismatchError

    from snapshots import StateMismatchError

    recovery = (HandlerError, DivergenceError, RecoveryError, UnknownOpError, VersionMismatchError, SnapshotError)
    if isinstance(exc, recovery) and not isinstance(exc, StateMismatchError):
        return "recovering"
    if isinstance(exc, LogError) and type(exc).__name__ not in ("LockedError", "FencedError"):
        return "recovering"  # damage to the log
    return "opening"


def supervised_open(open_function):
    """Wrap `Journal.open`: link the journal to its supervisor and record a failure to open."""

    @functools.wraps(open_function)
    def wrapper(cls, path, *args, **kwargs):
        link = link_for(path)
        link.phase("opening")
        token = _OPENING.set(link)
        try:
            journal = open_function(cls, path, *args, **kwargs)
        except BaseException as exc:
            if isinstance(exc, Exception):
                index = getattr(exc, "index", None)
                link.failed(failure_phase(exc), getattr(exc, "op", None),
                            index if isinstance(index, int) and not isinstance(index, bool) else None, exc)
            link.close()
            raise
        finally:
            _OPENING.reset(token)
        journal._link = link
        if journal.replica_status is not None:
            link.watch_replica(lambda: journal.replica_status)
        link.phase("idle", journal.index)
        return journal

    return wrapper
