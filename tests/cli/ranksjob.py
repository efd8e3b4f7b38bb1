"""Multi-rank journal directories for the CLI tests, built without a process group.

Each rank directory is an ordinary single-process journal (replay/ranks/layout.py), so a
fixture opens one `replay.Journal` per rank with the same op sequence (tinyjob's ops) and
rank-specific payloads, then writes what a group writes beside them: each rank's
rank.json and rank 0's global record of every snapshot index all ranks hold.
"""

from __future__ import annotations

import inspect
from pathlib import Path

import torch

import replay
import snapshots
from replay.ranks import layout

from tests.cli import tinyjob


def payload(i: int, rank: int) -> tuple[str, dict]:
    """The i-th op of rank `rank`: tinyjob's op at i, with this rank's own data."""
    op, kwargs = tinyjob.payload(i)
    if op == "step":
        g = torch.Generator().manual_seed(1000 * rank + i)
        kwargs = {"x": torch.randn(4, generator=g), "lr": 0.01}
    else:
        kwargs = {**kwargs, "value": kwargs["value"] + rank}
    return op, kwargs


def write_rank(root: Path, rank: int, steps: int, start: int = 0, snapshot_every: int = 10,
               op_at=None) -> Path:
    """Apply ops start..start+steps-1 to rank `rank`'s journal under `root` (no snapshot on close).
    `op_at(i)` may replace the op name at i (a divergent rank)."""
    options = {}
    if "snapshot_on_close" in inspect.signature(replay.Journal.open).parameters:
        options["snapshot_on_close"] = False
    path = layout.rank_dir(root, rank)
    with replay.Journal.open(path, state=tinyjob.make_state(), ops=tinyjob.ops,
                             snapshot=replay.Every(entries=snapshot_every), keep_last=3, keep_log=True,
                             async_snapshots=False, durability="os", **options) as journal:
        for i in range(start, start + steps):
            op, kwargs = payload(i, rank)
            if op_at is not None and op_at(i) is not None:
                op, kwargs = op_at(i), {"row": 0, "value": 1.0}
            journal.apply(op, **kwargs)
    return path


def manifests(root: Path, rank: int) -> dict[int, str]:
    """{index: manifest id} of rank `rank`'s readable snapshots (the newest term at each index)."""
    with snapshots.SnapshotStore(layout.rank_dir(root, rank) / "snapshots", workers=1) as store:
        return {info.index: info.manifest_id for info in store.list()}


def write_group_records(root: Path, world: int) -> list[int]:
    """rank.json in every rank directory present, and a global record for each snapshot index
    every rank holds; returns those indexes."""
    for r in layout.ranks_on_disk(root):
        layout.write_rank_record(layout.rank_dir(root, r), r, world)
    held = [manifests(root, r) for r in layout.ranks_on_disk(root)]
    common = sorted(set.intersection(*(set(h) for h in held))) if held else []
    for index in common:
        layout.write_global_record(root, index, [h[index] for h in held])
    return common


def write_group(root: Path, world: int, steps: int = 25, longer: dict[int, int] | None = None) -> Path:
    """A sound multi-rank journal of `world` ranks with `steps` entries each (snapshots every
    10, so at 0, 10, 20); `longer` = {rank: extra entries} appended by a second writer term
    (no snapshot), as a rank that got ahead of the others before a crash. The records come
    last: a single-process Journal refuses a directory that holds a rank.json."""
    for r in range(world):
        write_rank(root, r, steps)
    for r, extra in (longer or {}).items():
        write_rank(root, r, extra, start=steps, snapshot_every=10 ** 6)
    write_group_records(root, world)
    return root


def run_rank(root: Path, rank: int, world: int, port: int, steps: int) -> None:
    """One rank of a real multi-rank journal: gloo on 127.0.0.1, `Journal.open(group=WORLD)`,
    `steps` ops (this rank's payloads), snapshots every 10, a clean close."""
    import datetime

    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world,
                            timeout=datetime.timedelta(seconds=60))
    try:
        with replay.Journal.open(root, state=tinyjob.make_state(), ops=tinyjob.ops, group=dist.group.WORLD,
                                 snapshot=replay.Every(entries=10), keep_last=3, keep_log=True,
                                 async_snapshots=False) as journal:
            for i in range(steps):
                op, kwargs = payload(i, rank)
                journal.apply(op, **kwargs)
            journal.flush()
    finally:
        dist.destroy_process_group()


def main(argv=None) -> int:
    import argparse

    p = argparse.ArgumentParser(description="one rank of a real multi-rank journal (gloo, 127.0.0.1)")
    p.add_argument("dir", type=Path)
    p.add_argument("--rank", type=int, required=True)
    p.add_argument("--world", type=int, required=True)
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--steps", type=int, default=25)
    a = p.parse_args(argv)
    run_rank(a.dir, a.rank, a.world, a.port, a.steps)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
