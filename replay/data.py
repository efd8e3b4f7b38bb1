"""DataCursor: a state component that makes data order part of the log.

The training loop asks the cursor which samples come next (`peek`), puts those ids in
the entry's payload, and the handler `consume`s exactly them. Because the cursor is part
of the journal state, a replay advances it exactly as the run did, and a step whose ids
are not the next ones (a step applied twice, or out of order) is refused instead of
silently consuming a sample twice.
"""

from __future__ import annotations

from typing import Any, Iterable

import torch
from snapshots import StateMismatchError

from .rng import seeded_generator


class DataCursor:
    """Position in an endless sequence of epochs, each a seeded permutation of range(num_samples).

    Epoch e's order is ``randperm(num_samples)`` from ``seeded_generator(seed, e)``
    (``range(num_samples)`` when shuffle=False). A batch may straddle an epoch boundary.
    """

    def __init__(self, num_samples: int, seed: int = 0, *, shuffle: bool = True):
        if not isinstance(num_samples, int) or num_samples < 1:
            raise ValueError(f"num_samples must be a positive int, got {num_samples!r}")
        self.num_samples = num_samples
        self.seed = seed
        self.shuffle = shuffle
        self.epoch = 0
        self.position = 0  # samples of the current epoch already consumed
        self._order_epoch = -1
        self._order: list[int] = []

    @property
    def consumed(self) -> int:
        """Samples consumed since the start, over all epochs."""
        return self.epoch * self.num_samples + self.position

    def peek(self, n: int) -> list[int]:
        """The next `n` sample ids, without consuming them. n == 0 gives []; n < 0 is ValueError."""
        if n < 0:
            raise ValueError(f"n must be >= 0, got {n}")
        ids, epoch, position = [], self.epoch, self.position
        while len(ids) < n:
            take = min(n - len(ids), self.num_samples - position)
            ids.extend(self._epoch_order(epoch)[position:position + take])
            position += take
            if position == self.num_samples:
                epoch, position = epoch + 1, 0
        return ids

    def consume(self, ids: Iterable[int] | torch.Tensor) -> None:
        """Advance past `ids`, which must be exactly the next ids (`peek(len(ids))`).

        Raises ValueError, consuming nothing, if they are not: that is a step applied
        twice or out of order, and exactly-once consumption forbids it.
        """
        ids = ids.tolist() if isinstance(ids, torch.Tensor) else [int(i) for i in ids]
        expected = self.peek(len(ids))
        if ids != expected:
            raise ValueError(
                f"DataCursor at epoch {self.epoch} position {self.position}: asked to consume {ids[:8]}..., "
                f"but the next samples are {expected[:8]}...; a step was applied twice or out of order"
            )
        total = self.position + len(ids)
        self.epoch += total // self.num_samples
        self.position = total % self.num_samples

    def _epoch_order(self, epoch: int) -> list[int]:
        if epoch != self._order_epoch:
            if self.shuffle:
                perm = torch.randperm(self.num_samples, generator=seeded_generator(self.seed, epoch))
                self._order = perm.tolist()
            else:
                self._order = list(range(self.num_samples))
            self._order_epoch = epoch
        return self._order

    def state_dict(self) -> dict[str, Any]:
        """The cursor's position and configuration (plain ints and bools)."""
        return {"num_samples": self.num_samples, "seed": self.seed, "shuffle": self.shuffle,
                "epoch": self.epoch, "position": self.position}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a position; snapshots.StateMismatchError (a ValueError) if the saved cursor
        had another dataset size, seed or shuffle."""
        for key in ("num_samples", "seed", "shuffle"):
            if state[key] != getattr(self, key):
                raise StateMismatchError(
                    f"DataCursor.{key}", f"the live cursor has {getattr(self, key)!r}, the saved one {state[key]!r}")
        self.epoch = int(state["epoch"])
        self.position = int(state["position"])

    def __repr__(self) -> str:
        return f"DataCursor(num_samples={self.num_samples}, seed={self.seed}, epoch={self.epoch}, position={self.position})"
