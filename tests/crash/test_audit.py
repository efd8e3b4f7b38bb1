"""Row 15 (audit path, CLI side): damage of any kind is a verdict and exit 1, never a
signal or a traceback; `tail -f` reports rewrites; user data cannot drive the terminal;
`verify` beside a live writer reports only real damage (replay/INVARIANTS.md invariant 4).

CLI runs are forked from this process (torch and the packages are already imported, so a
run costs ~0.1 s instead of several) and call the same `main` as ``python -m replay``,
with stdout/stderr on pipes (or a pty) of their own; `tail -f` runs as a real subprocess.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import random
import select
import shutil
import signal
import struct
import subprocess
import sys
import termios
import time
from pathlib import Path

import lmdb
import pytest
import torch

import eventlog
import replay
import snapshots
from replay import __main__ as replay_main
from tests.cli import tinyjob

pytestmark = [pytest.mark.crash, pytest.mark.fault_audit]

ROOT = Path(__file__).resolve().parents[2]


# --------------------------------------------------------------------------- helpers


class Ran:
    """A finished CLI run: `status` (exit code, or -signal), `out` and `err` as text."""

    def __init__(self, status: int, out: bytes, err: bytes):
        self.status, self.raw_out, self.raw_err = status, out, err
        self.out, self.err = out.decode(errors="replace"), err.decode(errors="replace")

    def __repr__(self) -> str:
        return f"Ran(status={self.status}, out={self.out[-1500:]!r}, err={self.err[-1500:]!r})"


def cli(*argv, tty: bool = False, prepare=None, timeout: float = 60) -> Ran:
    """`replay ARGV` in a forked child; stdout is a 400-column pty when `tty`; the child
    calls `prepare()` first (to inject a fault)."""
    out_r, out_w = _pty() if tty else os.pipe()
    err_r, err_w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: exactly what `python -m replay ARGV` runs, minus the exec
        code = 70
        try:
            os.dup2(out_w, 1)
            os.dup2(err_w, 2)
            if tty:
                # The terminal is the pty and its size is the pty's: a COLUMNS/LINES inherited
                # from the parent describes another terminal (pytest-xdist workers set 80x24).
                os.environ.pop("COLUMNS", None)
                os.environ.pop("LINES", None)
            for fd in (out_r, err_r, out_w, err_w):
                os.close(fd)
            sys.stdout = open(1, "w", buffering=1, encoding="utf-8", closefd=False)
            sys.stderr = open(2, "w", buffering=1, encoding="utf-8", closefd=False)
            logging.getLogger().handlers.clear()  # pytest's capture handler is not the CLI's
            if prepare is not None:
                prepare()
            code = replay_main.main([str(a) for a in argv])
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 2
        except BaseException:  # noqa: BLE001 - a traceback is what the assertions look for
            import traceback

            traceback.print_exc()
        finally:
            try:
                sys.stdout.flush()
                sys.stderr.flush()
            finally:
                os._exit(code)
    os.close(out_w)
    os.close(err_w)
    got = {out_r: bytearray(), err_r: bytearray()}
    open_fds = {out_r, err_r}
    deadline = time.monotonic() + timeout
    while open_fds:
        ready, _, _ = select.select(list(open_fds), [], [], max(0.0, deadline - time.monotonic()))
        if not ready:
            os.kill(pid, signal.SIGKILL)
            break
        for fd in ready:
            try:
                data = os.read(fd, 1 << 16)
            except OSError:  # a pty's master reads EIO once the child's side is closed
                data = b""
            if data:
                got[fd] += data
            else:
                open_fds.discard(fd)
    for fd in got:
        os.close(fd)
    _, status = os.waitpid(pid, 0)
    return Ran(os.waitstatus_to_exitcode(status), bytes(got[out_r]), bytes(got[err_r]))


def _pty() -> tuple[int, int]:
    master, slave = os.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 50, 400, 0, 0))
    return master, slave


def no_traceback(ran: Ran) -> None:
    assert "Traceback" not in ran.out + ran.err, ran


def spawn(fn, *args) -> int:
    """Fork a child running fn(*args); its pid (reap with `reap`)."""
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            fn(*args)
            code = 0
        except BaseException:  # noqa: BLE001 - report, never return into pytest
            import traceback

            traceback.print_exc()
        finally:
            os._exit(code)
    return pid


def reap(pid: int, timeout: float = 60) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status)
        time.sleep(0.02)
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    raise AssertionError(f"child {pid} did not finish in {timeout} s")


def wait_for(predicate, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out waiting"
        time.sleep(0.01)


# --------------------------------------------------- items 21, 10, 9: damage is exit 1


@pytest.fixture(scope="module")
def compacted_master(tmp_path_factory) -> Path:
    """25 entries, compacted through its only retained snapshot (20): every meta record is in use."""
    path = tmp_path_factory.mktemp("meta") / "run"
    tinyjob.write(path, 25, keep_last=1, keep_log=False)
    return path


META_GARBAGE = [
    ("term", b"garbage!!x"), ("first_index", b"garbage!!x"), ("boundary_term", b"garbage!!x"),
    ("boundary_checksum", b"garbage!!x"), ("format", b"garbage!!x"), ("format", b"\xde\xad\xbe\xef"),
    ("term", b""), ("first_index", b"\x00" * 3),
]


def put_meta(log_dir: Path, key: bytes, value: bytes) -> None:
    """Overwrite one record of the log's meta database with raw LMDB (as a disk error would)."""
    env = lmdb.open(str(log_dir), max_dbs=2)
    try:
        meta = env.open_db(b"meta", create=False)
        with env.begin(write=True, db=meta) as txn:
            assert txn.get(key) is not None
            txn.put(key, value)
    finally:
        env.close()


