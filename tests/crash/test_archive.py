"""Row 16: the tiered log. Kills while compaction seals archive segments, damaged and
hostile segments, and a reader in another process reading across the archive while the
writer compacts.

- A writer (a fresh interpreter, eventlog only) appends sync entries and compacts every
  4th append into several small segments; strace kills it at its Nth fsync / rename /
  fdatasync / pwrite64, N = 1, 2, ... until a run gets through. After every kill a
  readonly reader checks that every acknowledged entry is readable with its payload and
  term, that the log reads as one contiguous run from index 1 (nothing was deleted,
  nothing read twice) and that verify() is sound; the crash states where a segment
  overlaps entries still in LMDB must occur, and the next writer removes them.
- Damage: a segment bit-flipped, cut, emptied, replaced by garbage, a symlink, a FIFO,
  a directory, a sparse 64 GiB file, a header that lies about its size (with a valid
  checksum: a decompression bomb, a body shorter than declared, a size past the limit)
  or missing: reads raise DamagedSegmentError naming the file and range, verify reports
  a Damage at its first index, other segments stay readable; never a hang or signal,
  and the bomb allocates a bounded amount.
"""

from __future__ import annotations

import os
import random
import struct
import subprocess
import sys
import tracemalloc
from pathlib import Path

import pytest
import xxhash
import zstandard

from eventlog import DamagedSegmentError, EventLog, LogError, reader as reader_module, segment
from eventlog import lmdbenv
from eventlog.archive import list_segments
from tests.crash.checker import run_forked, send
from tests.crash.checker.traced import TracedChild

pytestmark = [pytest.mark.crash, pytest.mark.fault_archive]

ROOT = Path(__file__).resolve().parents[2]

# The writer child (forked from the test; under strace attached to it when faults are
# injected, checker/traced.py): sync appends, a compaction every `every` appends through
# two entries before the last, segments of at most `target` body bytes (so one compaction
# seals several). It reports ("ack", TERM, INDEX) once append returned (sync: durable).
def archive_writer(path, count, every, target, mode, out_fd):
    segment.TARGET_RAW = target  # the child's own copy of the module
    with EventLog.open(path, durability=mode) as log:
        for _ in range(count):
            i = log.append("step", payload(log.last_index + 1))
            if mode != "sync":
                log.wait_durable(i)
            send(out_fd, ("ack", log.term, i))
            if i % every == 0:
                log.compact_through(i - 2)
    send(out_fd, ("done",))


def payload(i: int) -> dict:
    return {"i": i, "pad": bytes([i % 251]) * (150 + i * 37 % 300)}


def run_writer(path, strace=None, inject=None, count=12, every=4, target=800, mode="sync", timeout=60):
    """(acks as (term, index), finished, wait status, stderr) of one writer child."""
    args = (str(path), count, every, target, mode)
    if strace is not None:
        run = TracedChild(archive_writer, *args, strace=strace, inject=inject).finish(timeout)
    else:
        run = run_forked(archive_writer, *args, timeout=timeout)
    acks = [(term, index) for _, term, index in (m for m in run.messages if m[0] == "ack")]
    return acks, run.done, run.status, run.stderr.decode(errors="replace")[-2000:]


def check_log(path: Path, acks: dict[int, int]) -> dict:
    """Every acknowledged entry readable with its term and payload, one contiguous run from
    1, verify sound. Returns what the crash left: overlapping segments, temp files."""
    try:
        log = EventLog.open(path, readonly=True)
    except LogError:
        assert not acks, "the log does not open although entries were acknowledged"
        return {"overlap": False, "temp": False}
    with log:
        report = log.verify()
        assert report.ok, str(report)
        entries = list(log.entries())
        indexes = [e.index for e in entries]
        assert log.first_index == 1, "compaction with the default archive must never delete"
        assert indexes == list(range(1, log.last_index + 1)), "a gap or a double read across archive + LMDB"
        for entry in entries:
            assert entry.payload == payload(entry.index), f"entry {entry.index} differs from what was appended"
        lost = [i for i, term in acks.items() if i > log.last_index or entries[i - 1].term != term]
        assert not lost, f"acknowledged entries lost: {lost}"
        assert report.checked == log.last_index
        live_first = log.live_first_index
    archive = path / "archive"
    names = os.listdir(archive) if archive.is_dir() else []
    return {"overlap": any(n.first >= live_first for n in list_segments(archive)),
            "temp": any(name.endswith(segment.TEMP_SUFFIX) for name in names)}


@pytest.fixture(scope="module")
def base_log(tmp_path_factory):
    """A log of 10 entries, 1..8 sealed: each swept run starts from a copy (the same calls every run)."""
    path = tmp_path_factory.mktemp("sweep") / "base"
    acks, finished, status, stderr = run_writer(path, count=10, every=10)
    assert finished, stderr
    return path, dict((i, t) for t, i in acks)


