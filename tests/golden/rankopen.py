"""One rank of the golden 2-rank journal, opened at world size 2 (test_golden starts two).

    python -m tests.golden.rankopen ROOT RANK PORT OUT

Opens ROOT with ``group=`` over gloo on 127.0.0.1:PORT, writes what it recovered to OUT
(JSON: index, the state's bytes in hex), applies one more entry and closes.
"""

from __future__ import annotations

import datetime
import json
import sys

import torch
import torch.distributed as dist

import replay
from tests.golden import recipe


def main(root: str, rank: int, port: int, out: str) -> int:
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2,
                            timeout=datetime.timedelta(seconds=60))
    try:
        with replay.Journal.open(root, group=dist.group.WORLD, state=recipe.make_state(), ops=recipe.ops,
                                 snapshot=replay.Every(entries=6), keep_last=2, durability="sync",
                                 async_snapshots=False, environment="ignore") as journal:
            state = journal.state
            found = {"index": journal.index, "w": state["w"].numpy().tobytes().hex(),
                     "h": state["h"].view(torch.int16).numpy().tobytes().hex(), "counters": dict(state["counters"])}
            op, kwargs = recipe.payload(journal.count() + 1, rank)
            journal.apply(op, **kwargs)
            found["after"] = journal.index
        with open(out, "w") as f:
            json.dump(found, f)
    finally:
        dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]))