@pytest.mark.timeout(120)
@pytest.mark.parametrize("key,garbage", META_GARBAGE, ids=[f"{k}-{len(g)}B" for k, g in META_GARBAGE])
def test_a_damaged_meta_record_is_damage_exit_1_naming_the_file(compacted_master, tmp_path, key, garbage):
    journal = tmp_path / "run"
    shutil.copytree(compacted_master, journal)
    put_meta(journal / "log", key.encode(), garbage)
    data_file = str(journal / "log" / "data.mdb")
    verify = cli("verify", journal)
    assert verify.status == 1, verify
    no_traceback(verify)
    assert "verdict: DAMAGED" in verify.out and f"log {data_file}: DAMAGED" in verify.out, verify
    for command in ("log", "stats", "show"):
        ran = cli(command, journal, *(["21"] if command == "show" else []))
        assert ran.status == 1, (command, ran)
        no_traceback(ran)
        (line,) = ran.err.splitlines()
        assert line.startswith(f"replay {command}: damaged: ") and data_file in line, (command, ran)
    as_json = cli("verify", journal, "--json")
    records = [json.loads(line) for line in as_json.out.splitlines()]
    assert as_json.status == 1 and records[-1]["check"] == "verdict" and not records[-1]["ok"]
    assert any(r["check"] == "log" and r.get("path") == data_file and not r["ok"] for r in records)


def test_bad_command_line_input_stays_exit_2(compacted_master, tmp_path):
    for ran in (cli("verify", tmp_path / "nowhere"), cli("log", tmp_path), cli("show", compacted_master, 99),
                cli("log", compacted_master, "--from", "x")):
        assert ran.status == 2, ran
        no_traceback(ran)


@pytest.fixture(scope="module")
def long_master(tmp_path_factory) -> Path:
    """300 entries over ~20 LMDB pages, snapshots every 50."""
    path = tmp_path_factory.mktemp("long") / "run"
    tinyjob.write(path, 300, snapshot_every=50)
    return path


# Offsets as fractions of the file: inside the meta pages, the branch/leaf pages, the end.
# (Cuts past the meta pages were SIGBUS before eventlog checked the file's size against
# LMDB's last page; cuts inside them, and flips in the page structure, were tracebacks.)
CUTS = [0.0, 0.03, 0.05, 0.25, 0.5, 0.9]
FLIP_SEEDS = list(range(16))


def _damage_cases():
    for cut in CUTS:
        yield pytest.param("cut", cut, id=f"cut-{cut}")
    for seed in FLIP_SEEDS:
        yield pytest.param("flip", seed, id=f"flip-{seed}")


