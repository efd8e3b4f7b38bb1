"""``python -m replay demo``: train (or run batch inference) under a Journal, SIGKILL it
again and again, resume each time, and prove the result is bit-identical to a run that
was never interrupted.

The work runs in a child process (``--worker``) that opens the journal (recovering),
reports each applied step on stdout, and is killed by the parent at random steps. The
reference is a plain loop with no journal at all, driven by the same data order and
seeds, so "bit-identical" compares against what the user would have computed anyway.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .data import DataCursor
# The job's model and data are shared with demo_ranks (demo_model); re-exported here.
from .demo_model import CLASSES, DROPOUT, FEATURES, HIDDEN, MLP, NUM_SAMPLES, synthetic_dataset, train_step  # noqa: F401
from .determinism import fingerprint
from .journal import Journal
from .ops import Ops
from .policies import Every

# ----------------------------------------------------------------------------- the job


@dataclass
class Job:
    """Everything one run needs; built identically by the reference and by every worker."""

    task: str
    seed: int
    device: torch.device
    batch: int
    model: MLP = field(init=False)
    state: dict = field(init=False)
    ops: Ops = field(init=False)

    def __post_init__(self):
        torch.manual_seed(self.seed)
        self.x, self.y = synthetic_dataset(self.seed, self.device)
        self.model = MLP().to(self.device)
        self.ops = Ops()
        if self.task == "train":
            optim = torch.optim.AdamW(self.model.parameters(), lr=1e-3, weight_decay=0.01)
            self.state = {"model": self.model, "optim": optim, "data": DataCursor(NUM_SAMPLES, self.seed)}
            self.ops.op(self.train_step)
        else:
            self.model.eval()
            self.state = {
                "outputs": torch.zeros(NUM_SAMPLES, CLASSES, device=self.device),
                "done": torch.zeros(NUM_SAMPLES, dtype=torch.bool, device=self.device),
            }
            self.ops.op(self.record_outputs)

    # -- training: one op per optimizer step --------------------------------------------

    def next_train_payload(self, step: int) -> dict:
        return {"ids": self.state["data"].peek(self.batch), "seed": self.seed * 1_000_003 + step,
                "lr": 1e-3 * min(1.0, (step + 1) / 100)}

    def train_step(self, state, *, ids, seed, lr):
        train_step(state, self.x, self.y, ids=ids, seed=seed, lr=lr)

    # -- inference: one op per finished batch of samples --------------------------------

    def next_inference_payload(self) -> dict | None:
        pending = (~self.state["done"]).nonzero().flatten()[: self.batch]
        if pending.numel() == 0:
            return None
        with torch.no_grad():
            outputs = self.model(self.x[pending])
        return {"ids": pending.tolist(), "outputs": outputs}

    def record_outputs(self, state, *, ids, outputs):
        index = torch.tensor(ids, device=self.device)
        if bool(state["done"][index].any()):
            raise ValueError(f"samples {ids[:4]}... already have an output: exactly-once violated")
        state["outputs"][index] = outputs
        state["done"][index] = True

    def step_count(self) -> int:
        if self.task == "train":
            return self.state["data"].consumed // self.batch
        return int(self.state["done"].sum()) // self.batch


def run_reference(task: str, seed: int, device: torch.device, batch: int, steps: int) -> dict:
    """The uninterrupted run: the same ops, called directly, no journal."""
    job = Job(task, seed, device, batch)
    if task == "train":
        for step in range(steps):
            job.train_step(job.state, **job.next_train_payload(step))
    else:
        while (payload := job.next_inference_payload()) is not None:
            job.record_outputs(job.state, **payload)
    return comparable_state(job)


def comparable_state(job: Job) -> dict[str, torch.Tensor]:
    """Every tensor that must match, flattened to names (parameters, Adam moments and steps, outputs)."""
    flat = {}
    if job.task == "train":
        for name, tensor in job.model.state_dict().items():
            flat[f"model.{name}"] = tensor
        for pid, slots in job.state["optim"].state_dict()["state"].items():
            for slot, value in slots.items():
                flat[f"optim.{pid}.{slot}"] = torch.as_tensor(value)
        flat["data.consumed"] = torch.tensor(job.state["data"].consumed)
    else:
        flat["outputs"], flat["done"] = job.state["outputs"], job.state["done"]
    return {k: v.detach().cpu() for k, v in flat.items()}


# ----------------------------------------------------------------------------- the worker


def worker(args) -> int:
    """Open (recover) the journal, report how, then apply steps until the job is done."""
    job = Job(args.task, args.seed, torch.device(args.device), args.batch)
    policy = Every(entries=args.snapshot_every)
    # No keep_log for inference: compaction seals old entries into the log's archive, so
    # every batch's outputs stay readable from the log (the parent's audit proves it).
    with Journal.open(args.dir, state=job.state, ops=job.ops, snapshot=policy, durability=args.durability,
                      digest_every=args.digest_every, progress=False) as journal:
        recovery = journal.recovery
        print(json.dumps({"recovered": {
            "snapshot_index": recovery.snapshot_index, "replayed": recovery.entries_replayed,
            "seconds": recovery.seconds, "digests_checked": recovery.digests_checked,
            "damaged_snapshots": len(recovery.damaged_snapshots), "step": job.step_count()}}), flush=True)
        acknowledged = DurableSteps(job.step_count())
        while True:
            step = job.step_count()
            if job.task == "train":
                if step >= args.steps:
                    break
                journal.apply("train_step", **job.next_train_payload(step))
            else:
                payload = job.next_inference_payload()
                if payload is None:
                    break
                journal.apply("record_outputs", **payload)
            # What a kill now cannot take: with durability="group" apply returns before the
            # background flusher commits, so a step may be printed and still be lost.
            durable = acknowledged.update(journal.index, step + 1, journal.durable_index)
            print(f"step {step + 1} durable {durable}", flush=True)
        journal.flush()
        snaps = journal.snapshots.list()
        print(json.dumps({"done": {"index": journal.index, "snapshots": [
            {"index": s.index, "bytes_logical": s.bytes_logical, "bytes_written": s.bytes_written,
             "bytes_stored": s.bytes_stored} for s in snaps]}}), flush=True)
    return 0


class DurableSteps:
    """The newest step whose entry is durable, from (entry index, step) pairs as steps are
    applied and the log's durable index (digest entries make indexes and steps differ)."""

    def __init__(self, recovered_step: int):
        self.durable = recovered_step  # what recovery read back is on disk
        self._pending: list[tuple[int, int]] = []

    def update(self, index: int, step: int, durable_index: int) -> int:
        self._pending.append((index, step))
        while self._pending and self._pending[0][0] <= durable_index:
            self.durable = self._pending.pop(0)[1]
        return self.durable


