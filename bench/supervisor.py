"""The cost of `replay run`'s heartbeat on `Journal.apply`.

A journal opened under `replay run` updates a mapped heartbeat file twice per apply (the
op being applied, then the index applied): memory writes, no system call. This measures
a no-op handler's apply in group mode with and without the link, in interleaved rounds
in one process, and reports the median of per-round ratios; the link alone (two
updates) is timed too.

Run: ``python -m bench supervisor [--n N] [--rounds R]``. Results: bench/results/supervisor.json.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import torch

import replay
from replay.supervisor import layout
from replay.supervisor.link import SupervisorLink

from ._common import REPO, Workdir, finish, machine_info


def _per_call_us(fn, n: int) -> float:
    started = time.perf_counter()
    for _ in range(n):
        fn()
    return (time.perf_counter() - started) / n * 1e6


def _apply_us(work: Workdir, supervised: bool, n: int) -> float:
    ops = replay.Ops()

    @ops.op
    def noop(state, *, step):
        pass

    path = work.new("journal")
    saved = {k: os.environ.get(k) for k in (layout.ENV_JOURNAL, layout.ENV_ATTEMPT)}
    if supervised:
        layout.records_dir(path).mkdir(parents=True)
        os.environ[layout.ENV_JOURNAL] = str(path)
        os.environ[layout.ENV_ATTEMPT] = "1"
    try:
        with replay.Journal.open(path, state={"t": torch.zeros(1)}, ops=ops, snapshot=replay.Every(),
                                 environment="ignore") as journal:
            assert isinstance(journal._link, SupervisorLink) == supervised
            counter = iter(range(10**9))
            return _per_call_us(lambda: journal.apply("noop", step=next(counter)), n)
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench supervisor", description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=3000, help="applies per measurement (default 3000)")
    parser.add_argument("--rounds", type=int, default=7, help="interleaved rounds (default 7)")
    parser.add_argument("--dir", default="/tmp/bench-supervisor")
    args = parser.parse_args(argv)
    started = time.time()
    work = Workdir(args.dir, "supervisor-")
    results = {"machine": machine_info(args.dir, ("replay",), torch=torch.__version__)}
    try:
        plain, linked, ratios = [], [], []
        for r in range(args.rounds):
            order = (False, True) if r % 2 == 0 else (True, False)
            got = {s: _apply_us(work, s, args.n) for s in order}
            plain.append(got[False])
            linked.append(got[True])
            ratios.append(got[True] / got[False])
        records = work.new("records")
        records.mkdir()
        link = SupervisorLink(records, 1)
        try:
            update_us = _per_call_us(lambda: (link.applying("noop", 7), link.applied(7)), args.n * 10)
        finally:
            link.close()
        results.update({
            "apply_us_without_supervisor": round(statistics.median(plain), 2),
            "apply_us_with_supervisor": round(statistics.median(linked), 2),
            "median_ratio": round(statistics.median(ratios), 3),
            "ratios": [round(x, 3) for x in ratios],
            "heartbeat_updates_per_apply_us": round(update_us, 3),
        })
        print(f"apply without supervisor {results['apply_us_without_supervisor']} us, with "
              f"{results['apply_us_with_supervisor']} us: median ratio {results['median_ratio']} "
              f"(rounds {results['ratios']}); the two heartbeat updates alone {update_us:.2f} us")
    finally:
        work.close()
    finish(results, REPO / "bench" / "results" / "supervisor.json", started, time.time())
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
