"""``python -m replay demo --ranks N``: DDP training on N ranks under torchrun, SIGKILL a
random rank at random moments, let torchrun's elastic agent restart the group, and prove
every rank ends bit-identical to an uninterrupted run of the same world size.

The parent (this process) launches ``python -m torch.distributed.run --standalone
--nproc-per-node=N --max-restarts=K -m replay.demo_ranks --worker ...`` exactly as a
user would launch training. Each worker opens a multi-rank Journal (group=WORLD:
recovery agrees on a cut and replays in lockstep, DDP's all-reduce included) and
reports on stdout, one JSON line per event, which the workers share with the agent.
The parent finds the workers as children of the agent (/proc) and SIGKILLs one at a
random moment of each group generation but the last: after a random training step, or
a random time after the group starts opening (often mid-recovery). The agent sees the
dead worker, tears the group down and starts a new one; the journal recovers.

The uninterrupted reference runs in the last generation, after its journal is closed:
a fresh model and optimizer, DDP over the same process group, the same payloads, no
journal and no kill. Workers send a hash of every tensor's bytes (parameters, AdamW
moments and steps, data position) of both states; the parent compares each rank's
journaled state with its reference and the replicated parts (model, optimizer) across
ranks.

The environment of the agent gets ``TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1``: without it a
restarted group can read the dead group's gloo addresses and hang (pytorch#135712).
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
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
from .demo_model import NUM_SAMPLES, MLP, synthetic_dataset, train_step as shared_train_step
from .determinism import fingerprint
from .ops import Ops
from .policies import Every

TAG = "replay-demo"  # every worker message is a JSON object carrying this key
DEFAULTS = {"steps": 200, "kills": 3, "snapshot_every": 40, "digest_every": 20}
REPLICATED = ("model.", "optim.")  # state keys identical on every rank (data order is per rank)


# ----------------------------------------------------------------------------- the job


class RankJob:
    """One rank's share of the DDP job; built identically for the journaled run and the reference.

    The model is replicated (DDP broadcasts rank 0's initial weights and averages the
    gradients); each rank draws its own batches (its own DataCursor order) and its own
    dropout masks (payload seeds salted with the rank)."""

    def __init__(self, seed: int, rank: int, device: torch.device, batch: int):
        import torch.distributed as dist
        from torch.nn.parallel import DistributedDataParallel

        torch.manual_seed(seed)
        self.seed, self.rank, self.device, self.batch = seed, rank, device, batch
        self.x, self.y = synthetic_dataset(seed, device)
        self.net = MLP().to(device)
        ids = [device.index] if device.type == "cuda" else None
        # find_unused_parameters=True keeps DDP's gradient buckets as built here: without it DDP
        # rebuilds them after a process's first backward, so a group that resumes from a
        # snapshot (replaying its first step with the initial layout) sums gradients in
        # another order than the run that wrote the log; with 3+ ranks that changes bits.
        self.model = DistributedDataParallel(self.net, device_ids=ids, process_group=dist.group.WORLD,
                                             find_unused_parameters=True)
        self.optim = torch.optim.AdamW(self.model.parameters(), lr=1e-3, weight_decay=0.01)
        self.data = DataCursor(NUM_SAMPLES, seed * 1009 + rank)
        self.state = {"model": self.model, "optim": self.optim, "data": self.data}
        self.ops = Ops()
        self.ops.op(self.train_step)

    def step(self) -> int:
        return self.data.consumed // self.batch

    def payload(self, step: int) -> dict:
        return {"ids": self.data.peek(self.batch), "seed": self.seed * 1_000_003 + step * 1009 + self.rank,
                "lr": 1e-3 * min(1.0, (step + 1) / 50)}

    def train_step(self, state, *, ids, seed, lr):
        shared_train_step(state, self.x, self.y, ids=ids, seed=seed, lr=lr)  # DDP all-reduces in its backward

    def hashes(self) -> dict[str, str]:
        """A hash of each tensor's dtype, shape and bytes, by name: equal iff bit-identical."""
        flat = {f"model.{k}": v for k, v in self.net.state_dict().items()}
        for pid, slots in self.optim.state_dict()["state"].items():
            for slot, value in slots.items():
                flat[f"optim.{pid}.{slot}"] = torch.as_tensor(value)
        flat["data.consumed"] = torch.tensor(self.data.consumed)
        out = {}
        for name, tensor in flat.items():
            ((dtype, shape, raw),) = fingerprint({"t": tensor}).values()
            out[name] = hashlib.sha256(f"{dtype}|{shape}|".encode() + raw).hexdigest()[:32]
        return out


