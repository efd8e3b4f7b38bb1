"""JournaledLoader: keep a standard torch DataLoader (workers, prefetch, pin_memory, collate_fn) under a Journal.

The DataLoader does the loading; the journal decides the order and logs what each step
consumed::

    cursor = replay.DataCursor(len(dataset), seed=0)
    loader = JournaledLoader(dataset, cursor, batch_size=32, collate_fn=collate, num_workers=2)

    @ops.op(inputs=loader.rebuild)              # replay rebuilds a step's batch from its payload
    def train_step(state, *, ids, seed, inputs):
        state["data"].consume(ids)              # exactly once: the cursor refuses other ids
        with replay.seeded_rng(seed):           # dropout draws from the payload's seed
            loss = ...(inputs)

    with replay.Journal.open(path, state={..., "data": cursor}, ops=ops) as journal:
        for batch in loader:                    # the rest of the cursor's current epoch
            journal.apply("train_step", **batch)   # logs ids and seed; inputs go unlogged

How it fits together:

1. Order. Iterating the loader reads the cursor's position *at that moment* (after the
   journal recovered it) and plans batches from there on a private copy of the cursor,
   so the DataLoader's prefetching (``prefetch_factor * num_workers`` batches ahead)
   never moves the journaled cursor: only the handler's ``consume(ids)`` does, once per
   applied entry, on replay too. A resumed run starts at the recovered position and
   never loads the samples before it.
2. A batch is a `Batch`: the mapping ``{"ids", "seed", "inputs"}``. ``ids`` and ``seed``
   go to the log; ``inputs`` (the collated data) is handed to the handler unlogged.
   ``seed`` is ``derive_seed(loader seed, samples consumed before the batch)``: a
   function of the position, so a resumed run gets the seeds the uninterrupted one did.
3. Rebuilding. The DataLoader's workers run `BatchBuilder.build(ids, seed)`, and replay
   runs the very same function (``loader.rebuild``) in the main process: every
   ``dataset[i]`` and the collate_fn run inside ``seeded_rng(seed, BUILD_SALT,
   python=True, numpy=<numpy imported>)`` on one intra-op thread (what DataLoader
   workers use; a large reduction's float sum depends on the thread count). Random
   augmentations that draw from torch's, Python's or numpy's global RNG are therefore
   bit-identical live and on replay. An augmentation with its own unseeded generator,
   or a dataset that changes between runs, is not: see replay/ops.py's "Inputs".

Edge cases (iteration = one ``iter(loader)``):

- Epoch boundaries: by default a pass ends at the end of the cursor's current epoch, and
  no batch straddles two epochs; the next ``iter(loader)`` starts the next epoch. A
  cursor in the middle of an epoch (a resumed run) yields only the rest of it. With
  ``endless=True`` batches run on across epochs, always full, and the iteration never
  ends (stop it with ``zip(range(journal.count(), N), loader)`` or ``break``).
- The last partial batch of an epoch is yielded (``len(ids) < batch_size``); the handler
  consumes exactly its ids. With ``drop_last=True`` the cursor must have
  ``epoch_length`` a multiple of batch_size (``DataCursor(n, seed, epoch_length=n // B * B)``):
  the dropped samples are then never part of an epoch, so skipping them consumes
  nothing and the cursor stays exactly-once. Another cursor is a ValueError.
- A DataLoader re-created after a resume (a new JournaledLoader, or a new ``iter``)
  starts at the cursor's position; nothing in the loader is persistent.
- A batch whose ids are not the cursor's next ones is refused by the cursor in the
  handler (ValueError; the journal rolls the entry back). The loader checks first: when
  it hands out a batch whose start is not the cursor's position (the previous batch was
  not applied, its apply failed, or its handler did not consume it; or the loader was
  iterated before the journal recovered), ``next`` raises `StaleBatchError`. Iterate the
  loader again to continue from the cursor.
- Gradient accumulation: one journaled entry must hold every micro-batch of an optimizer
  step, since gradients are not state (a snapshot between two micro-batches, or a
  rollback, starts without them: replay/INVARIANTS.md, invariant 15). ``accumulate=k``
  does that: each batch is k micro-batches of ``batch_size`` samples, ``ids`` all of
  their ids in order (what the handler consumes), and ``inputs`` the list of the k
  collated micro-batches; the handler runs the k ``backward()`` calls and one optimizer
  step. Micro-batch j is built under ``seeded_rng(seed, BUILD_SALT, j)``, live and on
  replay (the split is a function of the logged ids and ``batch_size``). At an epoch's
  end the last batch may hold fewer micro-batches, and its last one fewer samples
  (``len(inputs)`` says how many); ``drop_last=True`` then needs an ``epoch_length`` that
  is a multiple of ``batch_size * k``.
- Preemption: a signal sent to the whole process group (SLURM's ``scancel``, a container
  runtime, Ctrl-C) reaches the workers too. They defer it (replay/worker_signals.py), so
  none dies under the handler being applied; the trainer stops as `Preemption` says and
  its DataLoader ends them. ``worker_signals=`` adds signals to the deferred ones; the
  ``worker_init_fn`` you pass still runs, after the deferral is in place.
- ``in_order=False``, ``sampler``, ``batch_sampler``, ``shuffle`` and ``batch_size`` belong
  to the loader and are refused as DataLoader options (TypeError / ValueError).
"""

