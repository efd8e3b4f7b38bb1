"""Row 17b: preemption of a whole process group, DataLoader workers included.

SLURM's ``scancel`` and container runtimes send SIGTERM to every process of the job: a
real trainer (its own process group) with a 2-worker JournaledLoader and
``preemption=replay.Preemption()`` is stopped with ``os.killpg`` while a handler runs
(between two accumulated ``backward()`` calls). The workers must outlive the signal, so
the handler is never interrupted ("DataLoader worker (pid N) is killed by signal" must
never surface), the trainer exits 143 after its clean stop, the workers end with it,
and the resumed run finishes with the bytes of an uninterrupted run.

Every wait is for an event: a line the child writes, a signal's delivery or a process's
end seen in /proc. Run as a script, this file is the child:
``python test_preemption_workers.py train|plain ROOT BLOCK_AT``.
"""

from __future__ import annotations

import hashlib
import os
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

if __name__ == "__main__":  # the child: importable without the test package
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import pytest  # noqa: E402
import torch  # noqa: E402

import replay  # noqa: E402

pytestmark = [pytest.mark.crash, pytest.mark.fault_preemption, pytest.mark.timeout(900)]

SAMPLES, FEATURES, BATCH, STEPS, BLOCK_AT = 40, 6, 4, 12, 5


class Data(torch.utils.data.Dataset):
    def __init__(self):
        g = torch.Generator().manual_seed(5)
        self.x, self.y = torch.randn(SAMPLES, FEATURES, generator=g), torch.randn(SAMPLES, 1, generator=g)

    def __len__(self):
        return SAMPLES

    def __getitem__(self, i):
        return self.x[i] + 0.01 * torch.randn(FEATURES), self.y[i]  # an augmentation from the global RNG


def _announce_worker(worker_id: int) -> None:
    print("worker", os.getpid(), flush=True)  # the user's own worker_init_fn: it must still run


def build(block_at: int | None):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(FEATURES, 16), torch.nn.Tanh(), torch.nn.Dropout(0.1),
                                torch.nn.Linear(16, 1))
    optim = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    cursor = replay.DataCursor(SAMPLES, seed=2)
    loader = replay.JournaledLoader(Data(), cursor, batch_size=BATCH, seed=3, endless=True, num_workers=2,
                                    worker_init_fn=_announce_worker)
    ops = replay.Ops()

    @ops.op(inputs=loader.rebuild)
    def train_step(state, *, ids, seed, inputs):
        step = state["data"].consumed // BATCH
        try:
            state["data"].consume(ids)
            x, y = inputs
            with replay.seeded_rng(seed):
                for k, (xs, ys) in enumerate(zip(x.chunk(2), y.chunk(2))):  # two accumulated micro-batches
                    torch.nn.functional.mse_loss(state["model"](xs), ys).backward()
                    if k == 0 and step == block_at:
                        print("blocked", step, flush=True)
                        sys.stdin.readline()  # the test signals the group now, then lets us go on
            state["optim"].step()
            state["optim"].zero_grad()  # at the end of the step: leftover gradients would show
        except BaseException as exc:
            print("raised", step, type(exc).__name__, str(exc).replace("\n", " ")[:200], flush=True)
            raise

    return {"model": model, "optim": optim, "data": cursor}, loader, ops


def leaves(state) -> list[str]:
    from replay.determinism import fingerprint

    out = []
    for path, leaf in sorted(fingerprint(state).items(), key=lambda item: repr(item[0])):
        raw = leaf[2] if isinstance(leaf, tuple) else repr(leaf).encode()
        out.append(f"{'/'.join(map(str, path))}:{hashlib.sha256(raw).hexdigest()[:16]}")
    return out


def child(mode: str, root: str, block_at: int) -> None:
    torch.set_num_threads(1)
    state, loader, ops = build(block_at if block_at >= 0 else None)
    if mode == "plain":
        handler = ops.spec("train_step").handler
        for _, batch in zip(range(STEPS), loader):
            handler(state, **batch)
    else:
        with replay.Journal.open(root, state=state, ops=ops, snapshot=replay.Every(entries=4),
                                 preemption=replay.Preemption(grace=60.0)) as journal:
            print("recovered", journal.count(), journal.recovery.entries_replayed, flush=True)
            for step, batch in zip(range(journal.count(), STEPS), loader):
                journal.apply("train_step", **batch)
                print("applied", step, flush=True)
    print("state", *leaves(state), flush=True)


# ---------------------------------------------------------------- the parent's side


def _start(mode: str, root, block_at: int = -1) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, __file__, mode, str(root), str(block_at)], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)


