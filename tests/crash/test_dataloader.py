"""Fault-matrix row 18: a 2-worker DataLoader under a Journal, SIGKILLed; the resumed run is bit-identical.

A forked child trains a small model (dropout under seeded_rng, AdamW, a warmup
scheduler, gradient clipping) on batches from a JournaledLoader with two workers, a
collate_fn and random augmentations, flushing and acknowledging every step. It is
SIGKILLed at random moments: after a random number of acknowledged steps, and once
right after it recovered (while its workers start). Each restart builds its
model from another random init, recovers, and goes on from the cursor. After the kills a
last run finishes; its final model, optimizer, scheduler and cursor must be the bytes of
an uninterrupted run without a journal, and no acknowledged step may be lost.

And the orphans a killed trainer leaves (its DataLoader workers live up to 5 s longer)
must not lock the next run out of its snapshot store.
"""

from __future__ import annotations

import os
import random
from pathlib import Path

import pytest
import torch

from .checker import run_forked, send

pytestmark = [pytest.mark.crash, pytest.mark.fault_dataloader, pytest.mark.timeout(240)]

SAMPLES, FEATURES, CLASSES, BATCH, STEPS = 30, 8, 3, 4, 40


class Noisy(torch.utils.data.Dataset):
    """Random augmentations from torch's and Python's global RNG, as torchvision-style transforms draw."""

    def __init__(self):
        g = torch.Generator().manual_seed(99)
        self.x = torch.randn(SAMPLES, FEATURES, generator=g)
        self.y = torch.randint(0, CLASSES, (SAMPLES,), generator=g)

    def __len__(self):
        return SAMPLES

    def __getitem__(self, i):
        x = self.x[i] * (0.9 + 0.2 * torch.rand(1)) + 0.05 * torch.randn(FEATURES)
        return (x.flip(0) if random.random() < 0.5 else x), self.y[i]


def collate(samples):
    xs, ys = zip(*samples)
    return {"x": torch.stack(xs), "y": torch.stack(ys)}


def build(init: int, **loader_options):
    """State, loader and ops; `init` seeds the model's initialisation (recovery must overwrite it)."""
    import replay
    from replay.loader import JournaledLoader
    from replay.rng import seeded_rng

    torch.manual_seed(init)
    model = torch.nn.Sequential(torch.nn.Linear(FEATURES, 32), torch.nn.GELU(), torch.nn.Dropout(0.2),
                                torch.nn.Linear(32, CLASSES))
    optim = torch.optim.AdamW(model.parameters(), lr=3e-3)
    warmup = torch.optim.lr_scheduler.LambdaLR(optim, lambda step: min(1.0, (step + 1) / 10))
    cursor = replay.DataCursor(SAMPLES, seed=4)
    state = {"model": model, "optim": optim, "sched": warmup, "data": cursor}
    loader = JournaledLoader(Noisy(), cursor, batch_size=BATCH, collate_fn=collate, seed=8, endless=True,
                             num_workers=2, prefetch_factor=2, **loader_options)
    ops = replay.Ops()

    @ops.op(inputs=loader.rebuild)
    def train_step(state, *, ids, seed, inputs):
        state["data"].consume(ids)
        with seeded_rng(seed):
            loss = torch.nn.functional.cross_entropy(state["model"](inputs["x"]), inputs["y"])
        state["optim"].zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(state["model"].parameters(), 1.0)
        state["optim"].step()
        state["sched"].step()
        return loss.item()

    return state, loader, ops


def state_bytes(state) -> list:
    """Every leaf of the state as [path, dtype, shape, raw bytes] (or [path, value]): msgpack-safe."""
    from replay.determinism import fingerprint

    out = []
    for path, leaf in sorted(fingerprint(state).items(), key=lambda item: repr(item[0])):
        out.append([repr(path), list(leaf[:2]) + [leaf[2]] if isinstance(leaf, tuple) else repr(leaf)])
    return out


