"""A forked child with strace attached to it (`strace -p`), for signal injections.

A kill at the Nth fdatasync must come from outside the process (strace), and until now
each such child was a fresh interpreter importing torch under strace: strace 6.1 delivers
``signal=KILL`` only without a seccomp filter (tracing.py), so it stopped the child on
every one of the import's thousands of syscalls, about 4 CPU-seconds a child. Here the
test process forks (torch is already imported, as in `run_forked`) and the child waits
until strace has attached before it runs its workload. What strace sees and counts is the
same: every call of the injected syscall the workload makes, counted per thread from the
first one.

The handshake is an injection too: strace is told to make the child's first traced
``getppid`` return ATTACHED (no real pid is that large), and the child calls getppid until
it does. So the child starts exactly when strace is tracing it, never after a guessed delay.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from typing import Callable

from .children import Run, collect, fork_child

ATTACHED = 1 << 30  # above any pid_max (at most 2**22): getppid returns it only through strace
NEVER_ATTACHED = 97  # the child's exit status when strace never attached within its deadline


class TracedChild:
    """A forked child running `fn(*args, out_fd, **kwargs)` under `strace -p`; `finish()` gives its Run."""

    def __init__(self, fn: Callable, *args, strace: str, inject: str, attach_timeout: float = 60, **kwargs):
        syscall = inject.split(":", 1)[0]

        def wait_for_strace():
            deadline = time.monotonic() + attach_timeout
            while os.getppid() != ATTACHED:
                if time.monotonic() > deadline:
                    print(f"strace never attached within {attach_timeout} s", file=sys.stderr)
                    os._exit(NEVER_ATTACHED)
                os.sched_yield()

        pid, r, er = fork_child(fn, *args, before=wait_for_strace, **kwargs)
        self.pid, self._pipes = pid, (r, er)
        self._strace = subprocess.Popen(
            [strace, "-f", "-qq", "-o", "/dev/null", "-e", f"trace={syscall},getppid", "-e", f"inject={inject}",
             "-e", f"inject=getppid:retval={ATTACHED}:when=1", "-p", str(pid)],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)

    def finish(self, timeout: float = 180) -> Run:
        """Collect the child's frames and status, then strace's. AssertionError when strace
        failed or never attached: such a child ran nothing, which must not pass for a kill."""
        run = collect(self.pid, *self._pipes, timeout=timeout)
        try:
            _, complaint = self._strace.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            self._strace.kill()
            _, complaint = self._strace.communicate()
        never = os.WIFEXITED(run.status) and os.WEXITSTATUS(run.status) == NEVER_ATTACHED
        assert self._strace.returncode == 0 and not never, (
            f"strace -p {self.pid} failed (status {self._strace.returncode}): {complaint.decode(errors='replace')}; "
            f"child: {run.stderr_tail()}")
        return run
