"""A 2-rank DDP job (gloo) for tests/supervisor: run as
`replay run DIR -- torchrun --standalone --nproc-per-node 2 --max-restarts 0 ddp_job.py DIR STEPS [...]`.

--kill A:R:N   on attempt A, rank R SIGKILLs itself before step N
--hang A:R:N   on attempt A, rank R blocks forever in stuck_in_collective() before step N
At the end every rank writes DIR/final-rank<r>.json with its parameters' bytes (hex).
"""

import datetime
import json
import os
import signal
import sys
import time

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel as DDP

import replay


def stuck_in_collective():
    while True:
        time.sleep(3600)


def spec(text):
    return tuple(int(x) for x in text.split(":"))


def main():
    directory, steps = sys.argv[1], int(sys.argv[2])
    kills = [spec(v) for k, v in zip(sys.argv[3::2], sys.argv[4::2]) if k == "--kill"]
    hangs = [spec(v) for k, v in zip(sys.argv[3::2], sys.argv[4::2]) if k == "--hang"]
    attempt = int(os.environ.get("REPLAY_RUN_ATTEMPT", "0"))
    dist.init_process_group("gloo", timeout=datetime.timedelta(seconds=120))
    rank, world = dist.get_rank(), dist.get_world_size()
    torch.manual_seed(0)
    model = DDP(torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 1)))
    optim = torch.optim.SGD(model.parameters(), lr=0.05)
    ops = replay.Ops()

    @ops.op(record=("loss",))  # each rank records its own loss, in its rank directory
    def train_step(state, *, seed):
        with replay.seeded_rng(seed):
            x = torch.randn(4, 8)
        state["optim"].zero_grad()
        loss = torch.nn.functional.mse_loss(state["model"](x), x.sum(1, keepdim=True))
        loss.backward()
        state["optim"].step()
        return loss.detach()

    try:
        with replay.Journal.open(directory, state={"model": model, "optim": optim}, ops=ops, group=dist.group.WORLD,
                                 snapshot=replay.Every(entries=8), durability="sync", environment="ignore") as journal:
            for step in range(journal.count(), steps):
                if (attempt, rank, step) in kills:
                    os.kill(os.getpid(), signal.SIGKILL)
                if (attempt, rank, step) in hangs:
                    stuck_in_collective()
                journal.apply("train_step", seed=step * world + rank)
            journal.flush()
        weights = torch.cat([p.detach().flatten() for p in model.parameters()])
        with open(os.path.join(directory, f"final-rank{rank}.json"), "w") as f:
            json.dump({"w": weights.numpy().tobytes().hex()}, f)
    except Exception as exc:
        print(f"rank {rank}: {type(exc).__name__}: {str(exc).splitlines()[0][:200]}", flush=True)
        sys.exit(1)
    finally:
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