from __future__ import annotations

import contextlib
import math
import sys
from typing import Any, Callable, Iterator, Sequence

import torch
from torch.utils.data import DataLoader, default_collate

from .data import DataCursor
from .rng import derive_seed, seeded_rng
from .worker_signals import DeferSignals

# A batch is built under seeded_rng(seed, BUILD_SALT): a stream the handler's seeded_rng(seed) does not share.
BUILD_SALT = 0x6C6F6164

_OWN_OPTIONS = ("sampler", "batch_sampler", "shuffle", "batch_size", "drop_last")


class StaleBatchError(ValueError):
    """A loader handed out a batch that does not start at the journaled cursor's position."""


class Batch(dict):
    """One batch: the mapping ``{"ids": [int], "seed": int, "inputs": collated data}``.

    ``journal.apply(op, **batch)`` logs ``ids`` and ``seed`` and hands ``inputs`` over
    unlogged. ``start`` (an attribute, not a key) is the number of samples the cursor had
    consumed when this batch is the next one. A dict, so DataLoader's pin_memory pins
    ``inputs`` and keeps the type and ``start``.
    """

    def __init__(self, ids: list[int], seed: int, inputs: Any, start: int):
        super().__init__(ids=ids, seed=seed, inputs=inputs)
        self.start = start

    @property
    def ids(self) -> list[int]:
        return self["ids"]

    @property
    def seed(self) -> int:
        return self["seed"]

    @property
    def inputs(self) -> Any:
        return self["inputs"]

    @property
    def payload(self) -> dict:
        """What the log records for this batch: ``{"ids": ..., "seed": ...}``."""
        return {"ids": self["ids"], "seed": self["seed"]}


class BatchBuilder:
    """Builds a batch's inputs from (ids, seed): what the workers run live and replay runs again.

    Register it as the op's rebuild: ``@ops.op(inputs=builder)``; it is called with the
    entry's whole payload and uses only ``ids`` and ``seed``. Picklable when the dataset
    and collate_fn are (a "spawn" or "forkserver" DataLoader context needs that).
    `micro_batch`: None builds one collated batch; an int n builds the list of the
    collated micro-batches of n consecutive ids each (gradient accumulation, module doc).
    """

    def __init__(self, dataset: Any, collate_fn: Callable[[list], Any] | None = None,
                 micro_batch: int | None = None):
        self.dataset = dataset
        self.collate_fn = default_collate if collate_fn is None else collate_fn
        self.micro_batch = micro_batch

    def __call__(self, *, ids: Sequence[int] | torch.Tensor, seed: int, **_payload: Any) -> Any:
        """``build(ids, seed)``; the other payload keys (lr, ...) are ignored."""
        return self.build(ids, seed)

    def build(self, ids: Sequence[int] | torch.Tensor, seed: int) -> Any:
        """``collate_fn([dataset[i] for i in ids])``, all of it under ``seeded_rng(seed, BUILD_SALT)``
        (torch, Python's random, and numpy's global RNG when numpy is imported) on one
        intra-op thread. With `micro_batch` n: the list of ``collate_fn`` of each run of n
        ids (the last may be shorter), the j-th under ``seeded_rng(seed, BUILD_SALT, j)``.
        An empty ids is ValueError (no op consumes nothing)."""
        ids = _as_ids(ids)
        if not ids:
            raise ValueError("a batch needs at least one id")
        numpy = "numpy" in sys.modules
        with _one_intraop_thread():
            if self.micro_batch is None:
                with seeded_rng(seed, BUILD_SALT, python=True, numpy=numpy):
                    return self.collate_fn([self.dataset[i] for i in ids])
            micro = []
            for j, first in enumerate(range(0, len(ids), self.micro_batch)):
                with seeded_rng(seed, BUILD_SALT, j, python=True, numpy=numpy):
                    micro.append(self.collate_fn([self.dataset[i] for i in ids[first:first + self.micro_batch]]))
            return micro


