"""The cost of keeping a DataLoader under a Journal: steps/s of the journaled loop vs the plain one.

One training loop (a small MLP with dropout, AdamW, batches of 64 augmented 3x32x32
samples, a collate_fn, 2 DataLoader workers), three ways:

- ``plain``: ``torch.utils.data.DataLoader`` with a RandomSampler over as many epochs as
  the steps need (one pass, so the workers start once), the step called directly,
  dropout from the global RNG (what a user writes without this library);
- ``loader``: `replay.loader.JournaledLoader` (order from a DataCursor, batches built
  under ``seeded_rng`` on one intra-op thread) and the same step called directly, with
  ``consume(ids)`` and dropout under ``seeded_rng(seed)``: the loader's share;
- ``journaled``: the same, each step through ``journal.apply("train_step", **batch)`` in
  group durability (the default snapshot policy; the journal's share on top).

Steady-state steps/s is timed from the first batch's arrival (the workers' start is
reported apart, as ``startup_s``). CPU time per step, of the main process and of the
workers, is reported beside it: on a shared machine it is the steadier figure. Rounds are interleaved and the median reported. The
main process runs one intra-op thread (``--threads``): on 2 cores beside 2 busy
workers, a second OpenMP thread only spins (a step took 5x longer with it here).

Run: ``python -m bench dataloader [--steps N] [--rounds R]``. Results: bench/results/dataloader.json.
"""

from __future__ import annotations

import argparse
import gc
import resource
import statistics
import sys
import time

import torch

import replay
from replay.loader import JournaledLoader
from replay.rng import seeded_rng

from ._common import REPO, Workdir, finish, fmt, machine_info

SAMPLES, BATCH, WORKERS = 2048, 64, 2
MODES = ("plain", "loader", "journaled")


class Images(torch.utils.data.Dataset):
    """Synthetic 3x32x32 images with a random flip, a random shift and noise (global RNG, as transforms draw)."""

    def __init__(self):
        g = torch.Generator().manual_seed(0)
        self.x = torch.randn(SAMPLES, 3, 32, 32, generator=g)
        self.y = torch.randint(0, 10, (SAMPLES,), generator=g)

    def __len__(self):
        return SAMPLES

    def __getitem__(self, i):
        x = self.x[i]
        if torch.rand(()) < 0.5:
            x = x.flip(-1)
        dx, dy = torch.randint(-2, 3, (2,)).tolist()
        x = torch.roll(x, (dy, dx), dims=(1, 2))
        return x + 0.05 * torch.randn_like(x), self.y[i]


def collate(samples):
    xs, ys = zip(*samples)
    return torch.stack(xs), torch.stack(ys)


def _model():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 32 * 32, 256), torch.nn.ReLU(),
                                torch.nn.Dropout(0.2), torch.nn.Linear(256, 10))
    return model, torch.optim.AdamW(model.parameters(), lr=1e-3)


def _step(model, optim, x, y):
    loss = torch.nn.functional.cross_entropy(model(x), y)
    optim.zero_grad()
    loss.backward()
    optim.step()
    return loss.item()


def _timed(batches, step, steps: int) -> dict:
    """Run `steps` steps; wall time from the first batch on, and CPU time of this process and of
    the workers (counted once the exhausted iterator has joined them)."""
    started, cpu, workers = time.perf_counter(), time.process_time(), _children_cpu()
    first = None
    for n, batch in enumerate(batches):
        step(batch)
        if n == 0:
            first = time.perf_counter()
        if n + 1 == steps:
            break
    ended = time.perf_counter()
    main_cpu = time.process_time() - cpu
    batches.close()  # releases the DataLoader iterator, which joins its workers
    gc.collect()
    return {"startup_s": round(first - started, 3), "steps_per_s": round((steps - 1) / (ended - first), 2),
            "main_cpu_ms_per_step": round(main_cpu / steps * 1e3, 3),
            "worker_cpu_ms_per_step": round((_children_cpu() - workers) / steps * 1e3, 3)}


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _plain(steps: int) -> dict:
    model, optim = _model()
    images = Images()
    # One pass of as many shuffled epochs as the steps need: no worker restart per epoch,
    # as with the endless JournaledLoader.
    sampler = torch.utils.data.RandomSampler(images, num_samples=steps * BATCH,
                                             generator=torch.Generator().manual_seed(0))
    loader = torch.utils.data.DataLoader(images, batch_size=BATCH, sampler=sampler, collate_fn=collate,
                                         num_workers=WORKERS, generator=torch.Generator().manual_seed(0))

    def batches():
        yield from loader

    return _timed(batches(), lambda b: _step(model, optim, *b), steps)


