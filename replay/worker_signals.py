"""DataLoader workers outlive a preemption signal sent to the whole process group.

SLURM's ``scancel``, container runtimes and a terminal's Ctrl-C signal every process of
the job's group at once: the trainer *and* its DataLoader workers. A worker that dies
of it makes PyTorch raise ``DataLoader worker (pid N) is killed by signal`` from its
SIGCHLD handler in the trainer's main thread, i.e. inside whatever runs there: the
handler of the entry being applied, which a preemption must never interrupt
(replay/INVARIANTS.md, invariant 9). So a JournaledLoader's workers run `DeferSignals`
first (a ``worker_init_fn`` wrapper that then calls the user's own):

1. The preemption signals are blocked in every thread of the worker. A thread's signal
   mask is inherited from the thread that created it, and PyTorch's worker setup may
   start native threads (thread pools re-created in the child) before any
   ``worker_init_fn`` runs, so blocking them in the worker would come too late for
   those: a group's SIGTERM could land on one of them and kill the worker (seen under
   load, about one run in five of a 2,200-test suite). So the loader blocks them in its
   own thread while its DataLoader forks the workers (`DeferSignals.inherited`), and
   the worker's main thread blocks them again in case it was started another way. With
   the "forkserver" start method the workers are forked from the server, not from the
   loader's thread: there, threads PyTorch starts before ``worker_init_fn`` can still
   take the signal.
2. A daemon thread takes them with ``sigwaitinfo``, which says who sent each one. From
   the worker's parent (DataLoader's ``terminate()`` of a worker that does not stop at
   shutdown, multiprocessing's at exit) it ends the worker at once with status 0, as
   PyTorch's own worker SIGTERM handler does; from anyone else it is ignored while the
   parent lives: the trainer stops cleanly, and its DataLoader ends the workers (the
   shutdown sentinel; a worker whose trainer died notices within PyTorch's watchdog
   interval, 5 s). A signal from elsewhere once the parent is gone ends the worker
   with the signal's status (128 + signum).

The signals: SIGTERM, SIGINT, SIGUSR1, those a journal's `Preemption` catches in the
parent (inherited by a forked worker), and any the loader is given (``worker_signals=``).
A signal that arrives while a worker is still starting, before `DeferSignals` runs, acts
as it would without it. SIGKILL cannot be deferred: a scheduler's final SIGKILL ends
everything, as it must. A process a worker starts (``subprocess`` from a dataset)
inherits the blocked signals, as every exec'd child inherits a signal mask: unblock them
there (``preexec_fn``) if it must die of them.

A worker that dies of SIGSEGV, SIGBUS or SIGFPE says only PyTorch's "Unexpected
segmentation fault encountered in worker": PyTorch's worker setup replaces the fault
handlers with its own, which print that line and die of the signal again. Where
faulthandler is on in the trainer (pytest, ``python -X faulthandler``,
``PYTHONFAULTHANDLER``), `DeferSignals` puts it back in front of PyTorch's handler, so
the worker's stderr also holds every thread's Python stack (`_stacks_on_faults`); the
worker still ends as before, and PyTorch still reports it.
"""

from __future__ import annotations

import contextlib
import faulthandler
import os
import signal
import sys
import threading
from typing import Callable, Iterable, Iterator

from .preemption import installed_signals

DEFAULT_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1)


class DeferSignals:
    """A DataLoader ``worker_init_fn``: defer the preemption signals (module doc), then call `init`.

    Picklable when `init` is (a "spawn" or "forkserver" DataLoader context pickles it).
    `signals`: more signals to defer than the defaults. ValueError for SIGKILL or SIGSTOP
    (they cannot be blocked) or a number that is not a signal.
    """

    def __init__(self, init: Callable[[int], None] | None = None, signals: Iterable[int] = ()):
        extra = tuple(signal.Signals(s) for s in signals)
        if any(s in (signal.SIGKILL, signal.SIGSTOP) for s in extra):
            raise ValueError("SIGKILL and SIGSTOP cannot be deferred in DataLoader workers")
        self.init = init
        self.signals = extra

    def deferred(self) -> set[int]:
        """The signals deferred: the defaults, `signals`, and those a Preemption catches now."""
        return set(DEFAULT_SIGNALS) | set(self.signals) | set(installed_signals())

    @contextlib.contextmanager
    def inherited(self) -> Iterator[None]:
        """Within: the deferred signals blocked in the calling thread, so workers forked now
        (DataLoader's iterator starting) and every thread they start inherit the block.
        The calling thread's mask is restored on the way out; a signal that arrived
        meanwhile is delivered then."""
        previous = signal.pthread_sigmask(signal.SIG_BLOCK, self.deferred())
        try:
            yield
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, previous)

    def __call__(self, worker_id: int) -> None:
        _stacks_on_faults()
        signals = self.deferred()
        parent = os.getppid()
        # Blocked before the thread starts, so it inherits the mask too: only sigwaitinfo
        # ever takes these signals in this process.
        signal.pthread_sigmask(signal.SIG_BLOCK, signals)
        threading.Thread(target=_answer, args=(frozenset(signals), parent), daemon=True,
                         name="replay-worker-signals").start()
        if self.init is not None:
            self.init(worker_id)


def _stacks_on_faults() -> None:
    """In a DataLoader worker whose parent had faulthandler on: a fatal signal dumps every
    thread's Python stack to stderr, then PyTorch's worker handler runs as before (module doc).

    faulthandler's "enabled" flag is inherited over fork while its handlers were replaced
    by PyTorch's, so ``faulthandler.enable()`` alone would do nothing. Disabling it puts
    back the handlers it saved in the parent; PyTorch's are then installed again, and
    enabling faulthandler saves them as the ones to chain to after its dump. Nothing
    changes where faulthandler is off, outside a DataLoader worker, or where stderr has
    no file descriptor to write to."""
    from torch.utils.data import get_worker_info
    from torch.utils.data._utils import signal_handling

    # PyTorch's own setter (private, so looked up rather than assumed: a release without
    # it keeps PyTorch's line and nothing more)
    set_torch_handlers = getattr(signal_handling, "_set_worker_signal_handlers", None)
    if set_torch_handlers is None or not faulthandler.is_enabled() or get_worker_info() is None:
        return
    stderr = sys.__stderr__
    try:
        stderr.fileno()
    except (AttributeError, OSError, ValueError):
        return  # no descriptor (closed, or replaced by an object without one): keep PyTorch's line
    faulthandler.disable()
    set_torch_handlers()
    faulthandler.enable(file=stderr, all_threads=True)


def _answer(signals: frozenset, parent: int) -> None:
    while True:
        info = signal.sigwaitinfo(signals)
        if info.si_pid == parent:
            os._exit(0)  # the DataLoader (or multiprocessing) ends its worker
        if os.getppid() != parent:
            os._exit(128 + info.si_signo)  # nobody left to stop us cleanly: act as the signal would
        # Otherwise: the group's signal; the trainer stops first and ends its workers.