# ----------------------------------------------------------------------------- the worker


def emit(event: str, **fields) -> None:
    """One line to the parent, in one write(2) of under PIPE_BUF bytes: atomic on the pipe the ranks share."""
    fields.update({TAG: event, "rank": int(os.environ.get("RANK", 0)),
                   "restart": int(os.environ.get("TORCHELASTIC_RESTART_COUNT", 0)), "pid": os.getpid()})
    line = (json.dumps(fields, separators=(",", ":")) + "\n").encode()
    if len(line) > 4096:
        raise ValueError(f"demo message {event!r} is {len(line)} bytes, over PIPE_BUF")
    sys.stdout.flush()
    os.write(sys.stdout.fileno(), line)


def worker(args) -> int:
    """One rank under torchrun: open (recover) the journal, train to the last step, then run the reference."""
    import torch.distributed as dist

    from .journal import Journal

    torch.set_num_threads(1)
    local_rank = int(os.environ["LOCAL_RANK"])
    device = torch.device(f"cuda:{local_rank}") if args.device == "cuda" else torch.device("cpu")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    # A short timeout: a peer that died mid-collective surfaces as an error, not a hang.
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo",
                            timeout=datetime.timedelta(seconds=args.pg_timeout))
    try:
        rank = dist.get_rank()
        emit("started")
        job = RankJob(args.seed, rank, device, args.batch)
        emit("opening")
        started = time.perf_counter()
        with Journal.open(args.dir, state=job.state, ops=job.ops, group=dist.group.WORLD,
                          snapshot=Every(entries=args.snapshot_every), digest_every=args.digest_every,
                          progress=False) as journal:
            r = journal.recovery
            emit("recovered", cut=r.cut, truncated=len(r.truncated), snapshot_index=r.snapshot_index,
                 replayed=len(r.replayed), recovery_s=r.seconds, open_s=time.perf_counter() - started,
                 index=journal.index, step=job.step(), damaged=len(r.damaged_snapshots))
            acknowledged_step = job.step()  # recovered: every rank holds it
            while (step := job.step()) < args.steps:
                journal.apply("train_step", **job.payload(step))
                if (step + 1) % args.flush_every == 0:
                    journal.flush()  # the global durable index: what every rank has made durable
                    acknowledged_step = step + 1
                if rank == 0:  # a step printed is applied; only a flushed one is acknowledged
                    emit("step", step=step + 1, acknowledged=acknowledged_step)
            acknowledged = journal.flush()
            index, snapshots = journal.index, [s.index for s in journal.snapshots.list()]
        journaled, journal_seconds = job.hashes(), time.perf_counter() - started
        # The uninterrupted reference: a fresh job, the same payloads, no journal.
        started = time.perf_counter()
        reference = RankJob(args.seed, rank, device, args.batch)
        for step in range(args.steps):
            reference.train_step(reference.state, **reference.payload(step))
        # The hashes go to a file: over PIPE_BUF, they could interleave with the other ranks' lines.
        result = {"journaled": journaled, "reference": reference.hashes()}
        path = Path(args.results) / f"rank-{rank}.json"
        path.with_suffix(".tmp").write_text(json.dumps(result))
        path.with_suffix(".tmp").replace(path)
        emit("done", index=index, acknowledged=acknowledged, snapshots=snapshots, journal_s=journal_seconds,
             reference_s=time.perf_counter() - started)
    finally:
        dist.destroy_process_group()
    return 0


# ----------------------------------------------------------------------------- the parent


