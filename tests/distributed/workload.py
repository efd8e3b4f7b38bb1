"""A real DDP workload for the multi-rank tests: Linear/ReLU/Linear under DistributedDataParallel, Adam, gloo.

`train(rank, world_size, root, options)` is a rank's whole program (the `Launcher`
target): build the model (from the init seed in `options`; a restart uses another one,
which recovery must overwrite), wrap it in DDP, open the multi-rank journal at `root`
(or none: `journal=False` is the plain reference loop), train to `steps`, and write the
final state's tensors to ``<out>/rank-<r>.safetensors`` with a JSON summary beside it.

Each step is one `train_step` entry whose payload holds this rank's own sample ids and
noise seed (every rank trains on different data; DDP's all-reduce makes the parameters
equal). The step counter is a state component, so a resumed run goes on from the
recovered step. Every flush's returned global index is appended to
``<out>/acks-rank-<r>.txt`` ("generation acknowledged-index entry-index step" per line), and every open's
recovery to ``<out>/opens-rank-<r>.jsonl``, for the no-acknowledged-entry-lost check.
"""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

SAMPLES, FEATURES, HIDDEN, CLASSES, BATCH = 256, 16, 96, 4, 8


def dataset() -> tuple[torch.Tensor, torch.Tensor]:
    """The fixed synthetic data set (the same on every rank and every run)."""
    g = torch.Generator().manual_seed(1234)
    return torch.randn(SAMPLES, FEATURES, generator=g), torch.randint(0, CLASSES, (SAMPLES,), generator=g)


def payload(step: int, rank: int) -> dict:
    """Step `step`'s payload on `rank`: its own sample ids and noise seed."""
    g = torch.Generator().manual_seed(100003 * step + rank)
    return {"ids": torch.randperm(SAMPLES, generator=g)[:BATCH].tolist(), "seed": 7919 * step + 31 * rank + 5}


# One bucket per parameter, on the first iteration and after DDP's bucket rebuild alike.
# DDP's default buckets differ between its first iteration (one bucket of every
# parameter) and the rest (rebuilt in gradient-ready order); gloo's ring all-reduce sums
# each element in an order set by its offset in the bucket, so with 3+ ranks a restarted
# DDP (first iteration again) adds in another order than the uninterrupted run did and
# the bytes differ (2 ranks: a + b = b + a, unaffected). test_ddp_baseline shows both.
EXACT_BUCKETS = {"bucket_cap_mb_list": [1e-6]}


def build(init: int, ddp_options: dict | None = None):
    """(state, ops) on the current process group; `init` seeds the model's initialisation;
    `ddp_options`: DistributedDataParallel keywords (default EXACT_BUCKETS)."""
    import replay

    torch.manual_seed(init)
    model = torch.nn.Sequential(torch.nn.Linear(FEATURES, HIDDEN), torch.nn.ReLU(), torch.nn.Linear(HIDDEN, CLASSES))
    ddp = DistributedDataParallel(model, **(EXACT_BUCKETS if ddp_options is None else ddp_options))
    # (the constructor broadcasts rank 0's parameters: replicas start equal)
    optim = torch.optim.Adam(ddp.parameters(), lr=1e-2)
    state = {"model": ddp, "optim": optim, "progress": {"step": 0}}
    x, y = dataset()
    ops = replay.Ops()

    @ops.op
    def train_step(state, *, ids, seed):
        g = torch.Generator().manual_seed(seed)
        inputs = x[ids] + 0.05 * torch.randn(len(ids), FEATURES, generator=g)
        loss = torch.nn.functional.cross_entropy(state["model"](inputs), y[ids])
        state["optim"].zero_grad()
        loss.backward()  # DDP's gradient all-reduce: a collective in the handler
        state["optim"].step()
        state["progress"]["step"] += 1
        return loss.item()

    return state, ops


class Shards:
    """A state component: this rank's shards of an FSDP2 model and of its Adam state, as plain tensors.

    The journal snapshots what state_dict returns (this rank's local shards: each rank
    its own) and load_state_dict copies into them in place, so the DTensors FSDP and
    the optimizer hold keep their storage. Adam's state is created up front (the values
    its first step would create), so every snapshot has the same layout.
    """

    def __init__(self, model: torch.nn.Module, optim: torch.optim.Adam):
        self.model, self.optim = model, optim
        for p in model.parameters():
            optim.state[p] = {"step": torch.tensor(0.0), "exp_avg": torch.zeros_like(p),
                              "exp_avg_sq": torch.zeros_like(p)}

    def state_dict(self) -> dict[str, torch.Tensor]:
        out = {f"model.{k}": _local(v) for k, v in self.model.state_dict().items()}
        for i, p in enumerate(self.model.parameters()):
            for name, value in self.optim.state[p].items():
                out[f"optim.{i}.{name}"] = _local(value)
        return out

    def load_state_dict(self, state_dict: dict) -> None:
        with torch.no_grad():
            for name, target in self.state_dict().items():
                target.copy_(state_dict[name])


def _local(t: torch.Tensor) -> torch.Tensor:
    return t.to_local() if hasattr(t, "to_local") else t


