"""Running children: forked (`run_forked`) or as `python tests/crash/child.py`
(`popen_child`, under strace when asked), collecting their frames into a `Run`."""

from __future__ import annotations

import os
import select
import signal
import sys
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from .framing import frames
from .tracing import injecting

ROOT = Path(__file__).resolve().parents[3]


@dataclass
class Run:
    """What a child reported before it ended."""

    messages: list = field(default_factory=list)
    status: int | None = None  # os.waitpid status, or a Popen returncode
    stderr: bytes = b""

    @property
    def recovered(self):
        return next((m[1] for m in self.messages if m[0] == "recovered"), None)

    @property
    def acks(self) -> list[tuple[int, int, int]]:
        return [tuple(m[1:]) for m in self.messages if m[0] == "ack"]

    @property
    def errors(self) -> list[tuple]:
        return [m[1:] for m in self.messages if m[0] == "error"]

    @property
    def snapshot_errors(self) -> list[tuple]:
        return [m[1:] for m in self.messages if m[0] == "snapshot_error"]

    @property
    def done(self) -> bool:
        return any(m[0] == "done" for m in self.messages)

    @property
    def killed(self) -> bool:
        if self.status is None:
            return False
        if self.status < 0:  # Popen returncode
            return -self.status == signal.SIGKILL
        return os.WIFSIGNALED(self.status) and os.WTERMSIG(self.status) == signal.SIGKILL

    def stderr_tail(self) -> str:
        return self.stderr.decode(errors="replace")[-3000:]



def kill_at_call(names, kill_at: int, module=os) -> list[int]:
    """In a child about to crash: SIGKILL this process at the `kill_at`-th call (1-based,
    counted over all of them) of the functions `names` of `module`, just before it runs, so
    a sweep over `kill_at` stops a workload at every one of its writes, syncs and renames.
    Returns the counter, a one-element list: how many calls were made so far (a run that
    was not killed tells the sweep how far it has to go)."""
    calls = [0]

    def counted(real):
        def call(*args, **kwargs):
            calls[0] += 1
            if calls[0] == kill_at:
                os.kill(os.getpid(), signal.SIGKILL)
            return real(*args, **kwargs)

        return call

    for name in names:
        setattr(module, name, counted(getattr(module, name)))
    return calls

def run_forked(fn: Callable, *args, kill_after: float | None = None, kill_on: Callable[[list], bool] | None = None,
               env: dict | None = None, timeout: float = 120, **kwargs) -> Run:
    """Fork; the child runs fn(*args, out_fd, **kwargs) and exits (1 on an exception).

    The parent collects frames; it SIGKILLs the child `kill_after` seconds after the fork
    or as soon as `kill_on(messages)` is true. Forking (not exec) keeps a child cheap:
    torch is already imported. The caller must hold no open log or store.
    """
    pid, r, er = fork_child(fn, *args, env=env, **kwargs)
    return collect(pid, r, er, timeout=timeout, kill_after=kill_after, kill_on=kill_on)


def fork_child(fn: Callable, *args, env: dict | None = None, before: Callable[[], None] | None = None,
               **kwargs) -> tuple[int, int, int]:
    """Fork a child that runs `before()` then fn(*args, out_fd, **kwargs) and exits (0, or 1
    after printing an exception); its stderr goes to a pipe. Returns (pid, the read end of
    its frame pipe, the read end of its stderr), for `collect`."""
    r, w = os.pipe()
    er, ew = os.pipe()
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            os.close(r)
            os.close(er)
            os.dup2(ew, 2)
            sys.stderr = os.fdopen(2, "w", buffering=1)
            if env:
                os.environ.update(env)
            if before is not None:
                before()
            fn(*args, w, **kwargs)
            code = 0
        except BaseException:  # noqa: BLE001 - report and exit, never return into pytest
            traceback.print_exc()
        finally:
            os._exit(code)
    os.close(w)
    os.close(ew)
    return pid, r, er


def collect(pid: int, r: int, er: int, *, timeout: float = 120, kill_after: float | None = None,
            kill_on: Callable[[list], bool] | None = None) -> Run:
    """The Run of forked child `pid`: its frames from `r`, its stderr from `er` (both closed
    here), its wait status. SIGKILLs it `kill_after` seconds from now, or once
    `kill_on(messages)` is true, or when `timeout` passes (a kill then gets `timeout` more)."""
    run = Run()
    data, err = bytearray(), bytearray()
    started = time.monotonic()
    deadline = started + (kill_after if kill_after is not None else timeout)
    open_fds = {r, er}
    killed = False
    while open_fds:
        remaining = deadline - time.monotonic()
        if remaining <= 0 and not killed:
            os.kill(pid, signal.SIGKILL)
            killed = True
            deadline = time.monotonic() + timeout
            continue
        ready, _, _ = select.select(list(open_fds), [], [], max(0.0, remaining))
        for fd in ready:
            chunk = os.read(fd, 1 << 16)
            if not chunk:
                open_fds.discard(fd)
                os.close(fd)
            elif fd == r:
                data += chunk
                if kill_on is not None and not killed and kill_on(frames(bytes(data))):
                    os.kill(pid, signal.SIGKILL)
                    killed = True
            else:
                err += chunk
    _, run.status = os.waitpid(pid, 0)
    run.messages = frames(bytes(data))
    run.stderr = bytes(err)
    return run


def popen_child(argv: list[str], strace: str | None = None, inject: str | None = None, preexec=None):
    """Start `python tests/crash/child.py ARGV... FD` (under strace with `-e inject=INJECT`
    when given; the traced program is sys.executable itself, never a wrapper). Returns
    (Popen, read end of the report pipe); finish it with `finish_child`."""
    import subprocess

    r, w = os.pipe()
    cmd = [sys.executable, str(ROOT / "tests" / "crash" / "child.py"), argv[0], argv[1], str(w), *argv[2:]]
    if strace is not None:
        cmd = [*injecting(strace, inject), *cmd]
    proc = subprocess.Popen(cmd, pass_fds=(w,), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            preexec_fn=preexec)
    os.close(w)
    return proc, r


def finish_child(proc, r, timeout: float = 180) -> Run:
    run = Run()
    data = bytearray()
    while chunk := os.read(r, 1 << 16):
        data += chunk
    os.close(r)
    run.stderr = proc.stderr.read()
    proc.stderr.close()
    run.status = proc.wait(timeout)
    run.messages = frames(bytes(data))
    return run


def run_child(argv: list[str], strace: str | None = None, inject: str | None = None, preexec=None) -> Run:
    return finish_child(*popen_child(argv, strace, inject, preexec))
