"""The one checker every fault-matrix test uses (ALICE's "acknowledged means present").

A writer child reports every acknowledged entry over a pipe: for a Journal, each
(term, index, steps) once `flush()` returned (replay/INVARIANTS.md invariant 1: flush makes every
applied entry durable); for a bare EventLog, each (term, index) once `append` (sync) or
`wait_durable` returned. After the fault, a recovery runs in a fresh process and the
checker asserts:

  (a) every acknowledged entry is present and intact: same term at the same index, the
      payload the workload defines for it, a sound checksum chain;
  (b) the recovered state equals a reference fold of the log prefix, bit for bit (the
      workload is deterministic, so the fold of its first `steps` ops *is* the fold of
      the log's user entries, which (a) checks entry by entry);
  (c) at most the unacknowledged tail is missing: the recovered index and step count
      are at least the newest acknowledged ones, and the retained entries are exactly
      the workload's, contiguous;
  (d) an error the writer saw names the fault (`assert_error_names`).

Messages are frames in the log's own payload codec (msgpack plus tensors, never pickle)
with a 4-byte length prefix; a frame cut short by a kill is
ignored (it was never completely reported). torch is imported lazily so that children
running only `eventlog` start in 0.1 s.
"""

from __future__ import annotations

import os
import select
import signal
import struct
import sys
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from eventlog.codec import decode_payload, encode_payload

ROOT = Path(__file__).resolve().parents[2]
WIDTH, ROWS = 256, 32


# ----------------------------------------------------------------- the workload


def payload_for(step: int) -> tuple[str, dict]:
    """The op and payload of user step `step` (0-based): a training-like mix, fully determined by `step`."""
    if step % 3 == 2:
        return "touch", {"step": step, "row": (7 * step) % ROWS, "seed": step}
    return "sgd", {"step": step, "seed": 1000 + step, "lr": 0.01 * (1 + step % 4)}


def make_state(init: int = 0) -> dict:
    """A tiny training-like state: parameters, momentum, an embedding table, a counter."""
    import torch

    g = torch.Generator().manual_seed(init)
    return {
        "w": torch.randn(WIDTH, generator=g),
        "m": torch.zeros(WIDTH),
        "emb": torch.randn(ROWS, 64, generator=g).to(torch.bfloat16),
        "counters": {"steps": 0},
    }


def _check_order(state, step):
    if state["counters"]["steps"] != step:
        # Replaying an entry twice or skipping one shows up here, not only in the bytes.
        raise RuntimeError(f"step {step} applied after {state['counters']['steps']} steps")


def sgd(state, *, step, seed, lr):
    import torch

    _check_order(state, step)
    grad = torch.randn(WIDTH, generator=torch.Generator().manual_seed(seed))
    state["m"].mul_(0.9).add_(grad)
    state["w"].add_(state["m"], alpha=-lr)
    state["counters"]["steps"] = step + 1


def touch(state, *, step, row, seed):
    import torch

    _check_order(state, step)
    state["emb"][row] = torch.randn(64, generator=torch.Generator().manual_seed(seed)).to(torch.bfloat16)
    state["counters"]["steps"] = step + 1


HANDLERS = {"sgd": sgd, "touch": touch}


def make_ops():
    import replay

    ops = replay.Ops()
    ops.op(sgd)
    ops.op(touch)
    return ops


def reference(steps: int) -> dict:
    """The fold of the workload's first `steps` ops over the initial state, with no journal."""
    state = make_state(0)
    for s in range(steps):
        op, payload = payload_for(s)
        HANDLERS[op](state, **payload)
    return state


def fingerprint(state) -> dict:
    """replay.determinism.fingerprint in a form the frames carry unchanged: key paths joined
    with "/", tuples as lists (equal iff the states are bit-identical)."""
    from replay.determinism import fingerprint as kit_fingerprint

    return {"/".join(map(str, path)): _as_lists(value) for path, value in kit_fingerprint(state).items()}


def _as_lists(value):
    return [_as_lists(v) for v in value] if isinstance(value, (tuple, list)) else value


# ----------------------------------------------------------------- framing


def send(fd: int, message: Any) -> None:
    """One frame, written with one write (atomic for small frames; a cut frame is dropped by `frames`)."""
    data = encode_payload(message)
    os.write(fd, struct.pack("<I", len(data)) + data)


def frames(data: bytes) -> list:
    out, at = [], 0
    while at + 4 <= len(data):
        (n,) = struct.unpack_from("<I", data, at)
        if at + 4 + n > len(data):
            break
        out.append(tuple(decode_payload(data[at + 4:at + 4 + n])))  # arrays decode as lists
        at += 4 + n
    return out


# ----------------------------------------------------------------- the Journal writer child


JOURNAL_OPTIONS = dict(snapshot_every=6, keep_last=2, digest_every=5, durability="group")


