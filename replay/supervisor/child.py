"""The job's process group: start it, forward signals to it, dump its stacks, stop it."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

from .link import DUMP_SIGNAL


class Child:
    """CMD running in its own process group (its own session), stdout and stderr inherited.

    Used from the supervisor's main thread only; signal handlers call `signal_group`."""

    def __init__(self, command: list[str], env: dict[str, str]):
        self.process = subprocess.Popen(command, env=env, start_new_session=True)
        self.pid = self.process.pid

    def poll(self) -> int | None:
        return self.process.poll()

    def signal_group(self, signum: int) -> None:
        """Send `signum` to every process of the job (gone already: nothing to do)."""
        try:
            os.killpg(self.pid, signum)
        except (ProcessLookupError, PermissionError):
            pass

    def wait(self, timeout: float) -> int | None:
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            return None

    def stop(self, grace: float) -> int:
        """SIGTERM to the group, `grace` seconds, then SIGKILL; the exit status (negative: a signal)."""
        self.signal_group(signal.SIGTERM)
        status = self.wait(grace)
        if status is None:
            self.signal_group(signal.SIGKILL)
            status = self.process.wait()
        self.reap_group()
        return status

    def reap_group(self) -> None:
        """Kill what is left of the group after its leader exited (orphaned DataLoader workers)."""
        self.signal_group(signal.SIGKILL)


def dump_stacks(pid: int, path: Path, wait: float = 5.0) -> bool:
    """Write every thread's stack of process `pid` to `path`: py-spy when installed, else the
    journal's faulthandler on DUMP_SIGNAL (link.py). Whether a dump was written."""
    spy = shutil.which("py-spy")
    if spy is not None:
        try:
            done = subprocess.run([spy, "dump", "--pid", str(pid)], capture_output=True, timeout=30)
            if done.returncode == 0 and done.stdout:
                with open(path, "ab") as out:
                    out.write(done.stdout)
                return True
        except (OSError, subprocess.TimeoutExpired):
            pass
    before = path.stat().st_size if path.exists() else 0
    try:
        os.kill(pid, DUMP_SIGNAL)
    except (ProcessLookupError, PermissionError):
        return False
    deadline, last = time.monotonic() + wait, before
    while time.monotonic() < deadline:  # the handler writes at once; wait until the file stops growing
        time.sleep(0.1)
        size = path.stat().st_size if path.exists() else 0
        if size > before and size == last:
            return True
        last = size
    return last > before


def oom_kills() -> int | None:
    """The cgroup v2 `oom_kill` count of this process's cgroup; None where it cannot be read."""
    try:
        with open("/proc/self/cgroup", encoding="ascii") as f:
            line = next((ln for ln in f if ln.startswith("0::")), None)
        if line is None:
            return None
        events = Path("/sys/fs/cgroup") / line[3:].strip().lstrip("/") / "memory.events"
        for row in events.read_text(encoding="ascii").splitlines():
            key, _, value = row.partition(" ")
            if key == "oom_kill":
                return int(value)
    except (OSError, ValueError, StopIteration):
        return None
    return None