def damage_file(data_file: Path, kind: str, arg) -> None:
    data = bytearray(data_file.read_bytes())
    if kind == "cut":
        os.truncate(data_file, int(len(data) * arg))
        return
    rnd = random.Random(arg)
    # Half the seeds hit LMDB's two meta pages and the root pages, where one bit breaks structure.
    span = 4 * 4096 if arg % 2 else len(data)
    for _ in range(1 + arg % 3):
        data[rnd.randrange(span)] ^= 1 << rnd.randrange(8)
    data_file.write_bytes(bytes(data))


@pytest.mark.timeout(120)
@pytest.mark.parametrize("kind,arg", list(_damage_cases()))
def test_a_cut_or_bit_flipped_data_file_gets_a_verdict_never_a_signal(long_master, tmp_path, kind, arg):
    journal = tmp_path / "run"
    shutil.copytree(long_master, journal)
    damage_file(journal / "log" / "data.mdb", kind, arg)
    for command in ("verify", "log", "stats"):
        ran = cli(command, journal)
        assert ran.status in (0, 1), (command, ran)  # never a signal, bad input, or internal error
        no_traceback(ran)
        if command == "verify":
            assert ("verdict: sound" in ran.out) == (ran.status == 0), ran
            assert "verdict: " in ran.out, ran
        elif ran.status == 1 and ran.err:
            assert len(ran.err.splitlines()) == 1 and "damaged: " in ran.err, ran


MISKEYED = 163


def test_a_flipped_entry_key_is_reported_not_a_listing_that_ends_early(long_master, tmp_path):
    """A bit flip in an entry's key puts it out of order: a lookup cannot find it (nor, in
    its confused page, a neighbour or two). The listing used to end there with exit 0,
    looking complete; then with one row 'entries 163..300 are missing'. The reader now
    names each entry it cannot find (a gap inside the log's bounds is damage, not its end),
    so the listing reports 163, and the entries the confused page hides, and goes on."""
    journal = tmp_path / "run"
    shutil.copytree(long_master, journal)
    data_file = journal / "log" / "data.mdb"
    data = bytearray(data_file.read_bytes())
    key = struct.pack(">Q", MISKEYED)
    hits = [i for i in range(len(data) - 7) if data[i:i + 8] == key]
    assert hits  # the key is stored big-endian in its leaf page (and in stale copies)
    for at in hits:
        data[at + 5] ^= 0x01  # 163 -> 65699: past the end, out of order in its page
    data_file.write_bytes(bytes(data))
    listing = cli("log", journal, "--json")
    assert listing.status == 1, listing
    rows = [json.loads(line) for line in listing.out.splitlines()]
    assert [r["index"] for r in rows] == list(range(1, 301))  # every index, in order, once
    damaged = [r["index"] for r in rows if "damaged" in r]
    assert damaged[0] == MISKEYED and rows[MISKEYED - 1]["damaged"] == "entry is missing from the log", rows
    assert damaged == list(range(MISKEYED, MISKEYED + len(damaged))) and len(damaged) <= 4, damaged
    assert "cannot be checked" in rows[damaged[-1] - 1]["damaged"]  # the first entry found again
    stats = cli("stats", journal, "--json")
    assert stats.status == 1 and json.loads(stats.out.splitlines()[0])["damaged"] == damaged, stats
    verify = cli("verify", journal)
    assert verify.status == 1 and f"DAMAGED entry {MISKEYED}" in verify.out, verify


# ------------------------------------------------------------ item 19: tail -f rewrites

BOOM_GATE = "boom-gate"
tail_ops = replay.Ops()


@tail_ops.op
def bump(state, *, value):
    state["t"] += value


@tail_ops.op
def slow_boom(state, *, gate):
    """Raises, but only once the test has seen its entry listed (the gate file exists)."""
    state["t"] += 1000.0
    wait_for(lambda: os.path.exists(gate))
    raise RuntimeError("boom")


