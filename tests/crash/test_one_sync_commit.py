"""Row 11, the one-sync commit: what `group` and `os` may and may not acknowledge.

Group and os mode commit with one fdatasync (LMDB's MDB_NOMETASYNC): the meta page
that makes a commit current reaches the disk only with the next sync. These tests pin
both halves of that contract with the crash images of tests/crash/test_power_loss.py:

- the images can see the lag: a writer that acknowledged each commit as soon as it
  returned (what a broken `durable_index` would claim) loses an acknowledged entry in
  some image, so the row-11 test would catch such a promise;
- the saving is real: under steady appends a group commit costs one fdatasync (no
  synchronous meta write), where sync mode pays two.
"""

from __future__ import annotations

import random
import shutil
import subprocess
import sys
import textwrap

import pytest

from eventlog import EventLog

from .checker import run_forked
from .test_power_loss import SEEDED, check_image, crash_images, parse_trace

pytestmark = [pytest.mark.crash, pytest.mark.fault_power_loss]

APPENDS = 8

# os mode: append returns after its commit; claiming last_index there is the broken promise.
EAGER_WRITER = textwrap.dedent("""
    import sys
    from eventlog import EventLog
    with EventLog.open(sys.argv[1], durability="os", os_sync_interval=3600) as log:
        for n in range(%d):
            log.append("step", {"n": n, "pad": b"p" * 1500})
            sys.stdout.write("DURABLE %%d\\n" %% log.last_index)
            sys.stdout.flush()
""" % APPENDS)

STEADY = 80
BATCH = 8
STEADY_WRITER = textwrap.dedent("""
    import sys
    from eventlog import EventLog
    from eventlog.lmdbfile import last_txnid
    path, mode = sys.argv[1], sys.argv[2]
    # A 30 s window: commits happen only because BATCH entries wait (never by the clock).
    with EventLog.open(path, durability=mode, group_window=30.0, group_max_batch=%d) as log:
        before = last_txnid(path)
        sys.stdout.write("DURABLE 0\\n"); sys.stdout.flush()
        for n in range(%d):
            log.append("step", {"n": n})
        log.flush()
        sys.stdout.write("DURABLE 0\\n"); sys.stdout.flush()
        sys.stdout.write("TXNS %%d %%d %%d\\n" %% (before, last_txnid(path), log.durable_index))
""" % (BATCH, STEADY))


def _trace(strace, tmp_path, script, *args):
    trace_file = tmp_path / "trace"
    done = subprocess.run([strace, "-f", "-qq", "--seccomp-bpf", "-y", "-xx", "-s", "1048576", "-o", str(trace_file),
                           "-e", "trace=openat,lseek,pwrite64,pwritev,writev,write,fdatasync,fsync",
                           sys.executable, "-c", script, *map(str, args)],
                          check=True, timeout=120, capture_output=True, text=True)
    return trace_file.read_text(), done.stdout


@pytest.mark.timeout(240)
def test_acknowledging_a_commit_at_its_return_loses_entries(strace, tmp_path):
    """The control for row 11: with one sync per commit, an entry acknowledged when its
    commit returned (before the next sync) is missing from some crash image."""
    path = tmp_path / "log"
    with EventLog.open(path) as log:
        log.append_many([("seed", None)] * SEEDED)
    base = (path / "data.mdb").read_bytes()
    trace, _ = _trace(strace, tmp_path, EAGER_WRITER, path)
    events = parse_trace(trace, str((path / "data.mdb").resolve()))
    assert sum(e[0] == "claim" for e in events) == APPENDS, "the trace lost the writer's reports"
    lost = []
    for number, (crashed, claim) in enumerate(crash_images(base, events, random.Random(11))):
        image = tmp_path / "image"
        shutil.rmtree(image, ignore_errors=True)
        image.mkdir()
        (image / "data.mdb").write_bytes(crashed)
        run = run_forked(check_image, image, timeout=60)
        assert run.status == 0 and run.messages, f"image {number}: the reader died: {run.stderr_tail()}"
        outcome = run.messages[0]
        assert outcome[0] == "ok", f"image {number}: {outcome[1]}"
        present = {index for index, _, _ in outcome[1]}
        if any(i not in present for i in range(1, claim + 1)):
            lost.append(number)  # a consistent shorter log (verify calls it sound): the commit was undone
    assert lost, "no crash image lost an entry acknowledged at its commit: the images cannot see the meta lag"


@pytest.mark.timeout(120)
@pytest.mark.parametrize("mode, syncs_per_commit", [("group", 1), ("sync", 2)])
def test_steady_group_commits_pay_one_sync_each(strace, tmp_path, mode, syncs_per_commit):
    """From the first of STEADY appends to the end of the flush() after them, every LMDB
    commit costs exactly `syncs_per_commit` syncs of data.mdb (fdatasync, or a write to an
    O_DSYNC descriptor); group adds one trailing sync for the last batch, and flush()
    makes everything durable."""
    path = tmp_path / "log"
    trace, stdout = _trace(strace, tmp_path, STEADY_WRITER, path, mode)
    events = parse_trace(trace, str((path / "data.mdb").resolve()))
    marks = [n for n, e in enumerate(events) if e[0] == "claim"]
    assert len(marks) == 2, "the trace lost the writer's markers"
    syncs = sum(e[0] == "sync" for e in events[marks[0]:marks[1]])
    before, after, durable = map(int, stdout.split("TXNS ")[1].split())
    commits = after - before
    assert commits >= STEADY // BATCH if mode == "group" else commits == STEADY
    trailing = 1 if mode == "group" else 0
    assert syncs == commits * syncs_per_commit + trailing, f"{syncs} syncs for {commits} commits"
    assert durable == STEADY