def trainer(root, out_fd: int, plain: bool = False, detach_workers: str | None = None) -> None:
    """Train to STEPS under the journal at `root` (or, plain, without one); ack each flushed step.

    detach_workers: a file; the DataLoader workers write their pids to it and close their
    copies of the report pipes, so the parent sees the trainer's death at once, while its
    orphaned workers still live."""
    import functools

    import replay

    torch.set_num_threads(1)  # as in snapshot_now; and the reference must use the same kernels
    # The first run's init is the journal's base (snapshot 0): the reference's. A restart
    # builds another one, which recovery must overwrite completely.
    manifests = os.path.join(root, "snapshots", "manifests")
    based = os.path.isdir(manifests) and any(not n.startswith(".") for n in os.listdir(manifests))
    options = {"worker_init_fn": functools.partial(_detach, out_fd, detach_workers)} if detach_workers else {}
    state, loader, ops = build(1 + os.getpid() % 997 if based and not plain else 0, **options)
    if plain:
        handler = ops.spec("train_step").handler
        for _, batch in zip(range(STEPS), loader):
            handler(state, **batch)
        send(out_fd, ("done", state_bytes(state)))
        return
    with replay.Journal.open(root, state=state, ops=ops, snapshot=replay.Every(entries=7), keep_last=2) as journal:
        send(out_fd, ("recovered", journal.count(), journal.recovery.entries_replayed))
        for step, batch in zip(range(journal.count(), STEPS), loader):
            journal.apply("train_step", **batch)
            journal.flush()
            send(out_fd, ("ack", step + 1, state["data"].consumed))
    send(out_fd, ("done", state_bytes(state)))


def _detach(out_fd: int, pids: str, worker_id: int) -> None:
    """In a worker: record the pid in `pids`; close the report and stderr pipes (stderr to /dev/null);
    and stay alive after the trainer dies until `pids`.release exists (at most 120 s): a
    non-daemon thread that the worker's exit waits for, so the orphans outlive the test's
    check however slow the machine is, instead of for PyTorch's 5 s watchdog interval."""
    import threading
    import time

    with open(pids, "a") as f:
        f.write(f"{os.getpid()}\n")

    def hold() -> None:
        deadline = time.monotonic() + 120
        while not os.path.exists(pids + ".release") and time.monotonic() < deadline:
            time.sleep(0.05)

    threading.Thread(target=hold, name="test-hold-orphan").start()
    pipes = {os.fstat(out_fd).st_ino, os.fstat(2).st_ino}
    for name in os.listdir("/proc/self/fd"):
        fd = int(name)
        try:
            if fd > 2 and os.fstat(fd).st_ino in pipes:
                os.close(fd)
        except OSError:
            pass  # the listing's own descriptor, already gone
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)
    os.close(devnull)


def snapshot_now(root, out_fd: int) -> None:
    """Open the journal at `root` in a fresh process and snapshot at once; report the outcome."""
    import replay
    from replay.rng import derive_seed

    # One intra-op thread: a child forked from a parent whose OpenMP pool has run would
    # hang in its first parallel region (libgomp is not fork-safe).
    torch.set_num_threads(1)
    state, _, ops = build(5)
    cursor = state["data"]
    try:
        with replay.Journal.open(root, state=state, ops=ops, snapshot=replay.Every(entries=7), keep_last=2) as journal:
            # No inputs given: the op's rebuild builds the batch here (no workers started).
            journal.apply("train_step", ids=cursor.peek(BATCH), seed=derive_seed(8, cursor.consumed))
            journal.snapshot(wait=True)
            send(out_fd, ("snapshot", journal.index))
    except Exception as exc:  # noqa: BLE001 - reported to the parent, which asserts on it
        send(out_fd, ("error", type(exc).__name__, str(exc)))


def _acks(run) -> list[tuple[int, int]]:
    return [(m[1], m[2]) for m in run.messages if m[0] == "ack"]


