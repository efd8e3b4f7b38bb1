"""A small training job for tests/supervisor: run under `replay run`, misbehaving on purpose.

    python job.py DIR STEPS [--kill A:N ...] [--hang A:N] [--raise-at N] [--oom A:N]
                            [--exit-after-open] [--preemption] [--replica URL] [--step-seconds S]

A:N means "on attempt A (REPLAY_RUN_ATTEMPT), at step N". At the end it writes
DIR/final.json with the state's bytes (hex), and prints the recovery report.
"""

import argparse
import json
import os
import signal
import sys
import time

import torch

import replay

ops = replay.Ops()


@ops.op
def step(state, *, seed, raise_here=False, oom_here=False):
    w = state["w"]
    g = torch.Generator().manual_seed(seed)
    w.mul_(0.9).add_(torch.randn(w.shape, generator=g))
    if raise_here:
        raise ValueError(f"bad batch at seed {seed}")
    if oom_here:
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB (simulated)")


def stuck_in_data_loading():
    """Blocks forever, as a hung DataLoader worker or a dead collective would."""
    while True:
        time.sleep(3600)


def attempt_step(specs, attempt, n):
    return any(a == attempt and s == n for a, s in specs)


def parse_spec(text):
    a, s = text.split(":")
    return int(a), int(s)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("dir")
    p.add_argument("steps", type=int)
    p.add_argument("--kill", type=parse_spec, action="append", default=[])
    p.add_argument("--hang", type=parse_spec, action="append", default=[])
    p.add_argument("--oom", type=parse_spec, action="append", default=[])
    p.add_argument("--raise-at", type=int, default=None)
    p.add_argument("--exit-after-open", action="store_true")
    p.add_argument("--preemption", action="store_true")
    p.add_argument("--ready", default=None, help="a file to create once step READY_AT is applied")
    p.add_argument("--ready-at", type=int, default=3)
    p.add_argument("--replica", default=None, help="a replica URL (file://...)")
    p.add_argument("--step-seconds", type=float, default=0.0, help="sleep after each step")
    args = p.parse_args()
    attempt = int(os.environ.get("REPLAY_RUN_ATTEMPT", "0"))
    print(f"job: attempt {attempt} last-class {os.environ.get('REPLAY_RUN_LAST_CLASS', '')!r} "
          f"alloc-conf {os.environ.get('PYTORCH_CUDA_ALLOC_CONF', '')!r}", flush=True)
    state = {"w": torch.zeros(16)}
    preemption = replay.Preemption() if args.preemption else None
    with replay.Journal.open(args.dir, state=state, ops=ops, snapshot=replay.Every(entries=4), durability="sync",
                             environment="ignore", preemption=preemption, replica=args.replica,
                             ship_interval=0.2) as journal:
        print(f"job: replayed {journal.recovery.entries_replayed} from index {journal.index}", flush=True)
        if args.exit_after_open:
            sys.exit(3)
        while journal.count("step") < args.steps:
            n = journal.count("step") + 1
            if attempt_step(args.kill, attempt, n):
                os.kill(os.getpid(), signal.SIGKILL)
            if attempt_step(args.hang, attempt, n):
                stuck_in_data_loading()
            journal.apply("step", seed=n, raise_here=args.raise_at == n, oom_here=attempt_step(args.oom, attempt, n))
            if args.ready and n == args.ready_at:
                open(args.ready, "w").close()
            if args.step_seconds:
                time.sleep(args.step_seconds)
            if args.preemption:
                time.sleep(0.05)  # a step that takes a while: the preemption lands between steps
    with open(os.path.join(args.dir, "final.json"), "w") as f:
        json.dump({"w": state["w"].numpy().tobytes().hex()}, f)


if __name__ == "__main__":
    main()