@dataclass
class Generation:
    """What the parent saw of one group generation (one start of the worker group by the agent)."""

    number: int
    pids: dict[int, int] = field(default_factory=dict)          # rank -> worker pid
    opening: set[int] = field(default_factory=set)              # ranks that began opening the journal
    recovered: dict[int, dict] = field(default_factory=dict)    # rank -> its recovery message
    done: dict[int, dict] = field(default_factory=dict)         # rank -> its final message
    last_step: int = 0
    acknowledged: int = 0                                       # the step of the last global flush
    kill: dict | None = None                                    # {"rank", "pid", "after_step", "phase"}


def agent_children(agent_pid: int) -> set[int]:
    """Pids of the agent's child processes (its workers), from /proc."""
    children = set()
    for task in Path(f"/proc/{agent_pid}/task").glob("*"):
        try:
            children.update(int(p) for p in (task / "children").read_text().split())
        except OSError:
            continue
    return children


def plan_kills(args, rng: random.Random) -> list[tuple[str, float]]:
    """One kill per generation but the last: ("step", target step) or ("open", seconds after every rank began
    opening the journal: recovery takes a few hundred ms here, so the kill often lands in it)."""
    kills = min(args.kills, args.steps - 1)
    # One target in each of `kills` equal stretches of the run: spread out, and still random.
    bounds = [1 + k * (args.steps - 1) // kills for k in range(kills + 1)]
    steps = [rng.randrange(lo, hi) for lo, hi in zip(bounds, bounds[1:])]
    plan = []
    for n, target in enumerate(steps):
        if n > 0 and rng.random() < 1 / 3:
            plan.append(("open", rng.uniform(0.0, 0.3)))
        else:
            plan.append(("step", target))
    return plan


def run_with_kills(args, directory: Path, results: Path, rng: random.Random,
                   stderr) -> tuple[list[Generation], int, list[str]]:
    """Launch torchrun and kill per the plan; (the generations seen, torchrun's exit status, other output lines)."""
    plan = plan_kills(args, rng)
    env = dict(os.environ, TORCH_DISABLE_SHARE_RDZV_TCP_STORE="1", OMP_NUM_THREADS="1")
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={args.ranks}",
               f"--max-restarts={len(plan)}", "--monitor-interval=0.1", "-m", "replay.demo_ranks", "--worker",
               "--dir", str(directory), "--results", str(results), *_worker_flags(args)]
    generations: dict[int, Generation] = {}
    other: list[str] = []
    agent = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=stderr, text=True, bufsize=1, env=env)
    try:
        for line in agent.stdout:
            message = _parse(line)
            if message is None:
                other.append(line.rstrip())
                continue
            gen = generations.setdefault(message["restart"], Generation(message["restart"]))
            event, rank = message[TAG], message["rank"]
            if event == "started":
                gen.pids[rank] = message["pid"]
            elif event == "opening":
                gen.opening.add(rank)
            elif event == "recovered":
                gen.recovered[rank] = message
            elif event == "done":
                gen.done[rank] = message
            elif event == "step":
                gen.last_step, gen.acknowledged = message["step"], message["acknowledged"]
            if gen.kill is not None or gen.number >= len(plan) or len(gen.pids) < args.ranks:
                continue
            kind, at = plan[gen.number]
            if kind == "open" and event == "opening" and len(gen.opening) == args.ranks:
                time.sleep(at)
                _kill(agent.pid, gen, rng, args.ranks)
            elif kind == "step" and event == "step" and message["step"] >= at:
                time.sleep(rng.uniform(0, 0.02))  # anywhere in the next step: apply, flush, snapshot
                _kill(agent.pid, gen, rng, args.ranks)
    finally:
        agent.stdout.close()
        status = agent.wait()
    for gen in generations.values():
        if gen.kill is not None:
            gen.kill["phase"] = "after recovery" if gen.kill["rank"] in gen.recovered else "during recovery"
    return [generations[n] for n in sorted(generations)], status, other