def test_sigkilled_dataloader_training_resumes_bit_identical(tmp_path):
    rng = random.Random(18)
    reference = run_forked(trainer, tmp_path / "unused", plain=True)
    assert reference.messages and reference.messages[-1][0] == "done", reference.stderr_tail()

    root, acked, kills, runs = tmp_path / "journal", 0, 0, 0
    # Three kills after 2..8 acknowledged steps; one as soon as the run has recovered (its
    # workers starting, its first batches in flight). Kills are tied to what the trainer
    # reported, never to a time, so a fast machine cannot finish a run before its kill.
    plan = [rng.randint(2, 8) for _ in range(3)]
    plan.insert(1, 0)
    for after in plan:
        if after:
            run = run_forked(trainer, root, kill_on=lambda messages, n=after: sum(m[0] == "ack" for m in messages) >= n)
        else:
            run = run_forked(trainer, root, kill_on=lambda messages: any(m[0] == "recovered" for m in messages))
        runs += 1
        assert run.killed, f"the trainer ended before its kill: {run.stderr_tail()}"
        kills += 1
        recovered = [m for m in run.messages if m[0] == "recovered"]
        if recovered:
            # Acknowledged means present: the run recovered at least every step acked before it.
            assert recovered[0][1] >= acked, (recovered, acked)
        acks = _acks(run)
        if acks:
            assert [a[0] for a in acks] == list(range(acks[0][0], acks[0][0] + len(acks)))
            assert all(consumed == steps * BATCH for steps, consumed in acks)  # one batch per step, none skipped
            acked = acks[-1][0]

    final = run_forked(trainer, root)
    runs += 1
    assert final.done, final.stderr_tail()
    recovered = [m for m in final.messages if m[0] == "recovered"][0]
    assert recovered[1] >= acked
    assert kills == 4 and 0 < acked < STEPS
    done = [m for m in final.messages if m[0] == "done"][0]
    expected = reference.messages[-1][1]
    differing = [a[0] for a, b in zip(done[1], expected) if a != b]
    assert len(done[1]) == len(expected) and not differing, f"differs from the uninterrupted run at {differing}"
    print(f"\nMATRIX fault_dataloader: runs={runs} kills={kills} acked_before_last={acked} steps={STEPS}")


def test_a_killed_trainers_orphaned_workers_do_not_lock_the_next_run_out(tmp_path):
    """The snapshot store's writer lock is not inherited by the DataLoader workers (snapshots/locks.py
    closes it in forked children): a SIGKILLed trainer's orphaned workers, still alive (left alone
    they live up to PyTorch's 5 s watchdog interval; here they are held until the check is done),
    do not make the next run's snapshots fail with LockedError."""
    def alive(pid: int) -> bool:
        try:
            os.kill(pid, 0)
            return True
        except ProcessLookupError:
            return False

    root, pids = tmp_path / "journal", tmp_path / "pids"
    run = run_forked(trainer, root, detach_workers=str(pids),
                     kill_on=lambda messages: sum(m[0] == "ack" for m in messages) >= 3)
    assert run.killed and len(_acks(run)) >= 3, run.stderr_tail()
    workers = [int(line) for line in pids.read_text().split()]
    try:
        # The trainer is dead; its workers are held alive (_detach). Open and snapshot meanwhile.
        check = run_forked(snapshot_now, root)
        assert any(alive(pid) for pid in workers), "the orphaned workers did not outlive the check"
    finally:
        Path(f"{pids}.release").touch()
    outcome = [m for m in check.messages if m[0] in ("snapshot", "error")]
    # The check must get as far as the snapshot: a LockedError is the lock-out this test is about.
    if not outcome or (outcome[0][0] == "error" and outcome[0][1] != "LockedError"):
        raise RuntimeError(f"the check did not get as far as the snapshot: {outcome} {check.stderr_tail()}")
    assert outcome[0][0] == "snapshot", outcome