def _rolling_back_writer(path: str, gate: str, ready: str) -> None:
    with replay.Journal.open(path, state={"t": torch.zeros(3)}, ops=tail_ops, durability="sync",
                             snapshot=replay.Every(entries=1000)) as journal:
        for value in (1.0, 2.0, 3.0):
            journal.apply("bump", value=value)
        Path(ready).touch()
        with pytest.raises(RuntimeError, match="boom"):  # re-raised after the rollback
            journal.apply("slow_boom", gate=gate)  # rolled back: entry 4 is removed
        journal.apply("bump", value=40.0)  # the new entry 4
        journal.apply("bump", value=50.0)


def start_tail(path: Path, *extra) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "replay", "tail", path, "-f", "--interval", "0.02", *extra],
                            cwd=ROOT, stdout=subprocess.PIPE)


def read_lines(proc: subprocess.Popen, count: int, timeout: float = 60) -> list[str]:
    """The next `count` lines `proc` prints (raw reads: a buffered reader would hide lines from select)."""
    fd = proc.stdout.fileno()
    pending = getattr(proc, "pending", b"")
    deadline = time.monotonic() + timeout
    while pending.count(b"\n") < count:
        ready, _, _ = select.select([fd], [], [], max(0.0, deadline - time.monotonic()))
        assert ready, f"tail printed {pending!r} and then nothing"
        data = os.read(fd, 1 << 16)
        assert data, f"tail exited after {pending!r}"
        pending += data
    *lines, rest = pending.split(b"\n", count)
    proc.pending = rest
    return [line.decode() + "\n" for line in lines]


@pytest.mark.timeout(180)
def test_tail_follow_reports_a_live_rollback_and_shows_the_new_entries(tmp_path):
    path, gate, ready = tmp_path / "run", tmp_path / BOOM_GATE, tmp_path / "ready"
    writer = spawn(_rolling_back_writer, str(path), str(gate), str(ready))
    tail = None
    try:
        wait_for(ready.exists)
        tail = start_tail(path, "--json", "-n", "10")
        records = [json.loads(line) for line in read_lines(tail, 4)]
        # Entries 1..3, then the doomed entry 4, still in the log while its handler runs.
        assert [(r["index"], r["op"]) for r in records] == [(1, "bump"), (2, "bump"), (3, "bump"), (4, "slow_boom")]
        gate.touch()
        after = [json.loads(line) for line in read_lines(tail, 3)]
        assert reap(writer) == 0
        assert after[0] == {"event": "rewritten", "after": 3, "removed_or_replaced": [4, 4], "exact": True}
        assert [(r["index"], r["op"], r["summary"]) for r in after[1:]] == [(4, "bump", "v1 value=40"),
                                                                         (5, "bump", "v1 value=50")]
        with eventlog.EventLog.open(path / "log", readonly=True) as log:
            assert [r["checksum"] for r in after[1:]] == [f"{log.entry(i).checksum:016x}" for i in (4, 5)]
    finally:
        if tail is not None:
            tail.kill()
            tail.wait()
        if not gate.exists():
            gate.touch()


@pytest.mark.timeout(180)
def test_tail_follow_reports_a_truncation_refilled_to_the_same_indexes(tmp_path):
    path = tmp_path / "bare"
    with eventlog.EventLog.open(path) as log:
        for i in range(1, 7):
            log.append("old", {"i": i})
        tail = start_tail(path, "-n", "2")
        try:
            assert [line.split()[0] for line in read_lines(tail, 2)] == ["5", "6"]
            # Rewrite further back than anything printed; last_index ends where it was.
            log.truncate_after(3)
            for i in range(4, 7):
                log.append("new", {"i": i})
            lines = read_lines(tail, 4)
        finally:
            tail.kill()
            tail.wait()
    assert lines[0].startswith("-- log rewritten after index 3: entries 4..6 were removed or replaced"), lines
    assert [(line.split()[0], line.split()[4]) for line in lines[1:]] == [("4", "new"), ("5", "new"), ("6", "new")]


# ------------------------------------------------------------ item 20: escaped output

HOSTILE = ["\x1b[2K\r", "\x1b]0;x\x07", "\x9b", "[bold]x[/bold]", "\nnext", "\u202e", "\x7f"]
HOSTILE_TEXT = "".join(HOSTILE)
HOSTILE_OP = "op" + HOSTILE_TEXT
hostile_ops = replay.Ops()


