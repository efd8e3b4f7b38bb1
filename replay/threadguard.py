"""One thread at a time: the guard every public Journal call passes through."""

from __future__ import annotations

import contextlib
import threading
from threading import get_ident

from .errors import ConcurrentUseError


class OneThreadAtATime:
    """Refuses a second thread while another is inside a guarded call.

    A Journal is used from one thread at a time: two overlapping applies would append in
    one order and apply in another, and nothing would ever notice. Handing the object to
    another thread between calls is fine. The check is a non-blocking lock, so a refused
    call does nothing and costs one failed acquire.
    """

    def __init__(self):
        self._lock = threading.Lock()
        # Who is inside, (thread id, what): named only when a second thread is refused, so the
        # name is not formatted on every call.
        self._inside: tuple[int, str] | None = None

    def busy(self) -> bool:
        """Whether some thread is inside a guarded call right now (a preemption signal waits for it)."""
        return self._lock.locked()

    def enter(self, what: str) -> None:
        """Become the one thread inside `what` (then `leave()` exactly once); ConcurrentUseError
        (naming both threads) otherwise, and nothing is held."""
        if not self._lock.acquire(blocking=False):
            inside = self._inside
            holder = f"{_thread_name(inside[0])} ({inside[1]})" if inside is not None else None
            raise ConcurrentUseError(what, holder, threading.current_thread().name)
        # The thread's id (a C call), not its Thread object: only a refusal names it
        self._inside = (get_ident(), what)

    def leave(self) -> None:
        """The thread inside (after `enter`) has left."""
        self._inside = None
        self._lock.release()

    @contextlib.contextmanager
    def entered(self, what: str):
        """Run the body as the one thread inside; ConcurrentUseError (naming both threads) otherwise."""
        self.enter(what)
        try:
            yield
        finally:
            self.leave()


def _thread_name(ident: int) -> str:
    """The name of the live thread with id `ident` (its id where it has ended meanwhile)."""
    for thread in threading.enumerate():
        if thread.ident == ident:
            return thread.name
    return f"thread {ident}"
