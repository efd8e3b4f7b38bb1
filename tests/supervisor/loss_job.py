"""A small regression job that records its loss, for `replay report` under `replay run`.

    python loss_job.py DIR STEPS [--kill A:N ...]

Fits y = 3x - 1 by SGD; each step's loss is recorded (``@ops.op(record=("loss",))``),
so it decreases with the step. A:N: on attempt A (REPLAY_RUN_ATTEMPT), SIGKILL before step N.
"""

import argparse
import os
import signal

import torch

import replay

ops = replay.Ops()


@ops.op(record=("loss",))
def sgd(state, *, seed, lr):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(64, generator=g)
    y = 3 * x - 1
    w, b = state["w"], state["b"]
    err = w * x + b - y
    loss = (err ** 2).mean()
    w.sub_(lr * 2 * (err * x).mean())
    b.sub_(lr * 2 * err.mean())
    return {"loss": loss}


def main():
    p = argparse.ArgumentParser()
    p.add_argument("dir")
    p.add_argument("steps", type=int)
    p.add_argument("--kill", action="append", default=[])
    args = p.parse_args()
    kills = {tuple(map(int, k.split(":"))) for k in args.kill}
    attempt = int(os.environ.get("REPLAY_RUN_ATTEMPT", "0"))
    state = {"w": torch.zeros(()), "b": torch.zeros(())}
    with replay.Journal.open(args.dir, state=state, ops=ops, snapshot=replay.Every(entries=10), durability="sync",
                             environment="ignore") as journal:
        while journal.count("sgd") < args.steps:
            n = journal.count("sgd") + 1
            if (attempt, n) in kills:
                os.kill(os.getpid(), signal.SIGKILL)
            journal.apply("sgd", seed=n, lr=0.3)


if __name__ == "__main__":
    main()