def open_journal(root, state, *, snapshot_every=6, keep_last=2, digest_every=5, durability="group", **extra):
    import replay

    return replay.Journal.open(root, state=state, ops=make_ops(), snapshot=replay.Every(entries=snapshot_every),
                               keep_last=keep_last, digest_every=digest_every, durability=durability, **extra)


def summarize(journal) -> dict:
    """What a fresh process recovered: state bytes, indexes, and every retained log entry."""
    log = journal.log
    report = log.verify()
    return {
        "index": journal.index,
        "steps": journal.state["counters"]["steps"],
        "fingerprint": fingerprint(journal.state),
        "first_index": log.first_index,
        "last_index": log.last_index,
        "entries": [(e.index, e.term, e.op, e.payload) for e in log.entries()],
        "verify": (report.ok, str(report)),
        "snapshot_index": journal.recovery.snapshot_index,
        "damaged_snapshots": list(journal.recovery.damaged_snapshots),
    }


def journal_writer(root, out_fd: int, steps: int | None = None, flush_every: int = 2, init: int | None = None,
                   **options) -> None:
    """Open (recover) the journal at `root`, report the recovery, then apply the workload,
    flushing every `flush_every` ops and acknowledging each flushed entry; stop after
    `steps` new ops (None: until killed) and close. Errors are reported, then re-raised."""
    import torch

    torch.set_num_threads(1)
    if init is None:
        # A restart builds its state from another init: recovery must overwrite all of it.
        # (Only once a snapshot exists: before that, the state given to open is the base.)
        manifests = os.path.join(root, "snapshots", "manifests")
        based = os.path.isdir(manifests) and any(not n.startswith(".") for n in os.listdir(manifests))
        init = 1 + os.getpid() % 997 if based else 0
    state = make_state(init)
    try:
        journal = open_journal(root, state, **options)
        send(out_fd, ("recovered", summarize(journal)))
        pending, done = [], 0
        while steps is None or done < steps:
            step = state["counters"]["steps"]
            op, payload = payload_for(step)
            index = journal.apply(op, **payload)
            pending.append((journal.log.term_at(index), index, step + 1))
            done += 1
            if len(pending) >= flush_every:
                journal.flush()
                for ack in pending:
                    send(out_fd, ("ack",) + ack)
                pending = []
        journal.close()
        for ack in pending:  # close flushed them
            send(out_fd, ("ack",) + ack)
        if journal.last_snapshot_error is not None:
            error = journal.last_snapshot_error
            send(out_fd, ("snapshot_error", type(error).__name__, str(error)))
        send(out_fd, ("done", journal.index))
    except BaseException as exc:
        send(out_fd, ("error", type(exc).__name__, str(exc), _causes(exc)))
        raise


def _causes(exc: BaseException) -> str:
    """Every message in the exception's cause chain, for (d)."""
    parts, seen = [], exc
    while seen is not None:
        parts.append(f"{type(seen).__name__}: {seen}")
        seen = seen.__cause__ or seen.__context__
    return " <- ".join(parts)


def recovered_in_fresh_process(root, **options) -> dict:
    """Recover `root` in a forked child that opens nothing else and return its summary."""
    run = run_forked(journal_writer, root, steps=0, **options)
    summary = run.recovered
    assert summary is not None, f"recovery failed in a fresh process: {run.errors or run.stderr_tail()}"
    return summary


# ----------------------------------------------------------------- running children


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


def run_forked(fn: Callable, *args, kill_after: float | None = None, kill_on: Callable[[list], bool] | None = None,
               env: dict | None = None, timeout: float = 120, **kwargs) -> Run:
    """Fork; the child runs fn(*args, out_fd, **kwargs) and exits (1 on an exception).

    The parent collects frames; it SIGKILLs the child `kill_after` seconds after the fork
    or as soon as `kill_on(messages)` is true. Forking (not exec) keeps a child cheap:
    torch is already imported. The caller must hold no open log or store.
    """
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
            fn(*args, w, **kwargs)
            code = 0
        except BaseException:  # noqa: BLE001 - report and exit, never return into pytest
            traceback.print_exc()
        finally:
            os._exit(code)
    os.close(w)
    os.close(ew)
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
        cmd = [strace, "-f", "-qq", "-o", "/dev/null", "-e", f"inject={inject}", *cmd]
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


# ----------------------------------------------------------------- the checks


@dataclass
class Tally:
    """Counts for the matrix table: runs, acknowledged entries checked, lost, diverged."""

    row: str
    runs: int = 0
    acked_checked: int = 0  # (ack, check) pairs: every check re-checks every earlier ack
    lost: int = 0
    diverged: int = 0
    acked: set = field(default_factory=set)  # distinct acknowledged entries

    def report(self) -> None:
        print(f"\nMATRIX {self.row}: runs={self.runs} acked={len(self.acked)} checks={self.acked_checked} "
              f"lost={self.lost} diverged={self.diverged}")


