"""I/O errors injected with strace into a real writer: a failed commit is never
acknowledged, the log is poisoned with a clear error, and reopening recovers exactly
the acknowledged prefix (plus, at most, entries that were never acknowledged)."""

import os
import shutil
import subprocess
import sys
import textwrap

import pytest

from eventlog import EventLog
from tests.crash.checker.tracing import injecting

pytestmark = pytest.mark.crash

STRACE = shutil.which("strace")
if STRACE is None and os.environ.get("CI"):
    raise RuntimeError("strace is required in CI for the fault-injection tests; .ci/run installs it")
needs_strace = pytest.mark.skipif(STRACE is None, reason="strace not installed")

WRITER = textwrap.dedent("""
    import sys
    from eventlog import EventLog, LogError, LogPoisonedError
    path, mode = sys.argv[1], sys.argv[2]
    try:
        log = EventLog.open(path, durability=mode)
    except LogError as exc:
        print("OPEN-FAILED", type(exc).__name__, exc, flush=True)
        sys.exit(0)
    for n in range(25):
        try:
            i = log.append("step", {"n": n, "pad": b"z" * 300})
            log.wait_durable(i)
        except LogError as exc:
            print("FAILED", type(exc).__name__, exc, flush=True)
            try:
                log.append("after", None)
                print("AFTER-OK", flush=True)
            except LogPoisonedError:
                print("AFTER-POISONED", flush=True)
            break
        print("ACK", i, flush=True)
""")


def run_writer(path, mode, inject):
    cmd = [*injecting(STRACE, inject), sys.executable, "-c", WRITER, str(path), mode]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120)


@needs_strace
@pytest.mark.parametrize("mode", ["sync", "group"])
@pytest.mark.parametrize("when", ["4", "6", "9", "6+", "12+"])
@pytest.mark.parametrize("fault", ["fdatasync:error=EIO", "pwrite64:error=ENOSPC", "writev:error=ENOSPC"])
def test_failed_commit_poisons_and_loses_only_unacknowledged(tmp_path, mode, when, fault):
    path = tmp_path / "log"
    with EventLog.open(path, durability=mode) as log:  # a first term, written without faults
        log.append_many([("seed", {"n": -1})] * 3)
    result = run_writer(path, mode, f"{fault}:when={when}")
    lines = result.stdout.splitlines()
    assert result.returncode == 0, result.stderr
    acked = [int(line.split()[1]) for line in lines if line.startswith("ACK")]
    failures = [line for line in lines if line.startswith(("FAILED", "OPEN-FAILED"))]
    assert failures, f"{fault}:when={when} never hit: this run tested nothing"
    assert "LogPoisonedError" in failures[0] or "OPEN-FAILED LogError" in failures[0], failures[0]
    if failures[0].startswith("FAILED"):
        assert "AFTER-POISONED" in lines  # no silent retry after a failed commit
    with EventLog.open(path) as log:
        assert log.verify().ok
        present = {e.index: e.payload for e in log.entries()}
        for index in [1, 2, 3] + acked:
            assert index in present, f"acknowledged entry {index} lost after {fault}:when={when}"
        assert all(present[i]["n"] == i - 4 for i in acked)


@needs_strace
def test_faults_were_actually_injected(tmp_path):
    """Guards the matrix above: an always-failing fdatasync must surface as poison."""
    path = tmp_path / "log"
    EventLog.open(path).close()
    result = run_writer(path, "group", "fdatasync:error=EIO:when=3+")
    assert "LogPoisonedError" in result.stdout or "OPEN-FAILED" in result.stdout, result.stdout


def test_eio_on_a_nearly_full_filesystem_is_reported_as_disk_full(tmp_path, monkeypatch):
    """ext4/xfs report ENOSPC found at writeback as EIO from fsync: with statvfs showing
    the filesystem (nearly) full, the message says the disk is full; otherwise it is EIO."""
    import errno
    from types import SimpleNamespace

    from eventlog.locking import describe_write_failure

    eio = OSError(errno.EIO, os.strerror(errno.EIO))
    monkeypatch.setattr(os, "statvfs", lambda p: SimpleNamespace(f_bavail=10, f_frsize=4096))
    assert describe_write_failure(tmp_path, eio).startswith(f"the disk is full: the filesystem holding {tmp_path} has 40960 bytes free")
    monkeypatch.setattr(os, "statvfs", lambda p: SimpleNamespace(f_bavail=10**9, f_frsize=4096))
    assert describe_write_failure(tmp_path, eio) == str(eio)
