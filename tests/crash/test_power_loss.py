"""Row 11: power loss, emulated with crash images (as ALICE does), for every durability mode.

A writer runs under strace, which records every write to data.mdb with its bytes
(`-xx -s`), every fdatasync/fsync, O_DSYNC descriptors, and the writer's own reports of
`durable_index` (lines it prints to stdout, so they sit in the same timeline). Replaying
the writes on a copy of the file taken before the run gives the file at every sync
point. A power loss between two sync points leaves the file at the first plus any subset
of the writes made in between (the page cache writes back in any order), split into 4 KiB
pieces. For every such image: every entry at or below the durable index reported before
the crash must read back, and verify() must never call an image with a missing durable
entry sound. Also: the log directory and its parent are fsynced after data.mdb is created.
"""

from __future__ import annotations

import itertools
import os
import random
import re
import shutil
import subprocess
import sys
import textwrap

import pytest

from eventlog import EventLog

from .checker import run_forked, send

pytestmark = [pytest.mark.crash, pytest.mark.fault_power_loss]

SEEDED = 3  # entries written (durably) before the traced run
APPENDS = 10
PIECE = 4096
ALL_SUBSETS_UP_TO = 6  # pieces in a window; above it, RANDOM_SUBSETS random subsets
RANDOM_SUBSETS = 40

WRITER = textwrap.dedent("""
    import sys
    from eventlog import EventLog
    path, mode = sys.argv[1], sys.argv[2]
    with EventLog.open(path, durability=mode, os_sync_interval=3600, group_window=0.001) as log:
        for n in range(%d):
            i = log.append("step", {"n": n, "pad": b"p" * (1500 * (n %% 4))})
            if n %% 3 == 2:
                log.flush()
            sys.stdout.write("DURABLE %%d\\n" %% log.durable_index)
            sys.stdout.flush()
""" % APPENDS)

_LINE = re.compile(r"^\d+\s+(\w+)\((.*)$")
_FD = re.compile(r"^(\d+)<([^>]*)>")
_HEX = re.compile(r'"((?:\\x[0-9a-f]{2})*)"')


def _bytes(text):
    return bytes.fromhex(text.replace("\\x", ""))


def parse_trace(trace, data_file):
    """Events in trace order: ("write", offset, bytes), ("sync",), ("claim", durable index)."""
    events, position, dsync, stdout = [], {}, set(), b""
    for line in trace.splitlines():
        found = _LINE.match(line)
        if not found:
            continue  # "<... resumed>" halves and signals: the entry half carried the arguments
        call, args = found.groups()
        if call == "openat":
            named = [_bytes(h).decode(errors="replace") for h in _HEX.findall(args)]
            fd = _FD.match(args.rsplit("= ", 1)[-1]) if "= " in args else None
            if data_file in named and fd and re.search(r"O_DSYNC|O_SYNC", args):
                dsync.add(fd.group(1))
            continue
        fd = _FD.match(args)
        if fd is None:
            continue
        number, path = fd.group(1), _bytes(fd.group(2)).decode(errors="replace")
        if call == "write" and number == "1":
            stdout += b"".join(_bytes(h) for h in _HEX.findall(args))
            while b"\n" in stdout:
                text, stdout = stdout.split(b"\n", 1)
                if text.startswith(b"DURABLE "):
                    events.append(("claim", int(text.split()[1])))
            continue
        if path != data_file:
            continue
        if call in ("fdatasync", "fsync"):
            events.append(("sync",))
        elif call == "lseek":
            position[number] = int(args.split(",")[1])
        elif call in ("pwrite64", "pwritev", "writev"):
            data = b"".join(_bytes(h) for h in _HEX.findall(args))
            if call == "pwrite64":
                offset = int(args.split(", ")[-1].split()[0].rstrip(")"))
            elif call == "pwritev":
                offset = int(args.rsplit(", ", 1)[-1].split()[0].rstrip(")"))
            else:
                offset = position.get(number, 0)
                position[number] = offset + len(data)
            events.append(("write", offset, data))
            if number in dsync:
                events.append(("sync",))
    return events


def _apply(image: bytearray, offset, data):
    if len(image) < offset + len(data):
        image.extend(bytes(offset + len(data) - len(image)))
    image[offset:offset + len(data)] = data


def crash_images(base: bytes, events, rng):
    """(image bytes, durable index claimed before the crash) for every window between syncs."""
    image, window, claim = bytearray(base), [], SEEDED
    for event in events + [("sync",)]:
        if event[0] == "claim":
            claim = max(claim, event[1])
        elif event[0] == "write":
            _, offset, data = event
            window += [(offset + at, data[at:at + PIECE]) for at in range(0, len(data), PIECE)]
        else:
            n = len(window)
            if n <= ALL_SUBSETS_UP_TO:
                subsets = itertools.product((False, True), repeat=n)
            else:
                subsets = [[True] * n, [False] * n] + [[rng.random() < 0.5 for _ in range(n)]
                                                       for _ in range(RANDOM_SUBSETS)]
            for keep in subsets:
                crashed = bytearray(image)
                for kept, (offset, data) in zip(keep, window):
                    if kept:
                        _apply(crashed, offset, data)
                yield bytes(crashed), claim
            for offset, data in window:  # the sync point: everything written is on disk
                _apply(image, offset, data)
            window = []


