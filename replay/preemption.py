"""Preemption: on SIGTERM/SIGUSR1, let the current apply finish, snapshot, close, then exit or raise.

Schedulers announce the end of a job with a signal and a grace period before SIGKILL:
Kubernetes sends SIGTERM (terminationGracePeriodSeconds, 30 s by default), SLURM sends
SIGTERM (or the signal of ``--signal``, often SIGUSR1) ahead of its KillWait, spot
instances give a notice. ``Journal.open(..., preemption=replay.Preemption())`` turns that
signal into a clean stop, so the next open replays nothing:

1. The signal handler only records the signal (and starts the grace timer) when a
   journal call is in progress: the handler of the entry being applied is never
   interrupted, and a half-applied entry never exists.
2. As soon as no journal call is in progress (at once, when the signal arrives between
   calls; otherwise when the call in progress returns), the journal snapshots the last
   index (skipped when one exists there), makes every entry durable and closes.
3. Then ``then="exit"`` ends the process with status ``128 + signum`` (143 for
   SIGTERM, 138 for SIGUSR1): the status a shell gives a process the signal
   killed, so a scheduler sees "stopped by a signal, not finished", and Kubernetes'
   ``restartPolicy: OnFailure`` or a SLURM requeue restarts the job (0 would mark it
   completed). On the main thread this is ``sys.exit`` (SystemExit unwinds ``with``
   blocks and ``finally`` clauses; atexit runs); on another thread, stdout and stderr
   are flushed and the process ends with ``os._exit``. ``then="raise"`` raises
   `PreemptedError` instead, from the apply (or, between calls, from wherever the
   main thread was, as KeyboardInterrupt does), and the program decides.
4. If steps 1-2 do not finish within `grace` seconds (a handler that runs long, a
   snapshot on a slow disk), a timer thread ends the process with ``os._exit(128 +
   signum)`` at once, leaving what is durable: the write-ahead invariant (1) and
   recovery (3) still hold, exactly as after a SIGKILL, so the next open recovers every
   entry that was durable, no more, and replays what the missing snapshot would have
   covered. Set `grace` below the scheduler's own grace so this, not SIGKILL, is what
   happens.

Handlers are installed by `Journal.open` only from the main thread (Python runs signal
handlers there; ValueError otherwise, before anything is opened), and the previous
handlers are restored when the journal closes (or, if it closes on another thread, the
first time a signal arrives after that). A forked child (a DataLoader worker) inherits
the handler; there it does nothing of ours and acts as the previous handler would,
since a child must never touch the parent's log.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
import traceback
from dataclasses import dataclass
from typing import Callable

from .errors import PreemptedError

THEN = ("exit", "raise")


@dataclass(frozen=True)
class Preemption:
    """What a journal does on a preemption signal (module doc): `signals` to catch,
    `grace` seconds before a forced exit, `then` "exit" (status 128 + signum) or "raise"
    (`PreemptedError`). ValueError for an empty or invalid signal list, a grace that is
    not positive, or another `then`."""

    signals: tuple[int, ...] = (signal.SIGTERM, signal.SIGUSR1)
    grace: float = 30.0
    then: str = "exit"

    def __post_init__(self):
        signals = tuple(self.signals)
        if not signals:
            raise ValueError("Preemption(signals=...) must name at least one signal")
        for signum in signals:
            if signum in (signal.SIGKILL, signal.SIGSTOP) or not 0 < int(signum) < signal.NSIG:
                raise ValueError(f"Preemption cannot catch signal {signum!r}")
        object.__setattr__(self, "signals", tuple(signal.Signals(s) for s in signals))
        if not (isinstance(self.grace, (int, float)) and self.grace > 0):
            raise ValueError(f"Preemption(grace=...) must be a positive number of seconds, got {self.grace!r}")
        if self.then not in THEN:
            raise ValueError(f"Preemption(then=...) must be one of {THEN}, got {self.then!r}")

    @staticmethod
    def exit_status(signum: int) -> int:
        """The status a preempted process exits with: 128 + signum (module doc)."""
        return 128 + int(signum)


def installed_signals() -> tuple[int, ...]:
    """The signals whose Python handler is a journal's preemption handler in this process
    (in a forked child, e.g. a DataLoader worker: in its parent when it forked)."""
    caught = []
    for signum in signal.valid_signals():
        try:
            handler = signal.getsignal(signum)
        except (OSError, ValueError):
            continue
        if getattr(handler, "__func__", None) is PreemptionHandler._on_signal:
            caught.append(signum)
    return tuple(caught)


def check_installable() -> None:
    """ValueError unless called on the main thread (the only one Python delivers signals to)."""
    if threading.current_thread() is not threading.main_thread():
        raise ValueError("Journal.open(preemption=...) must be called from the main thread: Python installs and "
                         "runs signal handlers only there (open the journal there, or handle the signal yourself)")


class PreemptionHandler:
    """The installed side of a `Preemption` for one journal.

    Call sequence: `install()` (main thread, end of Journal.open); on a signal, the
    handler (main thread) either stops the journal at once through `stop_now` or, when
    `call_in_progress()` says a call is running, leaves it to `after_call()`, which the
    journal calls when each public call returns (on that call's thread); `uninstall()`
    when the journal closes. `stop(signum)` is the journal's clean close (snapshot,
    flush, release); the timer thread only ever calls `os._exit`.
    """

    def __init__(self, policy: Preemption, stop: Callable[[], None], call_in_progress: Callable[[], bool],
                 where: str):
        self.policy = policy
        self._stop = stop
        self._call_in_progress = call_in_progress
        self._where = where
        self._pid = os.getpid()
        self._previous: dict[int, object] = {}
        self._installed = False
        self.signum: int | None = None  # the preemption signal received, once one is
        self.deadline: float | None = None  # time.monotonic() when its grace ends (the stop must be done by then)
        self._stopped = False
        self._closed = False
        self._timer: threading.Timer | None = None

    @property
    def grace(self) -> float:
        """The policy's grace period (seconds)."""
        return self.policy.grace

    def install(self) -> None:
        """Catch the policy's signals, remembering the handlers they replace. Main thread only."""
        check_installable()
        for signum in self.policy.signals:
            self._previous[signum] = signal.signal(signum, self._on_signal)
        self._installed = True

    def closed(self) -> None:
        """The journal closed (by any path): from now on the signals act as before it opened."""
        self._closed = True
        self.uninstall()

    def uninstall(self) -> None:
        """Restore the previous handlers (on the main thread; elsewhere the next signal does). Idempotent."""
        if not self._installed or threading.current_thread() is not threading.main_thread():
            return
        self._installed = False
        for signum, previous in self._previous.items():
            if signal.getsignal(signum) == self._on_signal:
                signal.signal(signum, previous)

    def after_call(self, raised: BaseException | None = None) -> None:
        """A journal call returned, or raised `raised`: stop now if a signal came during it.

        Stopping replaces `raised` (by SystemExit or PreemptedError), so it is reported
        on stderr first, named, with its traceback: an error that coincided with the
        preemption (a handler's, a DataLoader's) must never vanish into a clean exit."""
        if self.signum is not None and not self._stopped:
            if raised is not None:
                self._report(raised)
            self._finish()

    def _report(self, raised: BaseException) -> None:
        trace = "".join(traceback.format_exception(type(raised), raised, raised.__traceback__))
        print(f"replay: {self._where}: the journal call in progress when signal {self.signum} arrived raised "
              f"{type(raised).__name__}: {raised}; stopping for the signal replaces that exception, which is "
              f"not re-raised:\n{trace}", file=sys.stderr, end="", flush=True)

    def _on_signal(self, signum: int, frame) -> None:
        if os.getpid() != self._pid:
            self._as_previous(signum, frame)  # a forked child (a DataLoader worker) never touches the log
            return
        if self.signum is not None:
            return  # a second signal while stopping: the grace timer bounds it
        if self._closed:
            self._as_previous(signum, frame)  # closed on another thread, so still installed
            return
        self.signum = signum
        self.deadline = time.monotonic() + self.policy.grace
        self._timer = threading.Timer(self.policy.grace, self._expired)
        self._timer.daemon = True
        self._timer.start()
        if self._call_in_progress():
            return  # the apply in progress finishes first; after_call stops
        self._finish()

    def _finish(self) -> None:
        self._stopped = True
        try:
            self._stop()
        except BaseException as exc:  # noqa: BLE001 - what is durable is durable; say why and go on
            print(f"replay: {self._where}: closing after signal {self.signum} failed: {type(exc).__name__}: {exc}",
                  file=sys.stderr, flush=True)
        if self._timer is not None:
            self._timer.cancel()
        signum = self.signum
        if self.policy.then == "raise":
            raise PreemptedError(signum, self._where)
        status = Preemption.exit_status(signum)
        if threading.current_thread() is threading.main_thread():
            sys.exit(status)
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(status)

    def _expired(self) -> None:
        # Timer thread: the clean stop overran the grace period. Nothing is cleaned up on
        # purpose; what is durable survives exactly as after a SIGKILL.
        os.write(2, (f"replay: {self._where}: preemption grace of {self.policy.grace} s expired after signal "
                     f"{self.signum}; exiting with what is durable\n").encode())
        os._exit(Preemption.exit_status(self.signum))

    def _as_previous(self, signum: int, frame) -> None:
        previous = self._previous.get(signum, signal.SIG_DFL)
        if callable(previous):
            previous(signum, frame)
            return
        if threading.current_thread() is threading.main_thread():
            signal.signal(signum, previous)
            if previous == signal.SIG_DFL:
                os.kill(os.getpid(), signum)  # the default action, now that it is back


class NoPreemption:
    """The journal's preemption when none was asked for: signals are left alone, nothing stops it."""

    deadline = None
    grace = None

    def after_call(self, raised: BaseException | None = None) -> None:
        pass

    def closed(self) -> None:
        pass