def _hostile_handler(state, **payload):
    state["t" + HOSTILE_TEXT] += 1.0


hostile_ops.op(_hostile_handler, name=HOSTILE_OP)


def make_hostile_state():
    return {"t" + HOSTILE_TEXT: torch.zeros(3)}


def _write_hostile(path: str) -> None:
    # Snapshots at 2 and 4 exactly, so entry 5 stays truncatable (a policy snapshot that is
    # still in flight at 4 would move to 5 under load).
    with replay.Journal.open(path, state=make_hostile_state(), ops=hostile_ops, durability="sync",
                             snapshot=replay.Every(), keep_last=10, keep_log=True,
                             snapshot_on_close=False) as journal:
        for index in range(1, 6):
            journal.apply(HOSTILE_OP, note=HOSTILE_TEXT, **{HOSTILE_TEXT: 1})
            if index in (2, 4):
                journal.snapshot(wait=True)


def assert_no_raw_controls(ran: Ran, tty: bool = False) -> None:
    """Nothing but printable text and the output's own newlines; on a tty, the escape
    sequences of rich's own styles (ESC[...m) are allowed, the hostile ones are not."""
    for name, raw, text in (("stdout", ran.raw_out, ran.out), ("stderr", ran.raw_err, ran.err)):
        if tty and name == "stdout":
            for sequence in ("\x1b[2K", "\x1b]0;x", "\x07", "\r\x1b", "\x9b", "\u202e", "\x7f"):
                assert sequence not in text, (name, sequence, ran)
            continue
        bad = sorted({ch for ch in text if not ch.isprintable() and ch != "\n"})
        assert not bad, (name, bad, ran)
        assert b"\x1b" not in raw and b"\r" not in raw, (name, ran)


@pytest.mark.timeout(240)
def test_user_data_never_reaches_the_terminal_raw(tmp_path):
    path = tmp_path / "hostile"
    assert reap(spawn(_write_hostile, str(path))) == 0
    spec = ["--ops", "tests.crash.test_audit:hostile_ops", "--state", "tests.crash.test_audit:make_hostile_state"]
    runs = {
        "log": cli("log", path), "log-json": cli("log", path, "--json"),
        "show": cli("show", path, 2), "show-json": cli("show", path, 2, "--json"),
        "stats": cli("stats", path), "stats-json": cli("stats", path, "--json"),
        "tail": cli("tail", path), "tail-json": cli("tail", path, "--json"),
        "diff": cli("diff", path, 1, 3, *spec), "diff-json": cli("diff", path, 1, 3, *spec, "--json"),
        "state": cli("state", path, "--at", 3, *spec, "--out", tmp_path / "s.safetensors"),
        "truncate-dry": cli("truncate", path, "--after", 4, "--dry-run"),
        "log-op-filter": cli("log", path, "--op", HOSTILE_OP),
    }
    # An operator's reason is user data too, and so is a snapshot's meta.
    store = snapshots.SnapshotStore(path / "snapshots")
    store.save({"x": torch.zeros(1)}, index=1, term=1, meta={"note": HOSTILE_TEXT})
    store.close()
    runs["verify"] = cli("verify", path)
    runs["verify-json"] = cli("verify", path, "--json")
    runs["snapshots"] = cli("snapshots", path, "--verify")
    runs["truncate"] = cli("truncate", path, "--after", 4, "--reason", HOSTILE_TEXT)
    runs["audit-entry"] = cli("show", path, 5)
    runs["unknown-op"] = cli("state", path, "--at", 3, "--ops", "tests.cli.tinyjob:ops", "--state",
                             "tests.crash.test_audit:make_hostile_state", "--out", tmp_path / "t.safetensors")
    tty_runs = {name: cli(*args, tty=True) for name, args in {
        "log-tty": ("log", path), "stats-tty": ("stats", path), "show-tty": ("show", path, 2),
        "verify-tty": ("verify", path), "diff-tty": ("diff", path, 1, 3, *spec)}.items()}

    for name, ran in {**runs, **tty_runs}.items():
        assert ran.status in (0, 1, 2), (name, ran)
        no_traceback(ran)
        assert_no_raw_controls(ran, tty=name.endswith("-tty"))
    for name in ("log", "show", "stats", "tail", "log-tty", "stats-tty", "show-tty"):
        out = runs.get(name) or tty_runs[name]
        assert "op\\x1b[2K\\r\\x1b]0;x\\x07\\x9b[bold]x[/bold]\\nnext\\u202e\\x7f" in out.out, (name, out)
    for name in ("log-json", "show-json", "stats-json", "tail-json"):
        records = [json.loads(line) for line in runs[name].out.splitlines()]
        assert any(r.get("op") == HOSTILE_OP for r in records), (name, runs[name])  # exact data for scripts
    assert "[bold]x[/bold]" in tty_runs["log-tty"].out  # markup in data is shown, not applied
    assert runs["verify"].status == 1 and "\\x1b[2K" in runs["verify"].out  # the foreign snapshot's meta, escaped
    assert runs["log-op-filter"].status == 0 and len(runs["log-op-filter"].out.splitlines()) == 5
    assert runs["unknown-op"].status == 2 and "\\x1b[2K" in runs["unknown-op"].err, runs["unknown-op"]
    assert runs["diff"].status == 0 and "t\\x1b[2K" in runs["diff"].out
    assert runs["truncate-dry"].status == 0 and "would drop 1 entries after 4" in runs["truncate-dry"].out
    # The operator's reason reaches stderr (the replay logger) and the audit entry, escaped both times.
    assert runs["truncate"].status == 0 and "\\x1b[2K" in runs["truncate"].err, runs["truncate"]
    assert "replay.truncate" in runs["audit-entry"].out and "\\x1b[2K" in runs["audit-entry"].out


