"""The store's worker threads: one function over many items, all or nothing."""

from __future__ import annotations

from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import AbstractContextManager, nullcontext
from typing import Any, Callable, Iterable


class WorkerPool:
    """A fixed pool of threads that hash, compress, write and read chunks in parallel."""

    def __init__(self, workers: int):
        self.workers = workers
        self._executor = ThreadPoolExecutor(workers, thread_name_prefix="snapshots-io")

    def map_all(self, fn: Callable, items: Iterable) -> list:
        """fn over items on the pool, results in order; the first error cancels the rest
        and is raised once every started task has finished (none touches the store after
        this returns)."""
        futures = [self._executor.submit(fn, item) for item in items]
        results, error = [], None
        for f in futures:
            if error is not None:
                f.cancel()
                continue
            try:
                results.append(f.result())
            except BaseException as e:  # noqa: BLE001 - re-raised below, after cleanup
                error = e
                for g in futures:
                    g.cancel()
        if error is not None:
            for f in futures:
                if not f.cancelled():
                    f.exception()  # wait for it
            raise error
        return results

    def drain(self, items: Iterable, fn: Callable[[Any, Any], None], threads: int,
              context: Callable[[], AbstractContextManager] | None = None) -> None:
        """fn(item, ctx) for every item, on at most `threads` threads (the caller's and
        `threads - 1` of the pool's; at least the caller's) that each take the next item
        from one shared queue (a thread the OS delays holds up one item, not a fixed
        share), `ctx` being what that thread's `context()` entered (None without one;
        entered once per thread, exited when it stops). Nothing runs for no items. The
        first error stops every thread before its next item and is raised once all have
        stopped (none touches the store after this returns).

        One task per thread instead of one per item: a load of a hundred chunks makes a
        few thread hand-offs, not a few hundred (each one a GIL round trip and a futex)."""
        queue = deque(items)
        failed: list[BaseException] = []

        def run() -> None:
            try:
                with (context() if context is not None else nullcontext()) as ctx:
                    while not failed:
                        try:
                            item = queue.popleft()  # deque's pops are atomic across threads
                        except IndexError:
                            return
                        try:
                            fn(item, ctx)
                        except BaseException as e:  # noqa: BLE001 - raised in the caller's thread below
                            # Recorded before this thread's context exits, which may take a
                            # while (closing packs): the other threads stop at their next item.
                            failed.append(e)
                            return
            except BaseException as e:  # noqa: BLE001 - the context's own enter or exit failed
                failed.append(e)

        if not queue:
            return
        # The calling thread is one of them: it is running already (a pool thread must be
        # woken first), and it would only wait otherwise.
        futures = [self._executor.submit(run) for _ in range(min(threads, len(queue)) - 1)]
        run()
        for f in futures:
            # The queue is empty (or a thread failed) once the caller's run returns: a task
            # not started yet has nothing to do, so it is cancelled, never waited for (and a
            # caller that is itself a pool thread cannot wait on tasks queued behind it).
            if not f.cancel():
                f.result()  # a started one: wait for it (run() itself never raises)
        if failed:
            raise failed[0]

    def submit(self, fn: Callable) -> Future:
        """fn() on the pool; its Future (the caller waits for it before going on)."""
        return self._executor.submit(fn)

    def shutdown(self) -> None:
        """Wait for running tasks and stop the threads."""
        self._executor.shutdown(wait=True)
