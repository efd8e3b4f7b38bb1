"""The Journal writer child: recover, report the recovery, apply the workload and
acknowledge every flushed entry; and a recovery in a fresh process."""

from __future__ import annotations

import os

from .workload import payload_for, make_state, make_ops, fingerprint
from .framing import send, causes
from .children import run_forked


def open_journal(root, state, *, snapshot_every=6, keep_last=2, digest_every=5, durability="group", **extra):
    import replay

    # A clean close would snapshot the last index (snapshot_on_close) and leave nothing to
    # replay; these children stand for runs whose last entries recovery must replay, so
    # only the policy snapshots. tests/replay/test_close_snapshot.py covers the default.
    extra.setdefault("snapshot_on_close", False)
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
            index = journal.index + 1  # the entry's own index (a digest entry may follow it)
            journal.apply(op, **payload)
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
        send(out_fd, ("error", type(exc).__name__, str(exc), causes(exc)))
        raise


def recovered_in_fresh_process(root, **options) -> dict:
    """Recover `root` in a forked child that opens nothing else and return its summary."""
    run = run_forked(journal_writer, root, steps=0, **options)
    summary = run.recovered
    assert summary is not None, f"recovery failed in a fresh process: {run.errors or run.stderr_tail()}"
    return summary