class JournaledLoader:
    """A torch DataLoader whose order is a journaled DataCursor's and whose batches can be rebuilt.

    Args:
        dataset: a map-style dataset (``dataset[i]`` for the cursor's ids).
        cursor: the DataCursor that is the journal's state component (the same object).
        batch_size: samples per batch (>= 1); with `accumulate`, per micro-batch.
        seed: the loader's seed; each batch's augmentation seed is derived from it and the
            batch's position (module doc, 2).
        collate_fn: as DataLoader's (default: default_collate).
        drop_last: drop each epoch's partial batch; needs a cursor whose epoch_length is a
            multiple of batch_size (module doc, edge cases).
        endless: batches run across epochs and the iteration never ends.
        accumulate: k >= 1 micro-batches per batch, ``inputs`` their list, for gradient
            accumulation in one entry (module doc, edge cases); None (default): ``inputs``
            is one collated batch.
        worker_signals: signals the workers defer besides SIGTERM, SIGINT, SIGUSR1 and
            those a journal's Preemption catches (module doc, Preemption).
        **dataloader_options: passed to torch.utils.data.DataLoader (num_workers,
            pin_memory, prefetch_factor, persistent_workers, multiprocessing_context,
            worker_init_fn, timeout, generator, ...).

    ``loader.rebuild`` is the `BatchBuilder` to register the op with; ``loader.dataloader``
    the DataLoader itself. ``iter(loader)`` yields `Batch` es (module doc, 1-2);
    ``len(loader)`` is the number of batches an ``iter`` begun now would yield
    (TypeError when endless, as for a DataLoader without a length).
    """

    def __init__(self, dataset: Any, cursor: DataCursor, batch_size: int, *, seed: int = 0,
                 collate_fn: Callable[[list], Any] | None = None, drop_last: bool = False, endless: bool = False,
                 accumulate: int | None = None, worker_signals: Sequence[int] = (), **dataloader_options: Any):
        if not isinstance(cursor, DataCursor):
            raise TypeError(f"cursor must be a replay.DataCursor, got {type(cursor).__name__}")
        if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
        if accumulate is not None and (not isinstance(accumulate, int) or isinstance(accumulate, bool)
                                       or accumulate < 1):
            raise ValueError(f"accumulate must be a positive int (micro-batches per batch) or None, got {accumulate!r}")
        derive_seed(seed)  # TypeError for a non-int seed now, not in a worker
        group = batch_size * (accumulate or 1)  # samples per journaled batch
        owned = [name for name in _OWN_OPTIONS if name in dataloader_options]
        if owned:
            raise TypeError(f"JournaledLoader sets {owned} itself (the order is the cursor's); do not pass them")
        if dataloader_options.get("in_order", True) is not True:
            raise ValueError("in_order=False would hand batches out of the cursor's order; the journal needs it")
        if drop_last and endless:
            raise ValueError("endless batches are always full; drop_last has no meaning with endless=True")
        if drop_last and cursor.epoch_length % group:
            raise ValueError(
                f"drop_last=True needs a cursor whose epochs are whole batches: DataCursor({cursor.num_samples}, "
                f"seed, epoch_length={cursor.num_samples // group * group}) for {group} samples per batch "
                f"(this one has epoch_length={cursor.epoch_length}), so the dropped samples are never consumed")
        self.cursor = cursor
        self.batch_size = batch_size
        self.seed = seed
        self.endless = endless
        self.accumulate = accumulate
        self.rebuild = BatchBuilder(dataset, collate_fn, batch_size if accumulate is not None else None)
        # A private generator: DataLoader draws its workers' base seed from the global RNG
        # otherwise, which would shift the global stream every time iteration starts.
        dataloader_options.setdefault("generator", torch.Generator().manual_seed(derive_seed(seed, BUILD_SALT)))
        # Workers outlive a signal sent to the whole group, so it never lands in a handler as
        # "DataLoader worker killed by signal" (replay/worker_signals.py).
        dataloader_options["worker_init_fn"] = DeferSignals(dataloader_options.get("worker_init_fn"), worker_signals)
        self._plan = _CursorPlan(cursor, group, seed, endless)
        self.dataloader = DataLoader(_BatchSource(self.rebuild), batch_size=None, sampler=self._plan,
                                     collate_fn=_unchanged, **dataloader_options)

    def __iter__(self) -> Iterator[Batch]:
        # The plan reads the cursor's position when the DataLoader's iterator starts, i.e. now.
        # An abandoned pass (break) releases that iterator with this generator, which
        # shuts its workers down. The workers start here, forked with the preemption signals
        # already blocked (replay/worker_signals.py, step 1).
        with self.dataloader.worker_init_fn.inherited():
            batches = iter(self.dataloader)
        for batch in batches:
            if batch.start != self.cursor.consumed:
                raise StaleBatchError(_stale_message(batch, self.cursor))
            yield batch

    def __len__(self) -> int:
        return len(self._plan)

    def __repr__(self) -> str:
        return (f"JournaledLoader(batch_size={self.batch_size}, accumulate={self.accumulate}, seed={self.seed}, "
                f"endless={self.endless}, "
                f"num_workers={self.dataloader.num_workers}, cursor={self.cursor!r})")


