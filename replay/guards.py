"""A Journal's guards: one thread at a time, closed, poisoned, and a preemption's stop after each call.

Call sequence (the journal's calling thread; a preemption signal's handler runs on the
main thread): every public call runs inside `entered(what)`, and those that do work
call `check_usable()` first; every log write goes through `guarded`, every agreement of
the group (replay.group) through `collective`. The first failure that nothing may retry
sets `poison`; from then on the journal refuses work until it is reopened. `closed` is
set once by the journal's release. When a call returns (or raises), a preemption signal
that arrived during it stops the journal (replay/preemption.py).
"""

from __future__ import annotations

import contextlib

from eventlog import LogPoisonedError

from .errors import ClosedError, JournalPoisonedError, RankFailureError
from .preemption import NoPreemption
from .threadguard import OneThreadAtATime


class Guards:
    """The usability of one journal at `path` (module doc)."""

    def __init__(self, path) -> None:
        self.path = path
        self.poison: BaseException | None = None
        self.closed = False
        self.one_thread = OneThreadAtATime()
        self.preemption = NoPreemption()  # a PreemptionHandler, installed by open when asked for

    @contextlib.contextmanager
    def entered(self, what: str):
        """One thread at a time; when the call returns (or raises), a preemption signal that
        arrived during it stops the journal (replay/preemption.py)."""
        raised = None
        try:
            with self.one_thread.entered(what):
                yield
        except BaseException as exc:
            raised = exc  # stopping for a signal replaces it: after_call reports it first
            raise
        finally:
            self.preemption.after_call(raised)

    def run(self, what: str, call, *args):
        """``call(*args)`` inside `entered(what)`, returning what it returns: the same guard
        without a generator frame per call (Journal.apply's path, paid once per step)."""
        one_thread = self.one_thread
        raised = None
        try:
            one_thread.enter(what)
            try:
                return call(*args)
            finally:
                one_thread.leave()
        except BaseException as exc:
            raised = exc  # as in entered: stopping for a signal replaces it
            raise
        finally:
            self.preemption.after_call(raised)

    def check_usable(self) -> None:
        """ClosedError after close; JournalPoisonedError (from the poison) once poisoned."""
        if self.closed:
            raise ClosedError(f"journal {self.path} is closed")
        if self.poison is not None:
            raise JournalPoisonedError(
                f"journal {self.path} refuses further work: {type(self.poison).__name__}: {self.poison}. "
                "Reopen it to recover the durable prefix."
            ) from self.poison

    def guarded(self, call, *args):
        """Run a log call; a poisoned log poisons the journal (nothing may be retried)."""
        try:
            return call(*args)
        except LogPoisonedError as exc:
            self.poison = exc
            raise JournalPoisonedError(f"journal {self.path}: the log failed a write or sync: {exc}") from exc

    def collective(self, call, *args):
        """Run a group agreement; a failed collective (a dead peer) poisons the journal: the
        group is broken, and only a reopen of every rank recovers."""
        try:
            return call(*args)
        except RankFailureError as exc:
            self.poison = exc
            raise