def _kill(agent_pid: int, gen: Generation, rng: random.Random, ranks: int) -> None:
    rank = rng.randrange(ranks)
    pid = gen.pids[rank]
    if pid not in agent_children(agent_pid):
        raise RuntimeError(f"rank {rank}'s worker (pid {pid}) is not a child of the torchrun agent {agent_pid}")
    os.kill(pid, signal.SIGKILL)
    gen.kill = {"rank": rank, "pid": pid, "after_step": gen.last_step, "acknowledged": gen.acknowledged}


def _parse(line: str) -> dict | None:
    if not line.startswith("{"):
        return None
    try:
        message = json.loads(line)
    except ValueError:
        return None
    return message if isinstance(message, dict) and TAG in message else None


def _worker_flags(args) -> list[str]:
    return ["--steps", str(args.steps), "--seed", str(args.seed), "--device", args.device, "--batch",
            str(args.batch), "--snapshot-every", str(args.snapshot_every), "--digest-every", str(args.digest_every),
            "--flush-every", str(args.flush_every), "--pg-timeout", str(args.pg_timeout)]


def compare(results: Path, ranks: int) -> tuple[list[str], list[str], int]:
    """(differences from the reference, differences between ranks) as 'rank r: key' strings, tensors per rank."""
    final = {rank: json.loads((results / f"rank-{rank}.json").read_text()) for rank in range(ranks)}
    versus_reference, across_ranks = [], []
    for rank, message in sorted(final.items()):
        journaled, reference = message["journaled"], message["reference"]
        for key in sorted(journaled.keys() | reference.keys()):
            if journaled.get(key) != reference.get(key):
                versus_reference.append(f"rank {rank}: {key}")
    base = final[min(final)]["journaled"]
    for rank, message in sorted(final.items()):
        for key in sorted(base.keys() | message["journaled"].keys()):
            if key.startswith(REPLICATED) and base.get(key) != message["journaled"].get(key):
                across_ranks.append(f"rank {rank}: {key}")
    return versus_reference, across_ranks, len(base)


def demo(args) -> int:
    for name, value in DEFAULTS.items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    if args.ranks < 1 or args.steps < 2 or args.kills < 0:
        print("replay demo: --ranks must be >= 1, --steps >= 2 and --kills >= 0", file=sys.stderr)
        return 2
    if args.device == "cuda" and torch.cuda.device_count() < args.ranks:
        print(f"replay demo: --ranks {args.ranks} on cuda needs {args.ranks} GPUs (NCCL gives each rank its own); "
              f"this machine has {torch.cuda.device_count()}", file=sys.stderr)
        return 2
    rng = random.Random(args.seed)
    with tempfile.TemporaryDirectory(prefix="replay-demo-ranks-") as tmp:
        directory = Path(args.dir) if args.dir else Path(tmp) / "journal"
        if directory.exists() and any(directory.iterdir()):
            print(f"replay demo: {directory} is not empty; pass a new --dir", file=sys.stderr)
            return 2
        results = Path(tmp) / "results"
        results.mkdir()
        started = time.perf_counter()
        with open(Path(tmp) / "agent.stderr", "w+") as stderr:
            generations, status, other = run_with_kills(args, directory, results, rng, stderr)
            seconds = time.perf_counter() - started
            stderr.seek(0)
            agent_log = stderr.read()
        final = generations[-1].done if generations else {}
        if status != 0 or len(final) != args.ranks:
            print(f"replay demo: torchrun exited with status {status} after {len(generations)} generation(s), "
                  f"{len(final)} of {args.ranks} ranks finished; its output:", file=sys.stderr)
            print("\n".join(other[-40:]) + "\n" + agent_log[-6000:], file=sys.stderr)
            return 1
        versus_reference, across_ranks, tensors = compare(results, args.ranks)
    kills = [g.kill for g in generations if g.kill is not None]
    _report(args, generations, kills, seconds, versus_reference, across_ranks, tensors)
    identical = not versus_reference and not across_ranks
    print(f"bit-identical: {'yes' if identical else 'no'}")
    return 0 if identical else 1


