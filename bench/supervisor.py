"""The cost of `replay run`'s heartbeat, and of recorded scalars, on `Journal.apply`.

A journal opened under `replay run` updates a mapped heartbeat file twice per apply (the
op being applied, then the index applied): memory writes, no system call. This measures
a no-op handler's apply in group mode with and without the link, in interleaved rounds
in one process, and reports the median of per-round ratios (and their spread); the link
alone (two updates) is timed too.

Recorded scalars (``@ops.op(record=("loss",))``, replay/recorded.py): the same no-op
handler returning a 0-d tensor that is recorded, against the plain no-op, in the same
rounds: the value's check and ``.item()``, the buffered row, and a share of one ``write``
per 1024 entries.

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
from replay.ops import OpSpec
from replay.recorded import Recorder
from replay.supervisor.link import SupervisorLink

from ._common import REPO, Workdir, finish, machine_info


def _per_call_us(fn, n: int) -> float:
    started = time.perf_counter()
    for _ in range(n):
        fn()
    return (time.perf_counter() - started) / n * 1e6


def _apply_us(work: Workdir, supervised: bool, n: int, record: bool = False) -> float:
    ops = replay.Ops()
    loss = torch.tensor(0.25)

    @ops.op(record=("loss",) if record else None)
    def noop(state, *, step):
        return loss if record else None

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
        plain, linked, recording, ratios, record_ratios = [], [], [], [], []
        variants = ["plain", "supervised", "record"]
        for r in range(args.rounds):
            order = variants[r % 3:] + variants[:r % 3]  # each variant goes first in turn
            got = {v: _apply_us(work, v == "supervised", args.n, record=v == "record") for v in order}
            plain.append(got["plain"])
            linked.append(got["supervised"])
            recording.append(got["record"])
            ratios.append(got["supervised"] / got["plain"])
            record_ratios.append(got["record"] / got["plain"])
        records = work.new("records")
        records.mkdir()
        link = SupervisorLink(records, 1)
        try:
            update_us = _per_call_us(lambda: (link.applying("noop", 7), link.applied(7)), args.n * 10)
        finally:
            link.close()
        recorder = Recorder(work.new("recorded"))
        recorder.path.parent.mkdir()
        spec = OpSpec("step", 1, lambda state: None, record=("loss",))
        indexes = iter(range(1, 10**9))
        tensor, number = torch.tensor(0.25), 0.25
        try:  # the recorder alone: the check, .item(), the buffered row and a share of one write per 1024
            record_tensor_us = _per_call_us(lambda: recorder.add(1, next(indexes), spec, tensor), args.n * 10)
            record_float_us = _per_call_us(lambda: recorder.add(1, next(indexes), spec, {"loss": number}),
                                           args.n * 10)
        finally:
            recorder.close()
        results.update({
            "recorder_add_us_tensor": round(record_tensor_us, 3),
            "recorder_add_us_float_in_mapping": round(record_float_us, 3),
            "apply_us_without_supervisor": round(statistics.median(plain), 2),
            "apply_us_with_supervisor": round(statistics.median(linked), 2),
            "median_ratio": round(statistics.median(ratios), 3),
            "ratios": [round(x, 3) for x in ratios],
            "heartbeat_updates_per_apply_us": round(update_us, 3),
            "apply_us_with_record": round(statistics.median(recording), 2),
            "record_median_ratio": round(statistics.median(record_ratios), 3),
            "record_ratios": [round(x, 3) for x in record_ratios],
        })
        print(f"apply without supervisor {results['apply_us_without_supervisor']} us, with "
              f"{results['apply_us_with_supervisor']} us: median ratio {results['median_ratio']} "
              f"(rounds {results['ratios']}); the two heartbeat updates alone {update_us:.2f} us")
        print(f"apply with record=('loss',) (a 0-d tensor) {results['apply_us_with_record']} us: median ratio "
              f"{results['record_median_ratio']} (rounds {results['record_ratios']}); the recorder alone "
              f"{record_tensor_us:.2f} us per 0-d tensor, {record_float_us:.2f} us per float in a mapping")
    finally:
        work.close()
    finish(results, REPO / "bench" / "results" / "supervisor.json", started, time.time())
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