def _journaled_parts():
    model, optim = _model()
    cursor = replay.DataCursor(SAMPLES, seed=0)
    loader = JournaledLoader(Images(), cursor, BATCH, collate_fn=collate, endless=True, num_workers=WORKERS)
    ops = replay.Ops()

    @ops.op(inputs=loader.rebuild)
    def train_step(state, *, ids, seed, inputs):
        state["data"].consume(ids)
        with seeded_rng(seed):
            return _step(state["model"], state["optim"], *inputs)

    return {"model": model, "optim": optim, "data": cursor}, loader, ops


def _loader(steps: int) -> dict:
    state, loader, ops = _journaled_parts()
    handler = ops.spec("train_step").handler
    return _timed(iter(loader), lambda batch: handler(state, **batch), steps)  # iter() is a generator


def _journaled(work: Workdir, steps: int) -> dict:
    state, loader, ops = _journaled_parts()
    with replay.Journal.open(work.new("journal"), state=state, ops=ops, durability="group") as journal:
        return _timed(iter(loader), lambda batch: journal.apply("train_step", **batch), steps)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench dataloader", description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=150, help="steps per measurement (default 150)")
    parser.add_argument("--rounds", type=int, default=6, help="interleaved rounds; the median is reported (default 6)")
    parser.add_argument("--threads", type=int, default=1, help="intra-op threads of the main process (default 1)")
    parser.add_argument("--dir", default="/tmp/bench-dataloader")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    started = time.time()
    work = Workdir(args.dir, "dataloader-")
    results = {"machine": machine_info(args.dir, ("replay", "bench/dataloader.py"), torch=torch.__version__),
               "config": {"samples": SAMPLES, "batch": BATCH, "workers": WORKERS, "steps": args.steps,
                          "rounds": args.rounds, "main_threads": args.threads},
               "modes": {}}
    try:
        rounds = {mode: [] for mode in MODES}
        for r in range(args.rounds):
            for mode in MODES[r % 3:] + MODES[:r % 3]:  # rotate the order: no mode always runs first
                rounds[mode].append(_journaled(work, args.steps) if mode == "journaled"
                                    else (_plain if mode == "plain" else _loader)(args.steps))
        keys = ("steps_per_s", "startup_s", "main_cpu_ms_per_step", "worker_cpu_ms_per_step")
        for mode, runs in rounds.items():
            results["modes"][mode] = {key: round(statistics.median(r[key] for r in runs), 3) for key in keys}
            results["modes"][mode]["rounds_steps_per_s"] = [r["steps_per_s"] for r in runs]
        plain = results["modes"]["plain"]
        for mode in MODES:
            row = results["modes"][mode]
            row["ratio_to_plain"] = round(row["steps_per_s"] / plain["steps_per_s"], 3)
            row["cpu_ratio_to_plain"] = round((row["main_cpu_ms_per_step"] + row["worker_cpu_ms_per_step"])
                                              / (plain["main_cpu_ms_per_step"] + plain["worker_cpu_ms_per_step"]), 3)
        print(f"{'mode':<10} {'steps/s':>9} {'vs plain':>9} {'main cpu ms':>12} {'worker cpu ms':>14} "
              f"{'cpu vs plain':>13} {'startup s':>10}   rounds (steps/s)")
        for mode, row in results["modes"].items():
            print(f"{mode:<10} {fmt(row['steps_per_s']):>9} {row['ratio_to_plain']:>9.3f} "
                  f"{fmt(row['main_cpu_ms_per_step']):>12} {fmt(row['worker_cpu_ms_per_step']):>14} "
                  f"{row['cpu_ratio_to_plain']:>13.3f} {fmt(row['startup_s']):>10}   {row['rounds_steps_per_s']}")
    finally:
        work.close()
    finish(results, REPO / "bench" / "results" / "dataloader.json", started, time.time())
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
