"""Running a function in a forked child, for the crash and multi-process tests.

Forking (rather than spawning a fresh interpreter) keeps each child's start cheap: torch
is already imported. Callers fork only while they hold no open store, so no worker
thread of the parent is running; the child limits torch to one intra-op thread.
"""

from __future__ import annotations

import os
import traceback
from typing import Callable


def fork_child(fn: Callable[..., None], *args) -> int:
    """Fork; the child runs fn(*args) and exits 0, or 1 on an exception. Returns the pid."""
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            import torch

            torch.set_num_threads(1)
            fn(*args)
            code = 0
        except BaseException:  # noqa: BLE001 - report and exit, never return into pytest
            traceback.print_exc()
        finally:
            os._exit(code)
    return pid


def read_all(fd: int) -> bytes:
    chunks = []
    while data := os.read(fd, 65536):
        chunks.append(data)
    os.close(fd)
    return b"".join(chunks)