@pytest.mark.timeout(280)
@pytest.mark.parametrize("syscall, stride", [("fsync", 1), ("rename", 1), ("fdatasync", 1), ("pwrite64", 2)])
def test_writer_killed_at_every_sync_point_of_compaction_loses_nothing(strace, tmp_path, base_log, syscall, stride):
    import shutil

    base, base_acks = base_log
    n, runs, killed, overlaps, temps, checked = 1, 0, 0, 0, 0, 0
    while True:
        assert n < 120, f"{syscall}: the run never completed"
        path = tmp_path / f"{syscall}-{n}"
        shutil.copytree(base, path)
        got, finished, status, stderr = run_writer(path, strace, f"{syscall}:signal=KILL:when={n}")
        runs += 1
        acks = {**base_acks, **{i: t for t, i in got}}
        seen = check_log(path, acks)
        checked += len(acks)
        overlaps += seen["overlap"]
        temps += seen["temp"]
        if finished:
            assert not seen["overlap"] and not seen["temp"], "a run that completed left a leftover behind"
            break
        assert status != 0 and "Traceback" not in stderr, (status, stderr)
        # The next writer removes what the crash left, and the log still compacts.
        got, finished, status, stderr = run_writer(path, count=4, every=2)
        assert finished, stderr
        after = check_log(path, {**acks, **{i: t for t, i in got}})
        assert not after["overlap"] and not after["temp"], "the next writer did not clean up"
        killed += 1
        n += stride
    print(f"row 16 kill at {syscall}: {runs} runs, {killed} killed, {checked} acknowledged entries checked present, "
          f"{overlaps} crash states with a segment overlapping LMDB, {temps} with a temp file")
    assert killed >= 3, f"{syscall}: fewer than 3 calls were killed"
    assert overlaps >= 1, f"{syscall}: no kill left a sealed segment whose entries were still live: the window was missed"


# ------------------------------------------------------------------ damage


@pytest.fixture(scope="module")
def master(tmp_path_factory):
    """60 entries, 1..50 sealed in 1 KiB segments (several), 51..60 live."""
    path = tmp_path_factory.mktemp("archive") / "log"
    acks, finished, status, stderr = run_writer(path, count=60, every=1000)
    assert finished, stderr
    saved = segment.TARGET_RAW
    segment.TARGET_RAW = 1024
    try:
        with EventLog.open(path) as log:
            log.compact_through(50)
    finally:
        segment.TARGET_RAW = saved
    names = list_segments(path / "archive")
    assert len(names) >= 4
    return path, names


def _rewrite(data: bytes, **fields) -> bytes:
    """A segment with header fields replaced and a VALID checksum: a header that lies on purpose."""
    names = ("magic", "version", "flags", "codec", "first", "last", "prev_term", "prev_checksum",
             "last_time", "raw_size", "stored_size", "checksum")
    values = dict(zip(names, segment.HEADER.unpack_from(data)))
    body = fields.pop("body", data[segment.HEADER_SIZE:])
    values.update(fields, stored_size=len(body))
    head = segment.HEADER.pack(*[values[n] for n in names])[:segment.CHECKED]
    hasher = xxhash.xxh3_64(head)
    hasher.update(body)
    return head + struct.pack(">Q", hasher.intdigest()) + body


def _flip(offset):
    def damage(file: Path):
        data = bytearray(file.read_bytes())
        data[offset] ^= 0x10
        file.write_bytes(bytes(data))
    return damage


def _replace(make):
    def damage(file: Path):
        data = file.read_bytes()
        file.unlink()
        make(file, data)
    return damage