def check_image(path, out_fd):
    """In a child: what survives in the image (entries, or the error) and the verify verdict."""
    try:
        with EventLog.open(path, readonly=True) as log:
            report = log.verify()
            try:
                found = [[e.index, e.op, e.payload["n"] if e.op == "step" else None] for e in log.entries()]
            except Exception as exc:  # noqa: BLE001 - reported, judged by the parent
                found = f"{type(exc).__name__}: {exc}"
            send(out_fd, ["ok", found, report.ok, str(report)])
    except Exception as exc:  # noqa: BLE001
        send(out_fd, ["error", f"{type(exc).__name__}: {exc}"])


@pytest.mark.timeout(280)
@pytest.mark.parametrize("mode", ["sync", "group", "os"])
def test_crash_images_keep_every_durable_entry(strace, tmp_path, mode):
    path = tmp_path / "log"
    with EventLog.open(path) as log:
        log.append_many([("seed", None)] * SEEDED)
    base = (path / "data.mdb").read_bytes()
    trace_file = tmp_path / "trace"
    subprocess.run([strace, "-f", "-qq", "--seccomp-bpf", "-y", "-xx", "-s", "1048576", "-o", str(trace_file),
                    "-e", "trace=openat,lseek,pwrite64,pwritev,writev,write,fdatasync,fsync",
                    sys.executable, "-c", WRITER, str(path), mode], check=True, timeout=120, capture_output=True)
    events = parse_trace(trace_file.read_text(), str((path / "data.mdb").resolve()))
    assert sum(e[0] == "claim" for e in events) == APPENDS, "the trace lost the writer's reports"
    assert sum(e[0] == "sync" for e in events) >= 3 and any(e[0] == "write" for e in events)
    rng = random.Random(11)
    images = lost = 0
    for crashed, claim in crash_images(base, events, rng):
        images += 1
        image = tmp_path / "image"
        shutil.rmtree(image, ignore_errors=True)
        image.mkdir()
        (image / "data.mdb").write_bytes(crashed)
        run = run_forked(check_image, image, timeout=60)
        assert run.status == 0 and run.messages, f"image {images}: the reader died: {run.stderr_tail()}"
        outcome = run.messages[0]
        where = f"{mode} image {images} (durable index {claim} claimed before the crash)"
        assert outcome[0] == "ok", f"{where}: {outcome[1]}"
        _, found, sound, report = outcome
        assert not isinstance(found, str), f"{where}: durable entries unreadable: {found}"
        present = {index: (op, n) for index, op, n in found}
        missing = [i for i in range(1, claim + 1) if i not in present]
        if missing:
            lost += 1
            assert not sound, f"{where}: verify calls a log missing durable entries {missing} sound"
        assert not missing, f"{where}: durable entries {missing} lost\n{report}"
        for i in range(SEEDED + 1, claim + 1):
            assert present[i] == ("step", i - SEEDED - 1), f"{where}: entry {i} is not what was appended"
    print(f"row 11 crash images ({mode}): {images} images over {sum(e[0] == 'sync' for e in events)} sync points, "
          f"{APPENDS} appends; every durable entry survived in all")
    assert images > 20


FSYNC_WRITER = "import sys; from eventlog import EventLog; EventLog.open(sys.argv[1]).close()"


@pytest.mark.timeout(60)
def test_new_log_directory_and_parents_are_fsynced(strace, tmp_path):
    """Creating a log (and its missing parent) fsyncs each directory that gained a name,
    after data.mdb exists: strace shows fsync on the log directory, its parent and the
    parent's parent."""
    path = tmp_path / "new" / "log"
    trace_file = tmp_path / "trace"
    subprocess.run([strace, "-f", "-qq", "--seccomp-bpf", "-y", "-o", str(trace_file), "-e", "trace=openat,fsync,fdatasync",
                    sys.executable, "-c", FSYNC_WRITER, str(path)], check=True, timeout=60, capture_output=True)
    lines = trace_file.read_text().splitlines()
    created = next(n for n, line in enumerate(lines) if "data.mdb" in line and "O_CREAT" in line)
    synced = {m.group(1) for line in lines[created:] if (m := re.search(r"fsync\(\d+<([^>]*)>", line))}
    for directory in (path, path.parent, path.parent.parent):
        assert str(directory.resolve()) in synced, f"{directory} never fsynced after data.mdb was created: {synced}"
