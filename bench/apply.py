"""The cost of "same bytes live and on replay" on the apply path.

``Journal.apply`` encodes the payload once, appends those bytes, and hands the handler
``decode(those bytes)`` so it sees exactly what replay will. The alternative it replaced
handed the handler the caller's own objects (cheaper, but not what replay gives). This
measures, per payload kind, the time of one apply of a no-op handler in group mode:

- ``log``: a bare ``EventLog.append`` of the same envelope (the log's own cost);
- ``journal``: ``Journal.apply`` as shipped (encode once, append, decode for the handler);
- ``decode``: the decode step alone, the price of the guarantee.

Run: ``python -m bench apply [--n N] [--rounds R]``. Results: bench/results/apply.json.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import torch

import replay
from eventlog import EventLog, decode_payload, encode_payload
from replay.envelope import wrap

from ._common import REPO, Workdir, finish, fmt, machine_info

PAYLOADS = {
    "scalars": lambda: {"lr": 0.1, "seed": 12345, "step": 7},
    "ids_256": lambda: {"ids": list(range(256)), "seed": 1},
    "tensor_64KiB": lambda: {"batch": torch.randn(16384)},
    "tensor_4MiB": lambda: {"batch": torch.randn(1 << 20)},
}


def _per_call_us(fn, n: int) -> float:
    started = time.perf_counter()
    for _ in range(n):
        fn()
    return (time.perf_counter() - started) / n * 1e6


def _measure(work: Workdir, kind: str, n: int) -> dict:
    payload = PAYLOADS[kind]()
    envelope = wrap(1, payload)
    encoded = encode_payload(envelope)
    ops = replay.Ops()

    @ops.op
    def noop(state, **_):
        pass

    with EventLog.open(work.new(f"log-{kind}"), durability="group") as log:
        log_us = _per_call_us(lambda: log.append("noop", envelope), n)
    state = {"t": torch.zeros(1)}
    with replay.Journal.open(work.new(f"journal-{kind}"), state=state, ops=ops,
                             snapshot=replay.Every(), keep_log=True) as journal:
        journal_us = _per_call_us(lambda: journal.apply("noop", **payload), n)
    decode_us = _per_call_us(lambda: decode_payload(encoded), n)
    return {"payload_bytes": len(encoded), "log_append_us": round(log_us, 2),
            "journal_apply_us": round(journal_us, 2), "decode_us": round(decode_us, 2)}


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench apply", description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=2000, help="applies per measurement (default 2000)")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds; the median is reported")
    parser.add_argument("--dir", default="/tmp/bench-apply")
    args = parser.parse_args(argv)
    started = time.time()
    work = Workdir(args.dir, "apply-")
    results = {"machine": machine_info(args.dir, ("eventlog", "replay"), torch=torch.__version__), "payloads": {}}
    try:
        rounds = {kind: [] for kind in PAYLOADS}
        for _ in range(args.rounds):
            for kind in PAYLOADS:
                n = args.n if not kind.endswith("MiB") else max(50, args.n // 40)
                rounds[kind].append(_measure(work, kind, n))
        print(f"{'payload':<14} {'bytes':>10} {'log append us':>14} {'journal apply us':>17} "
              f"{'decode us':>10} {'decode share':>13}")
        for kind, runs in rounds.items():
            row = {key: statistics.median(r[key] for r in runs) for key in runs[0]}
            row["decode_share_of_apply"] = round(row["decode_us"] / row["journal_apply_us"], 3)
            results["payloads"][kind] = row
            print(f"{kind:<14} {fmt(row['payload_bytes']):>10} {fmt(row['log_append_us']):>14} "
                  f"{fmt(row['journal_apply_us']):>17} {fmt(row['decode_us']):>10} {row['decode_share_of_apply']:>13.1%}")
    finally:
        work.close()
    finish(results, REPO / "bench" / "results" / "apply.json", started, time.time())
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