DAMAGE = {
    "bit flip in the body": _flip(-1),
    "bit flip in the header's range": _flip(23),
    "bit flip in the checksum": _flip(75),
    "cut in half": _replace(lambda f, d: f.write_bytes(d[: len(d) // 2])),
    "cut inside the header": _replace(lambda f, d: f.write_bytes(d[:40])),
    "empty": _replace(lambda f, d: f.write_bytes(b"")),
    "garbage": _replace(lambda f, d: f.write_bytes(random.Random(7).randbytes(len(d)))),
    "symlink to a good copy": _replace(lambda f, d: (f.with_name("copy").write_bytes(d),
                                                     f.symlink_to(f.with_name("copy")))),
    "FIFO": _replace(lambda f, d: os.mkfifo(f)),
    "directory": _replace(lambda f, d: f.mkdir()),
    "sparse 64 GiB file": _replace(lambda f, d: os.truncate(f.open("wb").name, 64 * 2**30)),
    "body shorter than declared": _replace(lambda f, d: f.write_bytes(
        _rewrite(d, raw_size=segment.HEADER.unpack_from(d)[9] + 1000))),
    "body size past the limit": _replace(lambda f, d: f.write_bytes(_rewrite(d, raw_size=2**40))),
    # 96 MiB of zeros in ~3 KiB: small enough to pass the stored-size bound, so the
    # decompression itself must stop at the declared size
    "decompression bomb": _replace(lambda f, d: f.write_bytes(_rewrite(
        d, body=zstandard.ZstdCompressor(level=19).compress(bytes(96 * 2**20))))),
    "entries that do not fill the body": _replace(lambda f, d: f.write_bytes(_rewrite(
        d, body=zstandard.ZstdCompressor().compress(bytes(segment.HEADER.unpack_from(d)[9]))))),
    "missing": _replace(lambda f, d: None),
}


@pytest.mark.timeout(120)
@pytest.mark.parametrize("kind", list(DAMAGE))
def test_a_damaged_segment_is_reported_naming_the_file_and_range(master, tmp_path, kind):
    import shutil

    source, names = master
    path = tmp_path / "log"
    shutil.copytree(source, path, ignore=shutil.ignore_patterns("lock.mdb", "*.lock"))
    victim = names[len(names) // 2]
    file = path / "archive" / victim.name
    DAMAGE[kind](file)
    where = str(path / "archive") if kind == "missing" else str(file)
    span = f"{victim.first}..{victim.last}" if kind != "missing" else ""
    tracemalloc.start()
    try:
        with EventLog.open(path, readonly=True) as log:
            with pytest.raises(DamagedSegmentError) as raised:
                log.entry(victim.first)
            assert where in str(raised.value) and span in str(raised.value), str(raised.value)
            assert raised.value.index == victim.first
            with pytest.raises(DamagedSegmentError, match=str(victim.last if kind != "missing" else victim.first)):
                list(log.entries())
            with pytest.raises(DamagedSegmentError):
                log.term_at(victim.last)
            # the rest of the log stays readable
            assert log.entry(1).payload == payload(1) and log.entry(60).payload == payload(60)
            assert log.entry(victim.last + 1).payload == payload(victim.last + 1)
            report = log.verify()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert not report.ok
    assert report.damage[0].index == victim.first, report.damage
    assert where in report.damage[0].reason and span in report.damage[0].reason, report.damage[0].reason
    assert len(report.damage) == 1, report.damage  # the entries after it still chain from their own seeds
    assert report.checked == 60 - (victim.last - victim.first + 1)
    assert peak < 48 * 2**20, f"reading the damaged segment allocated {peak} bytes"


@pytest.mark.timeout(60)
def test_a_self_consistent_segment_of_another_log_breaks_the_chain(master, tmp_path, monkeypatch):
    """A segment swapped for another log's (same range, valid checksum, its own entries
    chained among themselves) is caught where it meets the entries before it (verify) and,
    by reads, when it is loaded: DamagedSegmentError naming it, before any of its entries
    is handed out (tests/crash/test_forked_history.py covers forks sharing a prefix)."""
    import shutil

    from eventlog import merging

    monkeypatch.setattr(merging, "MERGE_FANOUT", 10**9)  # the other log keeps one file per compaction

    source, names = master
    path, other = tmp_path / "log", tmp_path / "other"
    shutil.copytree(source, path, ignore=shutil.ignore_patterns("lock.mdb", "*.lock"))
    with EventLog.open(other) as log:  # same ranges, different entries (another term and time)
        log.append("first", 0)
        log.append_many([("step", payload(i)) for i in range(2, 61)])
        for name in names:
            saved = segment.TARGET_RAW
            segment.TARGET_RAW = 10**9
            try:
                log.compact_through(name.last)
            finally:
                segment.TARGET_RAW = saved
    for victim in (names[0], names[len(names) // 2]):
        copy = tmp_path / f"log-{victim.first}"
        shutil.copytree(path, copy)
        shutil.copy(other / "archive" / victim.name, copy / "archive" / victim.name)
        # A foreign first segment chains from 0 like ours: it shows where the next one starts.
        caught = victim.first if victim.first > 1 else victim.last + 1
        with EventLog.open(copy, readonly=True) as log:
            # the first segment chains from 0 like ours, so its end gives it away
            index = victim.first if victim.first > 1 else victim.last
            with pytest.raises(DamagedSegmentError, match=f"log entry {index} is corrupt: archive segment") as raised:
                list(log.entries())
            assert raised.value.path == str(copy / "archive" / victim.name)
            with pytest.raises(DamagedSegmentError, match=victim.name):
                log.entry(victim.last)
            report = log.verify()
        assert [d.index for d in report.damage][:1] == [caught], report.damage


# ------------------------------------------------------------------ a reader across the archive, live

LOOPER = r"""
import sys
sys.path.insert(0, sys.argv[1])
from eventlog import EventLog, segment
segment.TARGET_RAW = 2048
path, rounds = sys.argv[2], int(sys.argv[3])

def payload(i):
    return {"i": i, "pad": bytes([i % 251]) * (150 + i * 37 % 300)}

with EventLog.open(path, durability="group") as log:
    log.append("step", payload(1))
    log.flush()
    print("ready", flush=True)
    for r in range(rounds):
        start = log.last_index + 1
        log.append_many([("step", payload(i)) for i in range(start, start + 10)])
        if r % 3 == 0:  # a live suffix rewritten: the same payloads, new checksums
            log.truncate_after(log.last_index - 4)
        log.compact_through(log.last_index - 3)
    last = log.last_index
print("done", last, flush=True)
"""


@pytest.mark.timeout(200)
def test_a_reader_in_another_process_never_sees_a_gap_while_the_writer_compacts(tmp_path, monkeypatch):
    """The writer appends, truncates a live suffix every third round and compacts into the
    archive; this process reads every entry and verifies, again and again."""
    # Small read batches: one pass spans many read transactions, so compactions land inside passes.
    monkeypatch.setattr(reader_module, "READ_BATCH", 7)
    path = tmp_path / "log"
    writer = subprocess.Popen([sys.executable, "-c", LOOPER, str(ROOT), str(path), "200"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert writer.stdout.readline().strip() == "ready", writer.stderr.read()
        passes = moved = verified = 0
        with EventLog.open(path, readonly=True) as reader:
            while writer.poll() is None or passes < 3:
                live_before = reader.live_first_index
                seen = [e.index for e in reader.entries() if e.payload == payload(e.index)]
                assert reader.first_index == 1
                assert seen == list(range(1, len(seen) + 1)), "a gap or a wrong entry across archive + LMDB"
                moved += reader.live_first_index != live_before
                passes += 1
                if passes % 4 == 0:
                    report = reader.verify()
                    assert report.ok, str(report)
                    verified += 1
        out, err = writer.communicate(timeout=120)
        assert writer.returncode == 0 and out.startswith("done"), err
    finally:
        if writer.poll() is None:
            writer.kill()
            writer.wait()
    print(f"row 16 live reader: {passes} full passes ({verified} verified) over up to {out.split()[1]} entries, "
          f"{moved} passes during which a compaction moved entries into the archive")
    assert moved >= 1, "the writer never compacted during a read pass: this run tested nothing"


# ------------------------------------------------------------------ a reader without a lock file

HOLDER = r"""
import sys
sys.path.insert(0, sys.argv[1])
from eventlog import EventLog
with EventLog.open(sys.argv[2]) as log:
    log.append("step", {"i": log.last_index + 1})
    print("ready", flush=True)
    sys.stdin.read()  # until the test closes our stdin
"""


@pytest.mark.timeout(60)
def test_a_reader_without_a_lock_file_reads_only_while_no_writer_is_live(tmp_path, monkeypatch):
    """A reader that may not write lock.mdb (issue 19 item 6) opens LMDB without a lock
    file, so a writer cannot see it and may reuse the pages it reads, and LMDB may then
    abort the process on an assertion (seen when such a reader ran beside the writer of
    the test above). So it reads only while no writer is live, and otherwise raises a
    LogError naming the writer's pid, at open and at any later read."""
    monkeypatch.setattr(lmdbenv, "can_lock", lambda path: False)
    path = tmp_path / "log"
    with EventLog.open(path) as log:
        log.append_many([("step", {"i": i}) for i in range(1, 11)])
    (path / "lock.mdb").unlink()

    def start_writer():
        child = subprocess.Popen([sys.executable, "-c", HOLDER, str(ROOT), str(path)], stdin=subprocess.PIPE,
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        assert child.stdout.readline().strip() == "ready", child.stderr.read()
        return child

    def stop(child):
        child.stdin.close()
        assert child.wait(timeout=30) == 0, child.stderr.read()

    with EventLog.open(path, readonly=True) as reader:  # no writer: it reads
        assert [e.payload["i"] for e in reader.entries()] == list(range(1, 11))
        writer = start_writer()
        try:
            with pytest.raises(LogError, match=rf"a writer \(pid {writer.pid}\) is live on this log.*lock\.mdb"):
                list(reader.entries())
            with pytest.raises(LogError, match="is live on this log"):
                EventLog.open(tmp_path / "log", readonly=True).close()  # the same environment, shared
        finally:
            stop(writer)
        assert [e.payload["i"] for e in reader.entries()] == list(range(1, 12))  # the writer has stopped
