"""One thread at a time: the guard every public Journal call passes through."""

from __future__ import annotations

import contextlib
import threading

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
        self._holder: str | None = None

    def busy(self) -> bool:
        """Whether some thread is inside a guarded call right now (a preemption signal waits for it)."""
        return self._lock.locked()

    @contextlib.contextmanager
    def entered(self, what: str):
        """Run the body as the one thread inside; ConcurrentUseError (naming both threads) otherwise."""
        if not self._lock.acquire(blocking=False):
            raise ConcurrentUseError(what, self._holder, threading.current_thread().name)
        self._holder = f"{threading.current_thread().name} ({what})"
        try:
            yield
        finally:
            self._holder = None
            self._lock.release()
