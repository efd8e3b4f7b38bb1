"""A module fixture's value computed once per test run, not once per pytest-xdist worker.

A `scope="module"` fixture runs in every worker that gets one of the module's tests, and
the suite deals tests out one at a time (tests/conftest.py). So a fixture that runs an
uninterrupted reference job (half a minute of two ranks under torchrun) ran once per test
that used it. `once_per_run` keeps the first worker's result in the run's shared temporary
directory (the parent of every worker's basetemp), under a lock, and the other workers read
it. The value must be JSON (it crosses processes; never pickle). Without xdist it is just
`compute()`.
"""

from __future__ import annotations

import fcntl
import json
import os
from typing import Any, Callable


def once_per_run(tmp_path_factory, name: str, compute: Callable[[], Any]) -> Any:
    """`compute()`'s JSON value, computed by the first worker that asks and read by the rest.

    A compute that raises is not remembered: the next worker to ask computes it again, and
    fails the same way in its own test. `name` must be unique in the suite (a file name)."""
    if not os.environ.get("PYTEST_XDIST_WORKER"):
        return compute()
    shared = tmp_path_factory.getbasetemp().parent
    result = shared / f"once-{name}.json"
    with open(shared / f"once-{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # held while the first worker computes: the rest wait for it
        if result.exists():
            return json.loads(result.read_text())
        value = compute()
        partial = result.with_suffix(".partial")
        partial.write_text(json.dumps(value))
        partial.replace(result)
        return value
