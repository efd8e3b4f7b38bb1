"""The store's worker threads: one function over many items, all or nothing."""

from __future__ import annotations

from concurrent.futures import Future, ThreadPoolExecutor
from typing import Callable, Iterable


class WorkerPool:
    """A fixed pool of threads that hash, compress, write and read chunks in parallel."""

    def __init__(self, workers: int):
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

    def submit(self, fn: Callable) -> Future:
        """fn() on the pool; its Future (the caller waits for it before going on)."""
        return self._executor.submit(fn)

    def shutdown(self) -> None:
        """Wait for running tasks and stop the threads."""
        self._executor.shutdown(wait=True)
