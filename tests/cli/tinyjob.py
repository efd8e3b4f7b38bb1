"""A tiny journal job the CLI tests (and `--ops`/`--state`) import: `tests.cli.tinyjob:ops`, `:make_state`.

Run as a script it writes a journal, as a user's training loop would:

    python -m tests.cli.tinyjob DIR --steps N [--delay S] [--snapshot-every K] [--keep-last K] [--go FILE]

With --go, the job applies its first step, then waits (journal open, writer lock held)
until FILE exists before the rest: a test can start readers beside a writer that is
certainly still running, however slowly the machine starts them.
"""

from __future__ import annotations

import argparse
import inspect
import os
import sys
import time

import torch

import replay

ops = replay.Ops()


def make_state():
    """A fresh state of the journal's layout: a module, a bare tensor, a plain dict."""
    torch.manual_seed(0)
    return {"model": torch.nn.Linear(4, 3), "table": torch.zeros(3, 4), "counters": {"steps": 0}}


@ops.op
def step(state, *, x, lr):
    """A deterministic 'training step': the payload carries a tensor."""
    with torch.no_grad():
        model = state["model"]
        model.weight -= lr * torch.outer(model(x), x)
        model.bias -= lr * 0.5
    state["counters"]["steps"] += 1


@ops.op
def bump(state, *, row, value):
    state["table"][row] += value


@ops.op
def boom(state, *, row):
    state["table"][row] += 1000.0
    raise RuntimeError("boom")


def payload(i: int) -> tuple[str, dict]:
    """The i-th op of the job (deterministic)."""
    if i % 3 == 2:
        return "bump", {"row": (i // 3) % 3, "value": float(i)}
    g = torch.Generator().manual_seed(i)
    return "step", {"x": torch.randn(4, generator=g), "lr": 0.01}


def reference(index: int) -> dict:
    """The state after entry `index`, by applying the ops in a plain loop (no journal)."""
    state = make_state()
    for i in range(index):
        op, kwargs = payload(i)
        globals()[op](state, **kwargs)
    return state


def write(path, steps: int, delay: float = 0.0, snapshot_every: int = 10, keep_last: int = 3,
          keep_log: bool = True, start: int = 0, durability: str = "sync", go: str | None = None,
          snapshot_on_close: bool = False) -> None:
    """Apply ops start..start+steps-1 under a journal at `path`. Closing adds no snapshot
    unless asked (the CLI tests pin the layout: snapshots every `snapshot_every` only)."""
    options = {}
    if "snapshot_on_close" in inspect.signature(replay.Journal.open).parameters:
        options["snapshot_on_close"] = snapshot_on_close
    with replay.Journal.open(path, state=make_state(), ops=ops, snapshot=replay.Every(entries=snapshot_every),
                             keep_last=keep_last, keep_log=keep_log, async_snapshots=False,
                             durability=durability, **options) as journal:
        for i in range(start, start + steps):
            op, kwargs = payload(i)
            journal.apply(op, **kwargs)
            if delay:
                journal.flush()
                print(journal.index, flush=True)
                time.sleep(delay)
            while go is not None and i == start and not os.path.exists(go):
                time.sleep(0.02)


def main(argv=None) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("dir")
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--start", type=int, default=0)
    p.add_argument("--delay", type=float, default=0.0)
    p.add_argument("--snapshot-every", type=int, default=10)
    p.add_argument("--keep-last", type=int, default=3)
    p.add_argument("--compact", action="store_true")
    p.add_argument("--go", metavar="FILE", help="after the first step, wait until FILE exists")
    a = p.parse_args(argv)
    write(a.dir, a.steps, a.delay, a.snapshot_every, a.keep_last, keep_log=not a.compact, start=a.start, go=a.go)
    return 0


if __name__ == "__main__":
    sys.exit(main())