def check_journal(summary: dict, acks: list[tuple[int, int, int]], tally: Tally | None = None) -> None:
    """(a), (b), (c) for a Journal recovered in a fresh process (`summary`) against every ack so far."""
    entries = {index: (term, op, payload) for index, term, op, payload in summary["entries"]}
    problems, lost = [], 0
    ok, text = summary["verify"]
    if not ok:
        problems.append(f"log verify failed: {text}")
    # (c) the retained log is the workload, contiguous; only an unacknowledged tail may be missing.
    indexes = sorted(entries)
    if indexes != list(range(summary["first_index"], summary["last_index"] + 1)):
        problems.append(f"log indexes are not contiguous: {indexes[:5]}...")
    for index in indexes:
        term, op, stored = entries[index]
        if op.startswith("replay."):
            continue
        step = stored["p"]["step"]
        if (op, stored["p"]) != payload_for(step):
            problems.append(f"entry {index} holds {op} {stored['p']}, not the workload's step {step}")
    for term, index, steps in acks:
        # (a) acknowledged means present: same term at that index (a rewrite means the
        # acknowledged entry was lost and replaced) or compacted into the loaded snapshot.
        if index < summary["first_index"]:
            present = summary["index"] >= index and summary["steps"] >= steps
        else:
            present = index in entries and entries[index][0] == term
        if not present:
            lost += 1
            problems.append(f"acknowledged entry {index} (term {term}, steps {steps}) is missing")
    if acks:
        if summary["index"] < max(a[1] for a in acks) or summary["steps"] < max(a[2] for a in acks):
            problems.append(f"recovered to index {summary['index']} / {summary['steps']} steps, "
                            f"but {max(a[1] for a in acks)} was acknowledged")
    # (b) bit-for-bit against the reference fold of the prefix.
    expected = fingerprint(reference(summary["steps"]))
    diverged = summary["fingerprint"] != expected
    if diverged:
        differing = [k for k in expected if summary["fingerprint"].get(k) != expected[k]]
        problems.append(f"recovered state differs from the reference fold at {differing}")
    if tally is not None:
        tally.acked_checked += len(acks)
        tally.acked.update(acks)
        tally.lost += lost
        tally.diverged += int(diverged)
    assert not problems, "\n".join(problems)


def assert_error_names(run: Run, *words: str) -> None:
    """(d): the error the writer saw names the fault (any of `words`, case-insensitive)."""
    assert run.errors, f"the writer reported no error; stderr: {run.stderr_tail()}"
    text = " ".join(" ".join(e) for e in run.errors).lower()
    assert any(w.lower() in text for w in words), f"error does not name the fault ({words}): {text[:600]}"


# ----------------------------------------------------------------- bare eventlog writers


def log_payload(index: int) -> dict:
    return {"i": index, "blob": bytes([index % 251]) * (index % 900)}


def log_writer(path, mode: str, out_fd: int, count: int | None = None) -> None:
    """Append `log_payload` entries to the EventLog at `path` (None: until killed), acking
    each (term, index) once it is durable; errors are reported, then re-raised."""
    from eventlog import EventLog

    try:
        with EventLog.open(path, durability=mode) as log:
            send(out_fd, ("recovered", log.last_index))
            n = 0
            while count is None or n < count:
                i = log.append("step", log_payload(log.last_index + 1))
                if mode != "sync":
                    log.wait_durable(i)
                send(out_fd, ("ack", log.term, i))
                n += 1
        send(out_fd, ("done", i if count else 0))
    except BaseException as exc:
        send(out_fd, ("error", type(exc).__name__, str(exc), _causes(exc)))
        raise


def check_log(path, acks: list[tuple[int, int]], tally: Tally | None = None) -> int:
    """(a)-(c) for a bare EventLog after a fault, read in this process: every acked
    (term, index) present with its payload, chain sound, contiguous. Returns last_index."""
    from eventlog import EventLog, LogError

    lost = 0
    if not acks:
        # Killed while creating the log, before anything was acknowledged: a reader may
        # refuse the half-made directory (the next writer completes it), never more.
        try:
            EventLog.open(path, readonly=True).close()
        except LogError:
            return 0
    with EventLog.open(path, readonly=True) as log:
        report = log.verify()
        assert report.ok, str(report)
        entries = {e.index: e for e in log.entries()}
        assert sorted(entries) == list(range(log.first_index, log.last_index + 1))
        for index, entry in entries.items():
            # (b) for a bare log: the log prefix is exactly what the writer sent.
            assert entry.payload == log_payload(index), f"entry {index} differs from what was appended"
        for term, index in acks:
            if index not in entries or entries[index].term != term:
                lost += 1
        last = log.last_index
    if tally is not None:
        tally.acked_checked += len(acks)
        tally.acked.update(acks)
        tally.lost += lost
    assert lost == 0, f"{lost} acknowledged entries lost"
    return last