def build_fsdp(init: int):
    """(state, ops) like `build`, the model sharded with FSDP2 (fully_shard per layer) over the group."""
    import replay
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    torch.manual_seed(init)
    model = torch.nn.Sequential(torch.nn.Linear(FEATURES, HIDDEN), torch.nn.ReLU(), torch.nn.Linear(HIDDEN, CLASSES))
    # Each rank's init differs after a restart; FSDP shards what each rank holds, so
    # start from rank 0's (as DDP does) to make the first generation's state the reference's.
    for p in model.parameters():
        dist.broadcast(p.data, 0)
    mesh = init_device_mesh("cpu", (dist.get_world_size(),))
    for layer in (model[0], model[2]):
        fully_shard(layer, mesh=mesh)
    fully_shard(model, mesh=mesh)
    optim = torch.optim.Adam(model.parameters(), lr=1e-2)
    state = {"model": Shards(model, optim), "progress": {"step": 0}}
    x, y = dataset()
    ops = replay.Ops()

    @ops.op
    def train_step(state, *, ids, seed):
        g = torch.Generator().manual_seed(seed)
        inputs = x[ids] + 0.05 * torch.randn(len(ids), FEATURES, generator=g)
        loss = torch.nn.functional.cross_entropy(model(inputs), y[ids])
        optim.zero_grad()
        loss.backward()  # FSDP's reduce-scatter of the gradients: collectives in the handler
        optim.step()
        state["progress"]["step"] += 1
        return loss.item()

    return state, ops


def tensors(state) -> dict[str, torch.Tensor]:
    """Every tensor of the state by name (model parameters and buffers, Adam's moments and steps, the step)."""
    if isinstance(state["model"], Shards):
        out = {k: v.detach().clone().contiguous() for k, v in state["model"].state_dict().items()}
        out["progress.step"] = torch.tensor([state["progress"]["step"]], dtype=torch.int64)
        return out
    out = {f"model.{k}": v.detach().clone().contiguous() for k, v in state["model"].state_dict().items()}
    for pid, entry in state["optim"].state_dict()["state"].items():
        for name, value in entry.items():
            value = value if torch.is_tensor(value) else torch.tensor(value)
            out[f"optim.{pid}.{name}"] = value.detach().clone().contiguous()
    out["progress.step"] = torch.tensor([state["progress"]["step"]], dtype=torch.int64)
    return out


def write_result(out: Path, rank: int, state, summary: dict) -> None:
    from safetensors.torch import save_file

    save_file(tensors(state), str(out / f"rank-{rank}.safetensors"))
    (out / f"rank-{rank}.json").write_text(json.dumps(summary))


def _append(path: Path, line: str) -> None:
    """One write(2) on O_APPEND: a SIGKILL leaves the line whole or absent."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        os.write(fd, line.encode())
    finally:
        os.close(fd)


def train(rank: int, world_size: int, root: str, options: dict) -> None:
    """A rank's program (see the module doc). Options: steps, out, init (model seed),
    journal (bool), ddp (DDP keywords), fsdp (bool: FSDP2 instead of DDP), generation, snapshot_every, keep_last, digest_every, die_at_step
    (SIGKILL itself right after applying that step, before its flush; only rank die_rank
    if given),
    journal_options (more Journal.open keywords)."""
    import replay

    torch.use_deterministic_algorithms(True)
    out = Path(options["out"])
    if options.get("fsdp"):
        state, ops = build_fsdp(options.get("init", 0))
    else:
        state, ops = build(options.get("init", 0), options.get("ddp"))
    steps, die_at = options["steps"], options.get("die_at_step")
    generation = options.get("generation", 0)
    if not options.get("journal", True):
        handler = ops.spec("train_step").handler
        for step in range(steps):
            handler(state, **payload(step, rank))
        write_result(out, rank, state, {"step": steps})
        return
    journal_options = dict(snapshot=replay.Every(entries=options.get("snapshot_every", 5)),
                           keep_last=options.get("keep_last", 2), digest_every=options.get("digest_every"))
    journal_options.update(options.get("journal_options", {}))
    opening = time.monotonic()
    with replay.Journal.open(root, state=state, ops=ops, group=dist.group.WORLD, **journal_options) as journal:
        recovery = journal.recovery
        _append(out / f"opens-rank-{rank}.jsonl", json.dumps({
            "generation": generation, "index": journal.index, "step": state["progress"]["step"],
            "cut": getattr(recovery, "cut", None), "truncated": getattr(recovery, "truncated", None),
            "snapshot": getattr(recovery, "snapshot_index", None),
            "damaged": len(getattr(recovery, "damaged_snapshots", [])),
            "seconds": round(time.monotonic() - opening, 3), "text": str(recovery)[:2000]}) + "\n")
        while state["progress"]["step"] < steps:
            step = state["progress"]["step"]
            index = journal.index + 1  # the entry's index (journal.index may be a digest after it)
            journal.apply("train_step", **payload(step, rank))
            if step == die_at and rank == options.get("die_rank", rank):
                os.kill(os.getpid(), signal.SIGKILL)
            acked = journal.flush()
            _append(out / f"acks-rank-{rank}.txt", f"{generation} {acked} {index} {step}\n")
        summary = {"index": journal.index, "step": state["progress"]["step"], "world_size": journal.world_size,
                   "rank": journal.rank}
    write_result(out, rank, state, summary)