class _CursorPlan(torch.utils.data.Sampler):
    """The sampler: yields (ids, seed, start) keys from the cursor's position at ``iter`` time.

    It advances a private copy, so prefetching never moves the journaled cursor."""

    def __init__(self, cursor: DataCursor, batch_size: int, seed: int, endless: bool):
        self.cursor, self.batch_size, self.seed, self.endless = cursor, batch_size, seed, endless

    def __iter__(self) -> Iterator[tuple[list[int], int, int]]:
        plan = DataCursor(self.cursor.num_samples, self.cursor.seed, shuffle=self.cursor.shuffle,
                          epoch_length=self.cursor.epoch_length)
        plan.load_state_dict(self.cursor.state_dict())
        return self._keys(plan)

    def _keys(self, plan: DataCursor) -> Iterator[tuple[list[int], int, int]]:
        epoch = plan.epoch
        while self.endless or plan.epoch == epoch:
            take = self.batch_size if self.endless else min(self.batch_size, plan.epoch_length - plan.position)
            start = plan.consumed
            ids = plan.peek(take)
            plan.consume(ids)
            yield ids, derive_seed(self.seed, start), start

    def __len__(self) -> int:
        if self.endless:
            raise TypeError("an endless JournaledLoader has no length")
        return math.ceil((self.cursor.epoch_length - self.cursor.position) / self.batch_size)


class _BatchSource(torch.utils.data.Dataset):
    """The DataLoader's dataset: a key from the plan -> a built Batch (in a worker, or in the main process)."""

    def __init__(self, builder: BatchBuilder):
        self.builder = builder

    def __getitem__(self, key: tuple[list[int], int, int]) -> Batch:
        ids, seed, start = key
        return Batch(ids, seed, self.builder.build(ids, seed), start)


def _unchanged(batch: Batch) -> Batch:
    # batch_size=None makes DataLoader apply collate_fn to each item; ours is already collated.
    return batch


def _as_ids(ids: Sequence[int] | torch.Tensor) -> list[int]:
    return ids.tolist() if isinstance(ids, torch.Tensor) else [int(i) for i in ids]


@contextlib.contextmanager
def _one_intraop_thread():
    # DataLoader workers run with one intra-op thread; the rebuild in the main process must
    # too, or a large reduction in an augmentation sums in another order.
    threads = torch.get_num_threads()
    if threads != 1:
        torch.set_num_threads(1)
    try:
        yield
    finally:
        if threads != 1:
            torch.set_num_threads(threads)


def _stale_message(batch: Batch, cursor: DataCursor) -> str:
    if cursor.consumed < batch.start:
        why = ("the previous batch was not consumed: its apply failed or was skipped, or its handler did not "
               "call consume(ids)")
    else:
        why = ("the cursor is already past it: the loader was iterated before the journal recovered, or the cursor "
               "moved elsewhere")
    return (f"the loader's next batch starts at sample {batch.start} (ids {batch.ids[:8]}...), but the cursor has "
            f"consumed {cursor.consumed} ({cursor!r}): {why}. Iterate the loader again to continue from the cursor.")
