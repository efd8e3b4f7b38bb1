"""A stand-in for snapshots.SnapshotStore (DESIGN.md §4 surface) used only until the real store lands.

It keeps the contract replay relies on: a snapshot exists only once fully written
(temp file, fsync, rename), `load` verifies a checksum and raises a SnapshotError on
damage, `save_async` stages (clones) tensors before returning.
"""

from __future__ import annotations

import io
import os
import threading
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any

import torch
import xxhash

from snapshots.errors import CorruptSnapshotError


@dataclass(frozen=True)
class SnapshotInfo:
    index: int
    term: int
    meta: Any
    name: str


def _clone(tree):
    if isinstance(tree, torch.Tensor):
        return tree.detach().clone()
    if isinstance(tree, dict):
        return {k: _clone(v) for k, v in tree.items()}
    if isinstance(tree, (list, tuple)):
        return type(tree)(_clone(v) for v in tree)
    return tree


class FakeSnapshotStore:
    def __init__(self, path, keep_last: int = 3):
        self.path = str(path)
        self.keep_last = keep_last
        os.makedirs(self.path, exist_ok=True)

    def _write(self, tree, index, term, meta) -> SnapshotInfo:
        buf = io.BytesIO()
        torch.save({"tree": tree, "meta": meta}, buf)
        body = buf.getvalue()
        name = f"{index}-{term}"
        tmp = os.path.join(self.path, f".tmp.{name}")
        with open(tmp, "wb") as f:
            f.write(xxhash.xxh3_128_digest(body) + body)
            f.flush()
            os.fsync(f.fileno())
        os.rename(tmp, os.path.join(self.path, name))
        return SnapshotInfo(index, term, meta, name)

    def save(self, state, index, term, meta=None):
        return self._write(_clone(state), index, term, meta)

    def save_async(self, state, index, term, meta=None):
        staged = _clone(state)
        future: Future = Future()

        def run():
            try:
                future.set_result(self._write(staged, index, term, meta))
            except BaseException as exc:
                future.set_exception(exc)

        threading.Thread(target=run, daemon=True).start()
        return future

    def _read(self, info):
        with open(os.path.join(self.path, info.name), "rb") as f:
            data = f.read()
        if len(data) < 16 or xxhash.xxh3_128_digest(data[16:]) != data[:16]:
            raise CorruptSnapshotError(info.name, None, "checksum mismatch")
        return torch.load(io.BytesIO(data[16:]), weights_only=True)

    def list(self):
        infos = []
        for name in os.listdir(self.path):
            if name.startswith("."):
                continue
            index, term = map(int, name.split("-"))
            try:
                meta = self._read(SnapshotInfo(index, term, None, name))["meta"]
            except Exception:
                meta = None
            infos.append(SnapshotInfo(index, term, meta, name))
        return sorted(infos, key=lambda i: (i.index, i.term))

    def latest(self):
        for info in reversed(self.list()):
            try:
                self._read(info)
                return info
            except CorruptSnapshotError:
                continue
        return None

    def load(self, info, map_location="cpu"):
        return self._read(info)["tree"]

    def prune(self):
        infos = self.list()
        for info in infos[: max(0, len(infos) - self.keep_last)]:
            os.unlink(os.path.join(self.path, info.name))

    def close(self):
        pass