# ----------------------------------------------------------------------------- the parent


def run_with_kills(args, directory: Path, rng: random.Random) -> tuple[list[dict], list[int], dict]:
    """Run workers until one finishes, SIGKILLing the first `kills` of them at random steps.

    Returns (recoveries, kills, the finished worker's report); each kill is the last step
    the worker printed before it and the step it had acknowledged as durable by then."""
    total = args.steps if args.task == "train" else NUM_SAMPLES // args.batch
    kill_steps = sorted(rng.sample(range(1, total), min(args.kills, total - 1)))
    recoveries, killed_at, finished = [], [], None
    command = [sys.executable, "-m", "replay", "demo", "--worker", "--dir", str(directory)] + _shared_flags(args)
    while finished is None:
        child = subprocess.Popen(command, stdout=subprocess.PIPE, text=True, bufsize=1)
        target = kill_steps[len(killed_at)] if len(killed_at) < len(kill_steps) else None
        for line in child.stdout:
            if line.startswith("{"):
                message = json.loads(line)
                if "recovered" in message:
                    recoveries.append(message["recovered"])
                else:
                    finished = message["done"]
            elif target is not None and int(line.split()[1]) >= target:
                time.sleep(rng.uniform(0, 0.003))  # land anywhere: mid-apply, mid-flush, mid-snapshot
                os.kill(child.pid, signal.SIGKILL)
                _, printed, _, durable = line.split()
                killed_at.append({"printed": int(printed), "durable": int(durable)})
                break
        child.stdout.close()
        if child.wait() not in (0, -signal.SIGKILL):
            raise RuntimeError(f"demo worker failed with exit status {child.returncode}")
        if target is None and finished is None:
            raise RuntimeError("demo worker ended without finishing the job")
    return recoveries, killed_at, finished