def _lines_until(proc, done) -> list[list[str]]:
    """Read the child's stdout lines until done(lines) is true (AssertionError if it ends first)."""
    lines = []
    while not done(lines):
        line = proc.stdout.readline()
        if not line:
            raise AssertionError(f"the child ended first: {lines} {proc.stderr.read()[-3000:]}")
        lines.append(line.split())
    return lines


def _status(pid: int) -> dict[str, str] | None:
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    return dict(line.split(":\t", 1) for line in text.splitlines() if ":\t" in line)


def _has(mask: str, signum: int) -> bool:
    return bool(int(mask, 16) >> (signum - 1) & 1)


def _until(condition, what: str, limit: float = 300.0) -> None:
    """Wait for an event seen in /proc (`limit` only bounds a hang: a failure, not a timing)."""
    deadline = time.monotonic() + limit
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"never happened: {what}")
        select.select([], [], [], 0.005)


def _took(pid: int, signum: int, worker: bool) -> bool:
    """The signal is no longer pending at `pid`: delivered (to a handler, or to a worker's
    sigwaitinfo). A worker that does not defer (block) it must be dead of it already."""
    status = _status(pid)
    if status is None or status["State"].startswith(("Z", "X")):
        return True
    if _has(status["ShdPnd"], signum) or _has(status["SigPnd"], signum):
        return False
    return not worker or _has(status["SigBlk"], signum)


def _ended(pid: int) -> bool:
    status = _status(pid)
    return status is None or status["State"].startswith(("Z", "X"))


def test_sigterm_to_the_whole_process_group_never_interrupts_a_handler_and_resumes_bit_identical(tmp_path):
    reference = _start("plain", tmp_path / "unused")
    out, err = reference.communicate(timeout=400)
    assert reference.returncode == 0, err[-3000:]
    expected = [line.split()[1:] for line in out.splitlines() if line.startswith("state")][0]

    root = tmp_path / "journal"
    trainer = _start("train", root, BLOCK_AT)
    try:
        lines = _lines_until(trainer, lambda ls: any(l[0] == "blocked" for l in ls)
                             and sum(l[0] == "worker" for l in ls) >= 2)
        workers = [int(l[1]) for l in lines if l[0] == "worker"]
        assert len(workers) == 2 and trainer.pid not in workers
        os.killpg(trainer.pid, signal.SIGTERM)  # what scancel and container runtimes do
        _until(lambda: _took(trainer.pid, signal.SIGTERM, worker=False), "the trainer took SIGTERM")
        for pid in workers:
            # A worker that does not defer the signal dies of it: wait for that death, so
            # the trainer's SIGCHLD is due while the handler still runs.
            _until(lambda pid=pid: _took(pid, signal.SIGTERM, worker=True), f"worker {pid} took SIGTERM or died of it")
        try:
            trainer.stdin.write("go\n")
            trainer.stdin.flush()
        except BrokenPipeError:
            pass  # the interrupted child is already gone: the assertions below say why
        out, err = trainer.communicate(timeout=300)
    finally:
        if trainer.poll() is None:
            os.killpg(trainer.pid, signal.SIGKILL)
            trainer.wait()
    events = lines + [line.split() for line in out.splitlines()]
    assert not [e for e in events if e[0] == "raised"], f"the handler was interrupted: {events} {err[-3000:]}"
    assert "killed by signal" not in err and "Traceback" not in err, err[-3000:]
    assert trainer.returncode == 128 + signal.SIGTERM, (trainer.returncode, err[-3000:])
    applied = [int(e[1]) for e in events if e[0] == "applied"]
    # The blocked apply finished, and the clean stop ended the process as it returned.
    assert applied == list(range(BLOCK_AT)), applied
    for pid in workers:  # the trainer's DataLoader ended them on its way out
        _until(lambda pid=pid: _ended(pid), f"worker {pid} ended after its trainer")

    resumed = _start("train", root)
    out, err = resumed.communicate(timeout=400)
    assert resumed.returncode == 0, err[-3000:]
    recovered = [line.split() for line in out.splitlines() if line.startswith("recovered")][0]
    assert recovered[1:] == [str(BLOCK_AT + 1), "0"], recovered  # the clean stop left nothing to replay
    actual = [line.split()[1:] for line in out.splitlines() if line.startswith("state")][0]
    differing = [a for a, b in zip(actual, expected) if a != b]
    assert len(actual) == len(expected) and not differing, f"differs from the uninterrupted run: {differing}"
    print(f"\nMATRIX fault_preemption_group: workers=2 signal=SIGTERM steps={STEPS} blocked_at={BLOCK_AT}")


if __name__ == "__main__":
    child(sys.argv[1], sys.argv[2], int(sys.argv[3]))
