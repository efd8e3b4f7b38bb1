"""DataCursor: a state component that makes data order part of the log.

The training loop asks the cursor which samples come next (`peek`), puts those ids in
the entry's payload, and the handler `consume`s exactly them. Because the cursor is part
of the journal state, a replay advances it exactly as the run did, and a step whose ids
are not the next ones (a step applied twice, or out of order) is refused instead of
silently consuming a sample twice.

To keep a torch DataLoader (workers, prefetch, collate_fn), let `replay.loader.JournaledLoader`
plan its batches from the cursor: the loop then logs each batch's ids and the handler
consumes them, as here.
"""

from __future__ import annotations

from typing import Any, Iterable

import torch
from snapshots import StateMismatchError

from .rng import seeded_generator


class DataCursor:
    """Position in an endless sequence of epochs, each a seeded permutation of range(num_samples).

    Epoch e's order is ``randperm(num_samples)`` from ``seeded_generator(seed, e)``
    (``range(num_samples)`` when shuffle=False); the epoch serves the first
    `epoch_length` ids of it (default: all). A batch may straddle an epoch boundary.

    ``epoch_length`` is how a ``drop_last`` loader stays exactly-once: with batches of B,
    ``epoch_length = num_samples // B * B`` makes every epoch whole batches, and the
    (num_samples % B) ids at the end of each epoch's permutation are never served (a
    different remainder each epoch when shuffling, as DataLoader's drop_last drops).
    It is part of the cursor's identity: a snapshot of another epoch_length is refused.
    """

    def __init__(self, num_samples: int, seed: int = 0, *, shuffle: bool = True, epoch_length: int | None = None):
        if not isinstance(num_samples, int) or isinstance(num_samples, bool) or num_samples < 1:
            raise ValueError(f"num_samples must be a positive int, got {num_samples!r}")
        if epoch_length is None:
            epoch_length = num_samples
        if not isinstance(epoch_length, int) or isinstance(epoch_length, bool) or not 1 <= epoch_length <= num_samples:
            raise ValueError(f"epoch_length must be an int in [1, num_samples={num_samples}], got {epoch_length!r}")
        self.num_samples = num_samples
        self.seed = seed
        self.shuffle = shuffle
        self.epoch_length = epoch_length
        self.epoch = 0
        self.position = 0  # samples of the current epoch already consumed
        self._order_epoch = -1
        self._order: list[int] = []

    @property
    def consumed(self) -> int:
        """Samples consumed since the start, over all epochs."""
        return self.epoch * self.epoch_length + self.position

    def peek(self, n: int) -> list[int]:
        """The next `n` sample ids, without consuming them. n == 0 gives []; n < 0 is ValueError."""
        if n < 0:
            raise ValueError(f"n must be >= 0, got {n}")
        ids, epoch, position = [], self.epoch, self.position
        while len(ids) < n:
            take = min(n - len(ids), self.epoch_length - position)
            ids.extend(self._epoch_order(epoch)[position:position + take])
            position += take
            if position == self.epoch_length:
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
        self.epoch += total // self.epoch_length
        self.position = total % self.epoch_length

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
        """The cursor's position and configuration (plain ints and bools).

        ``epoch_length`` is included only when it is not num_samples, so the snapshots of
        cursors without one keep the layout they always had."""
        state = {"num_samples": self.num_samples, "seed": self.seed, "shuffle": self.shuffle,
                 "epoch": self.epoch, "position": self.position}
        if self.epoch_length != self.num_samples:
            state["epoch_length"] = self.epoch_length
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a position; snapshots.StateMismatchError (a ValueError) if the saved cursor
        had another dataset size, seed, shuffle or epoch_length."""
        saved = dict(state)
        saved.setdefault("epoch_length", saved["num_samples"])
        for key in ("num_samples", "seed", "shuffle", "epoch_length"):
            if saved[key] != getattr(self, key):
                raise StateMismatchError(
                    f"DataCursor.{key}", f"the live cursor has {getattr(self, key)!r}, the saved one {saved[key]!r}")
        self.epoch = int(state["epoch"])
        self.position = int(state["position"])

    def __repr__(self) -> str:
        length = "" if self.epoch_length == self.num_samples else f", epoch_length={self.epoch_length}"
        return (f"DataCursor(num_samples={self.num_samples}, seed={self.seed}{length}, epoch={self.epoch}, "
                f"position={self.position})")