# ---------------------------------------------- item 3: verify beside a live writer

VERIFY_RUNS = 20
SLOW_READER_DELAY = 0.1


def _slow_reader() -> None:
    """Fault for a verify child: every flock (the snapshot store's reader lock, taken to list
    and to verify) waits first, as a descheduled reader on a busy machine would. The
    writer commits, prunes and compacts in the meantime."""
    real_flock = fcntl.flock

    def flock(fd, operation):
        time.sleep(SLOW_READER_DELAY)
        return real_flock(fd, operation)

    fcntl.flock = flock


def _compacting_writer(path: str, stop: str, ready: str) -> None:
    # archive=None: compaction deletes, so the boundary verify judges against moves under it
    # (with an archive nothing is deleted and the first readable entry stays 1).
    with replay.Journal.open(path, state=tinyjob.make_state(), ops=tinyjob.ops, durability="sync",
                             snapshot=replay.Every(entries=2), keep_last=1, keep_log=False, archive=None) as journal:
        i = 0
        while not os.path.exists(stop):
            op, kwargs = tinyjob.payload(i)
            journal.apply(op, **kwargs)
            i += 1
            if i == 6:
                Path(ready).touch()
            time.sleep(0.005)


@pytest.mark.timeout(240)
def test_verify_beside_a_writer_that_snapshots_prunes_and_compacts_reports_no_damage(tmp_path):
    path, stop, ready = tmp_path / "live", tmp_path / "stop", tmp_path / "ready"
    writer = spawn(_compacting_writer, str(path), str(stop), str(ready))
    try:
        wait_for(ready.exists)
        runs = []
        for n in range(VERIFY_RUNS):
            runs.append(cli("verify", path, "--json", prepare=_slow_reader if n % 2 else None))
            assert runs[-1].status == 0, runs[-1]
    finally:
        stop.touch()
        status = reap(writer)
    assert status == 0
    records = [json.loads(line) for ran in runs for line in ran.out.splitlines()]
    compacted = [r["first_index"] for r in records if r.get("check") == "log" and "first_index" in r]
    assert len(compacted) == VERIFY_RUNS and compacted[-1] > compacted[0] > 1  # the log moved under verify
    pruned = [r for r in records if r.get("pruned")]
    assert pruned  # snapshots did vanish under a verify, and were not called damaged
    final = cli("verify", path)
    assert final.status == 0 and "verdict: sound" in final.out, final