def _report(args, generations, kills, seconds, versus_reference, across_ranks, tensors) -> None:
    final = generations[-1].done
    backend = "nccl" if args.device == "cuda" else "gloo"
    killed = ", ".join(f"rank {k['rank']} " + (f"after step {k['after_step']} (acknowledged through "
                                               f"{k['acknowledged']})" if k["phase"] == "after recovery"
                                               else "during recovery") for k in kills)
    lines = [
        ("task", f"DDP training on {args.device} ({backend}), {args.ranks} ranks under torchrun, {args.steps} steps "
                 f"of {args.batch} samples per rank"),
        ("kills", f"{len(kills)} SIGKILLs ({killed or '-'})"),
        ("restarts", f"{len(generations) - 1} by torchrun's elastic agent (--max-restarts={len(kills)})"),
        ("journaled run with kills", f"{seconds:.1f} s including {len(generations)} group starts and the reference"),
    ]
    killed_in = {gen.number: gen.kill for gen in generations if gen.kill is not None}
    for gen in generations[1:]:
        if not gen.recovered:
            lines.append((f"restart {gen.number}", "killed during recovery, before any rank finished it"))
            continue
        some = next(iter(gen.recovered.values()))
        truncated = {r: m["truncated"] for r, m in sorted(gen.recovered.items()) if m["truncated"]}
        slowest = max(m["recovery_s"] for m in gen.recovered.values())
        text = (f"cut at index {some['cut']}, "
                + (", ".join(f"rank {r} truncated {n}" for r, n in truncated.items()) or "nothing truncated")
                + f"; snapshot @ {some['snapshot_index']}, replayed {some['replayed']} entries in lockstep, "
                  f"{slowest * 1000:.0f} ms; resumed at step {some['step']}"
                + _unacknowledged_tail(some["step"], killed_in.get(gen.number - 1))
                + ("" if len(gen.recovered) == args.ranks else f" ({len(gen.recovered)} of {args.ranks} ranks "
                                                                 "recovered before the kill)"))
        lines.append((f"restart {gen.number}", text))
    indexes = sorted({m["index"] for m in final.values()})
    some = next(iter(final.values()))
    lines.append(("final", f"index {', '.join(map(str, indexes))} on every rank, acknowledged "
                           f"{some['acknowledged']}; snapshots at {', '.join(map(str, some['snapshots']))}"))
    lines.append(("reference", f"uninterrupted DDP run, {args.ranks} ranks, no journal, "
                               f"{tensors} tensors per rank compared, bit for bit ({some['reference_s']:.1f} s)"))
    lines.append(("ranks agree", "yes" if not across_ranks else "no: " + ", ".join(across_ranks[:6])))
    if versus_reference:
        lines.append(("differs from reference", ", ".join(versus_reference[:8])))
    for key, value in lines:
        print(f"{key:>26}: {value}")


def _unacknowledged_tail(resumed: int, kill: dict | None) -> str:
    """Why a restarted group resumes before the step printed last: steps after the last flush."""
    if kill is None or kill["phase"] != "after recovery" or resumed >= kill["after_step"]:
        return ""
    if resumed < kill["acknowledged"]:
        return f" (ACKNOWLEDGED STEPS LOST: steps through {kill['acknowledged']} were acknowledged)"
    return (f" ({kill['after_step'] - resumed} steps printed after the last acknowledged flush were dropped: "
            "only what flush() returned is promised on every rank)")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options only the multi-rank demo has (the shared ones live in replay/demo.py)."""
    parser.add_argument("--ranks", type=int, default=0,
                        help="run DDP on this many ranks under torchrun (0: the single-process demo)")
    parser.add_argument("--flush-every", type=int, default=10, help="steps between global flushes (--ranks)")
    parser.add_argument("--pg-timeout", type=float, default=30.0, help=argparse.SUPPRESS)


def _worker_main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="replay.demo_ranks")
    parser.add_argument("--worker", action="store_true", required=True)
    parser.add_argument("--dir", required=True)
    parser.add_argument("--results", required=True)
    for name in ("--steps", "--seed", "--batch", "--snapshot-every", "--digest-every", "--flush-every"):
        parser.add_argument(name, type=int, required=True)
    parser.add_argument("--device", required=True)
    parser.add_argument("--pg-timeout", type=float, required=True)
    return worker(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(_worker_main(sys.argv[1:]))
