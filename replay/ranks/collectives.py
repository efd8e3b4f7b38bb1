"""The collectives a multi-rank journal runs on its process group, and how failures become errors.

Only small int64 vectors travel (indexes, terms, digests, flags, and the UTF-8 bytes
of an error message), through ``all_gather`` on the group the user gave: no pickling,
no files, no service of ours. On an NCCL group the vectors live on the current CUDA
device, as NCCL requires; on gloo on the CPU.

Every collective is SPMD: each rank must call the same ones in the same order, which
is why the journal's own decisions that lead to a collective (a snapshot is due, a
snapshot to confirm) are made identically on every rank. A collective that fails (a
peer died: gloo reports a closed connection; the group's timeout passed) raises
RankFailureError instead of torch's RuntimeError, so a dead peer surfaces as a named
exception the training loop can let propagate.

`agree` is the step that keeps one rank's local failure (a damaged file, a lock held)
from leaving the others blocked in the next collective: every rank reports whether its
step failed, and all raise if any did.
"""

from __future__ import annotations

from typing import Sequence

import torch

from ..errors import RankFailureError

MAX_MESSAGE = 400  # bytes of a failed rank's error message shown on the others


class Collectives:
    """The journal's view of a torch.distributed process group: `rank`, `size`, and a few collectives."""

    def __init__(self, group):
        import torch.distributed as dist

        if not dist.is_available() or not dist.is_initialized():
            raise ValueError("group= needs an initialised torch.distributed process group "
                             "(torch.distributed.init_process_group), e.g. group=torch.distributed.group.WORLD")
        self._dist = dist
        self.group = group
        self.rank = dist.get_rank(group)
        self.size = dist.get_world_size(group)
        if self.rank < 0:
            raise ValueError("this process is not a member of the group passed as group=")
        backend = str(dist.get_backend(group)).lower()
        self.device = torch.device("cuda", torch.cuda.current_device()) if backend == "nccl" else torch.device("cpu")

    def gather(self, values: Sequence[int], what: str) -> list[list[int]]:
        """Every rank's `values` (the same length on every rank), by rank."""
        mine = torch.tensor(list(values), dtype=torch.int64, device=self.device)
        out = [torch.empty_like(mine) for _ in range(self.size)]
        try:
            self._dist.all_gather(out, mine, group=self.group)
        except RuntimeError as exc:  # DistBackendError is one: a dead peer, a timeout
            raise RankFailureError(f"rank {self.rank}: the collective for {what} failed on the journal's process "
                                   f"group (a peer rank died or timed out without reporting an error here: its "
                                   f"own output says why): {exc}") from exc
        return [t.cpu().tolist() for t in out]

    def gather_lists(self, values: Sequence[int], what: str) -> list[list[int]]:
        """Every rank's `values` (of any length), by rank: lengths first, then padded vectors."""
        lengths = [row[0] for row in self.gather([len(values)], what)]
        width = max(lengths)
        if width == 0:
            return [[] for _ in lengths]
        rows = self.gather(list(values) + [0] * (width - len(values)), what)
        return [row[:n] for row, n in zip(rows, lengths)]

    def minimum(self, value: int, what: str) -> int:
        """The minimum of `value` over the ranks."""
        return min(row[0] for row in self.gather([value], what))

    def agree(self, error: BaseException | None, what: str) -> None:
        """End a local step on every rank: raise `error` here if this rank failed, and
        RankFailureError (quoting the failed ranks' errors) on the ranks that did not."""
        message = b"" if error is None else f"{type(error).__name__}: {error}".encode()[:MAX_MESSAGE]
        texts = self.gather_lists([1 if error is not None else 0] + list(message), what)
        if error is not None:
            raise error
        failed = {rank: bytes(row[1:]).decode("utf-8", "replace") for rank, row in enumerate(texts) if row[0]}
        if failed:
            quoted = "; ".join(f"rank {rank}: {text}" for rank, text in failed.items())
            raise RankFailureError(f"rank {self.rank}: {what} failed on another rank, so no rank goes on ({quoted})")