@dataclass
class LogAudit:
    """What the log alone says about an inference run: every output, rebuilt from its entries."""

    outputs_seen: int          # sample outputs over all record_outputs entries
    distinct: int              # distinct sample ids among them
    archived_entries: int      # entries read from the archive (compacted out of LMDB)
    first_index: int           # the oldest readable entry: 1 unless history was deleted
    outputs: torch.Tensor      # the outputs as the log records them, by sample id


def audit_inference_log(log) -> LogAudit:
    """Rebuild every sample's output from the log, archive included, without the journal's state."""
    outputs = torch.zeros(NUM_SAMPLES, CLASSES)
    seen = []
    for entry in log.entries():
        if entry.op == "record_outputs":
            ids = entry.payload["p"]["ids"]
            outputs[torch.tensor(ids)] = entry.payload["p"]["outputs"].cpu()
            seen.extend(ids)
    return LogAudit(len(seen), len(set(seen)), log.live_first_index - log.first_index, log.first_index, outputs)


def final_state(args, directory: Path) -> dict:
    """Recover the journal once more in this process and flatten its state for comparison."""
    job = Job(args.task, args.seed, torch.device(args.device), args.batch)
    with Journal.open(directory, state=job.state, ops=job.ops, snapshot=Every(), durability=args.durability,
                      snapshot_on_close=False, progress=False) as journal:
        audit = audit_inference_log(journal.log) if args.task == "inference" else None
        return comparable_state(job), audit


def _shared_flags(args) -> list[str]:
    return ["--task", args.task, "--steps", str(args.steps), "--seed", str(args.seed), "--device", args.device,
            "--batch", str(args.batch), "--snapshot-every", str(args.snapshot_every),
            "--durability", args.durability, "--digest-every", str(args.digest_every)]


def demo(args) -> int:
    torch.set_num_threads(1)  # identical kernels in the reference and in every worker
    rng = random.Random(args.seed)
    started = time.perf_counter()
    reference = run_reference(args.task, args.seed, torch.device(args.device), args.batch, args.steps)
    reference_seconds = time.perf_counter() - started
    with tempfile.TemporaryDirectory(prefix="replay-demo-") as tmp:
        directory = Path(args.dir) if args.dir else Path(tmp) / "journal"
        if directory.exists() and any(directory.iterdir()):
            print(f"replay demo: {directory} is not empty; pass a new --dir", file=sys.stderr)
            return 2
        started = time.perf_counter()
        recoveries, killed_at, finished = run_with_kills(args, directory, rng)
        journal_seconds = time.perf_counter() - started
        recovered, audit = final_state(args, directory)
    mismatched = [k for k in reference if k not in recovered or not _bit_equal(reference[k], recovered[k])]
    identical = not mismatched and reference.keys() == recovered.keys()
    # The log alone must hold every output, bit for bit what the recovered state holds.
    exactly_once = audit is None or (audit.outputs_seen == audit.distinct == NUM_SAMPLES and audit.first_index == 1
                                     and _bit_equal(audit.outputs, recovered["outputs"]))
    # A recovery must bring back at least what the killed worker had acknowledged as durable.
    kept = all(r["step"] >= k["durable"] for r, k in zip(recoveries[1:], killed_at))
    _report(args, reference_seconds, journal_seconds, recoveries, killed_at, finished, audit, mismatched)
    print(f"every durable step recovered: {'yes' if kept else 'no'}")
    print(f"bit-identical: {'yes' if identical else 'no'}")
    if args.task == "inference":
        print(f"every sample exactly once, every output in the log: {'yes' if exactly_once else 'no'}")
    return 0 if identical and exactly_once and kept else 1


def _bit_equal(a: torch.Tensor, b: torch.Tensor) -> bool:
    return fingerprint({"t": a}) == fingerprint({"t": b})


