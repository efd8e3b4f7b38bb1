"""Regenerate the golden fixtures under tests/golden/data/ (not run by the suite).

    PYTHONPATH=. python -m tests.golden.make_fixtures [--out tests/golden/data]

Each fixture is a small gzipped tarball of one on-disk format, written by the library's
public API with the ops and state of tests/golden/recipe.py:

- journal.tar.gz   ``journal/``: a single-process journal (log/ with sealed archive
                   segments and a live tail, snapshots/, environment.json) written in two terms
- eventlog.tar.gz  ``eventlog/``: a bare EventLog (two terms, a tensor payload, compacted
                   into its archive)
- store.tar.gz     ``store/``: a SnapshotStore with two incremental snapshots
- mixed_store.tar.gz  ``mixed_store/``: the same two snapshots, the first written with
                   loose chunk files, the second with a pack (snapshots' packs=True)
- replica.tar.gz   ``replica/``: a file:// replica a journal shipped to
- ranks.tar.gz     ``ranks/``: a multi-rank journal (rank-0/, rank-1/, group/) written by
                   two processes over gloo on 127.0.0.1

The fixtures exist to prove that today's readers still open what yesterday's writers
wrote: regenerate them only when a format changes on purpose (bump its version), and
update the expected values in test_golden.py from the printed summary.
"""

from __future__ import annotations

import argparse
import datetime
import os
import shutil
import socket
import sys
import tarfile
import tempfile
from pathlib import Path

import torch

import eventlog
import replay
import snapshots
from tests.golden import recipe

JOURNAL_STEPS = (20, 10)  # entries in the first term, then after a restart
RANK_STEPS = 12
REPLICA_STEPS = 12


def journal_options(**extra) -> dict:
    return dict(state=recipe.make_state(), ops=recipe.ops, snapshot=replay.Every(entries=6), keep_last=2,
                durability="sync", async_snapshots=False, environment="ignore", **extra)


def apply(journal: replay.Journal, n: int, rank: int = 0) -> None:
    for _ in range(n):
        op, kwargs = recipe.payload(journal.count() + 1, rank)
        journal.apply(op, **kwargs)


def write_journal(path: Path) -> None:
    first, second = JOURNAL_STEPS
    with replay.Journal.open(path, **journal_options()) as journal:
        apply(journal, first)
    # No snapshot on the second close: the entries after the newest snapshot stay in LMDB
    # (live log), so opening the fixture replays them.
    with replay.Journal.open(path, snapshot_on_close=False, **journal_options()) as journal:
        apply(journal, second)


def write_eventlog(path: Path) -> None:
    with eventlog.EventLog.open(path, durability="sync") as log:
        for i in range(1, 9):
            log.append("put", {"i": i, "name": f"entry-{i}", "blob": bytes([i]) * i})
    with eventlog.EventLog.open(path, durability="sync") as log:
        log.append_many([("tensor", {"t": torch.arange(6, dtype=torch.float32).reshape(2, 3)}),
                         ("tensor", {"t": torch.tensor([1.5, -2.25], dtype=torch.bfloat16)})])
        log.compact_through(5)  # entries 1..5 move to a sealed archive segment


def store_states() -> list[dict]:
    g = torch.Generator().manual_seed(7)
    first = {"model": {"w": torch.randn(64, generator=g), "b": torch.arange(5, dtype=torch.int64),
                       "h": torch.randn(16, generator=g).to(torch.bfloat16)},
             "step": 3, "opt": [torch.zeros(2), (1.5, "x")]}
    second = {"model": {k: v.clone() for k, v in first["model"].items()}, "step": 9, "opt": [torch.ones(2), (1.5, "x")]}
    second["model"]["w"][:4] = 0  # b and h unchanged: their chunks are shared
    return [first, second]


def write_store(path: Path) -> None:
    with snapshots.SnapshotStore(path, keep_last=3) as store:
        for (index, term), state in zip([(3, 1), (9, 2)], store_states()):
            store.save(state, index=index, term=term, meta={"golden": index})


def write_mixed_store(path: Path) -> None:
    for (index, term), state, packs in zip([(3, 1), (9, 2)], store_states(), (False, True)):
        with snapshots.SnapshotStore(path, keep_last=3, packs=packs) as store:
            store.save(state, index=index, term=term, meta={"golden": index})


def write_replica(path: Path, scratch: Path) -> None:
    with replay.Journal.open(scratch / "shipping", replica=path.as_uri(), ship_interval=0.05,
                             **journal_options()) as journal:
        apply(journal, REPLICA_STEPS)
        journal.flush()
    # close() ships everything up to the journal's index before it returns


def _rank_main(rank: int, port: int, root: str) -> None:
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2,
                            timeout=datetime.timedelta(seconds=60))
    try:
        with replay.Journal.open(root, group=dist.group.WORLD, **journal_options()) as journal:
            apply(journal, RANK_STEPS, rank)
    finally:
        dist.destroy_process_group()


def write_ranks(path: Path) -> None:
    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_rank_main, args=(r, port, str(path))) for r in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
        if p.exitcode != 0:
            raise SystemExit(f"a rank failed (exit {p.exitcode})")


def pack(source: Path, name: str, out: Path) -> Path:
    target = out / f"{name}.tar.gz"
    with tarfile.open(target, "w:gz") as tar:
        tar.add(source, arcname=name, filter=_without_locks)
    return target


def _without_locks(info: tarfile.TarInfo) -> tarfile.TarInfo:
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(Path(__file__).parent / "data"))
    parser.add_argument("--only", action="append", help="write only this fixture (repeatable)")
    args = parser.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="golden-") as tmp:
        tmp = Path(tmp)
        writers = {"journal": write_journal, "eventlog": write_eventlog, "store": write_store,
                   "mixed_store": write_mixed_store, "replica": lambda p: write_replica(p, tmp),
                   "ranks": write_ranks}
        for name, write in writers.items():
            if args.only and name not in args.only:
                continue
            write(tmp / name)
            target = pack(tmp / name, name, out)
            print(f"{target}: {target.stat().st_size} bytes", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