def _report(args, reference_seconds, journal_seconds, recoveries, killed_at, finished, audit, mismatched):
    unit, singular = ("steps", "step") if args.task == "train" else ("batches", "batch")
    total = args.steps if args.task == "train" else NUM_SAMPLES // args.batch
    lines = [
        ("task", f"{args.task} on {args.device}, {total} {unit} of {args.batch} samples, durability={args.durability}"),
        ("kills", f"{len(killed_at)} (SIGKILL after {unit} "
                  + (", ".join(f"{k['printed']} (durable through {k['durable']})" for k in killed_at) or "-") + ")"),
        ("uninterrupted reference", f"{reference_seconds:.2f} s (no journal)"),
        ("journaled run with kills", f"{journal_seconds:.2f} s including {len(recoveries)} process starts"),
    ]
    for n, (r, k) in enumerate(zip(recoveries[1:], killed_at), 1):
        lines.append((f"recovery {n}", f"snapshot at index {r['snapshot_index']}, replayed {r['replayed']} entries "
                                       f"in {r['seconds'] * 1000:.1f} ms, resumed at {singular} {r['step']}"
                                       f"{_lost_tail(args.durability, unit, r['step'], k)}"
                      + (f", {r['damaged_snapshots']} damaged snapshot(s) skipped" if r["damaged_snapshots"] else "")))
    for s in finished["snapshots"]:
        lines.append((f"snapshot @ {s['index']}", f"{s['bytes_logical'] / 1024:.0f} KiB logical, "
                                                 f"{s['bytes_written'] / 1024:.0f} KiB written, {s['bytes_stored'] / 1024:.0f} KiB stored"))
    if audit is not None:
        lines.append(("log audit", f"{audit.outputs_seen} sample outputs in the log, {audit.distinct} distinct, "
                                   f"{NUM_SAMPLES} samples; {audit.archived_entries} entries read from the archive "
                                   f"(compacted out of LMDB), log starts at entry {audit.first_index}"))
    if mismatched:
        lines.append(("differs from reference", ", ".join(mismatched[:10])))
    if sys.stdout.isatty():
        from rich.console import Console
        from rich.table import Table

        table = Table(title="replay demo: kill -9 and resume", show_header=False)
        for key, value in lines:
            table.add_row(key, value)
        Console().print(table)
    else:
        for key, value in lines:
            print(f"{key:>26}: {value}")


def _lost_tail(durability: str, unit: str, resumed: int, kill: dict) -> str:
    """Why a resumed run starts before the step printed last: the un-flushed tail."""
    printed, durable = kill["printed"], kill["durable"]
    if resumed < durable:
        return f" (DURABLE {unit.upper()} LOST: {unit} through {durable} were acknowledged durable)"
    if resumed >= printed:
        return ""
    return (f" ({printed - resumed} {unit} printed but not yet durable were lost, as durability={durability} "
            f"allows: apply returns before the commit; flush() waits for it)")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--task", choices=["train", "inference"], default="train")
    parser.add_argument("--steps", type=int, help="training steps (train task; default 2000, 200 with --ranks)")
    parser.add_argument("--kills", type=int, help="how many times to SIGKILL a worker (default 5, 3 with --ranks)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--snapshot-every", type=int, help="entries between snapshots (default 500, 40 with --ranks)")
    parser.add_argument("--durability", choices=["sync", "group", "os"], default="group")
    parser.add_argument("--digest-every", type=int,
                        help="entries between state digests (default 250, 20 with --ranks)")
    parser.add_argument("--dir", help="journal directory (default: a temporary one)")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    from . import demo_ranks  # lazily: only --ranks needs it (torch.distributed)

    demo_ranks.add_arguments(parser)


SINGLE_PROCESS_DEFAULTS = {"steps": 2000, "kills": 5, "snapshot_every": 500, "digest_every": 250}


def main(args) -> int:
    if args.ranks:
        from . import demo_ranks

        if args.task != "train":
            print("replay demo: --ranks runs the train task only", file=sys.stderr)
            return 2
        return demo_ranks.demo(args)
    for name, value in SINGLE_PROCESS_DEFAULTS.items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    if args.worker:
        torch.set_num_threads(1)
        return worker(args)
    return demo(args)
