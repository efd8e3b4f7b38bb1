"""JournaledLoader: a DataLoader under a Journal; the order is the cursor's, replay rebuilds batches bit for bit."""

from __future__ import annotations

import os
import random
from collections import Counter

import pytest
import torch

import replay
from replay.data import DataCursor
from replay.determinism import fingerprint
from replay.loader import Batch, JournaledLoader, StaleBatchError
from replay.rng import seeded_rng

pytestmark = pytest.mark.timeout(120)

SAMPLES, FEATURES, CLASSES = 22, 6, 3


class Augmented(torch.utils.data.Dataset):
    """A tiny dataset with random augmentations from torch's and Python's global RNG, and a
    large reduction whose float sum depends on the intra-op thread count. Every
    ``__getitem__`` appends its id to `calls` (a file: workers are other processes)."""

    def __init__(self, calls=None):
        g = torch.Generator().manual_seed(1234)
        self.x = torch.randn(SAMPLES, FEATURES, generator=g)
        self.y = torch.randint(0, CLASSES, (SAMPLES,), generator=g)
        self.calls = calls

    def __len__(self):
        return SAMPLES

    def __getitem__(self, i):
        if self.calls is not None:
            with open(self.calls, "a") as f:
                f.write(f"{os.getpid()} {i}\n")
        x = self.x[i] + 0.1 * torch.randn(FEATURES)
        if random.random() < 0.5:
            x = x.flip(0)
        x = x + torch.rand(200_000).sum() * 1e-6  # differs in its last bits between 1 and 2 threads
        return {"x": x, "y": self.y[i]}


def collate(samples):
    x = torch.stack([s["x"] for s in samples])
    keep = torch.bernoulli(torch.full_like(x, 0.9))  # a random collate, as an MLM collator's masking
    return {"x": x * keep, "y": torch.stack([s["y"] for s in samples])}


def calls_of(path) -> list[int]:
    if not path.exists():
        return []
    return [int(line.split()[1]) for line in path.read_text().splitlines()]


def make_state(seed=0, cursor=None):
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(FEATURES, 16), torch.nn.ReLU(), torch.nn.Dropout(0.3),
                                torch.nn.Linear(16, CLASSES))
    return {"model": model, "optim": torch.optim.SGD(model.parameters(), lr=0.1),
            "data": cursor if cursor is not None else DataCursor(SAMPLES, seed=5)}


def make_ops(loader):
    ops = replay.Ops()

    @ops.op(inputs=loader.rebuild)
    def train_step(state, *, ids, seed, inputs):
        state["data"].consume(ids)
        with seeded_rng(seed):
            loss = torch.nn.functional.cross_entropy(state["model"](inputs["x"]), inputs["y"])
        state["optim"].zero_grad()
        loss.backward()
        state["optim"].step()
        return loss.item()

    return ops


def bits(tree):
    """A nested batch as comparable bytes (float NaNs and -0.0 compared by bit pattern)."""
    if isinstance(tree, dict):
        return {k: bits(v) for k, v in tree.items()}
    return (tree.dtype, tuple(tree.shape), tree.contiguous().view(torch.uint8).flatten().tolist())


@pytest.fixture
def two_intraop_threads():
    """The suite runs torch on one thread (tests/conftest.py); the rebuild's thread rule needs more."""
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(threads)


@pytest.mark.parametrize("workers", [0, 2])
def test_order_is_the_cursors_and_rebuilt_batches_are_bit_identical(workers, two_intraop_threads):
    cursor = DataCursor(SAMPLES, seed=5)
    reference = DataCursor(SAMPLES, seed=5)
    loader = JournaledLoader(Augmented(), cursor, batch_size=4, collate_fn=collate, num_workers=workers)
    assert torch.get_num_threads() > 1  # the rebuild's thread rule is exercised
    for epoch in range(2):
        assert len(loader) == 6  # 22 samples: five batches of 4 and a partial one of 2
        sizes = []
        for batch in loader:
            assert isinstance(batch, Batch) and set(batch) == {"ids", "seed", "inputs"}
            assert batch.ids == reference.peek(len(batch.ids))  # the cursor's order, never straddling epochs
            rebuilt = loader.rebuild(**batch.payload, lr=0.1)  # the payload may hold other keys
            assert bits(rebuilt) == bits(batch.inputs)
            reference.consume(batch.ids)
            cursor.consume(batch.ids)  # what the handler does
            sizes.append(len(batch.ids))
        assert sizes == [4, 4, 4, 4, 4, 2]
        assert (cursor.epoch, cursor.position) == (epoch + 1, 0)


def test_same_position_same_seed_and_augmentation_other_position_other():
    a = JournaledLoader(Augmented(), DataCursor(SAMPLES, seed=5), batch_size=4, collate_fn=collate, seed=11)
    b = JournaledLoader(Augmented(), DataCursor(SAMPLES, seed=5), batch_size=4, collate_fn=collate, seed=11)
    first_a, first_b = next(iter(a)), next(iter(b))
    assert first_a.payload == first_b.payload and bits(first_a.inputs) == bits(first_b.inputs)
    other = JournaledLoader(Augmented(), DataCursor(SAMPLES, seed=5), batch_size=4, collate_fn=collate, seed=12)
    assert next(iter(other)).seed != first_a.seed


def test_iterating_leaves_the_global_rng_alone():
    torch.manual_seed(3)
    random.seed(3)
    before = torch.get_rng_state(), random.getstate()
    cursor = DataCursor(SAMPLES, seed=5)
    for batch in JournaledLoader(Augmented(), cursor, batch_size=8, collate_fn=collate):
        cursor.consume(batch.ids)
    assert torch.equal(torch.get_rng_state(), before[0]) and random.getstate() == before[1]


def test_endless_batches_cross_epochs_and_stay_full():
    cursor, reference = DataCursor(SAMPLES, seed=5), DataCursor(SAMPLES, seed=5)
    loader = JournaledLoader(Augmented(), cursor, batch_size=8, collate_fn=collate, endless=True)
    for _, batch in zip(range(7), loader):  # 56 samples: two epochs and a half
        assert batch.ids == reference.peek(8)
        reference.consume(batch.ids)
        cursor.consume(batch.ids)
    assert (cursor.epoch, cursor.position) == (2, 12)
    with pytest.raises(TypeError, match="no length"):
        len(loader)


def test_drop_last_needs_whole_batch_epochs_and_then_consumes_exactly_them():
    with pytest.raises(ValueError, match="epoch_length=20"):
        JournaledLoader(Augmented(), DataCursor(SAMPLES, seed=5), batch_size=4, drop_last=True)
    cursor = DataCursor(SAMPLES, seed=5, epoch_length=20)
    loader = JournaledLoader(Augmented(), cursor, batch_size=4, collate_fn=collate, drop_last=True)
    served = []
    for _ in range(2):
        assert len(loader) == 5
        for batch in loader:
            assert len(batch.ids) == 4
            cursor.consume(batch.ids)
            served.append(batch.ids)
    assert (cursor.epoch, cursor.position) == (2, 0)
    # Each epoch serves the first 20 of its permutation; the 2 left over differ per epoch.
    for epoch in range(2):
        order = DataCursor(SAMPLES, seed=5)
        order.epoch = epoch
        assert sum(served[epoch * 5:(epoch + 1) * 5], []) == order.peek(20)


def test_options_the_loader_owns_are_refused():
    cursor = DataCursor(SAMPLES)
    for option in ({"shuffle": True}, {"sampler": [0]}, {"batch_sampler": [[0]]}):
        with pytest.raises(TypeError, match="sets"):
            JournaledLoader(Augmented(), cursor, batch_size=4, **option)
    with pytest.raises(ValueError, match="in_order"):
        JournaledLoader(Augmented(), cursor, batch_size=4, in_order=False)
    with pytest.raises(ValueError, match="drop_last"):
        JournaledLoader(Augmented(), cursor, batch_size=2, drop_last=True, endless=True)
    with pytest.raises(TypeError, match="DataCursor"):
        JournaledLoader(Augmented(), object(), batch_size=2)
    with pytest.raises(ValueError, match="batch_size"):
        JournaledLoader(Augmented(), cursor, batch_size=0)
    with pytest.raises(ValueError, match="at least one id"):
        JournaledLoader(Augmented(), cursor, batch_size=2).rebuild(ids=[], seed=1)


def test_a_batch_not_at_the_cursor_is_stale():
    cursor = DataCursor(SAMPLES, seed=5)
    batches = iter(JournaledLoader(Augmented(), cursor, batch_size=4, collate_fn=collate))
    first = next(batches)
    with pytest.raises(StaleBatchError, match="was not consumed"):  # the first batch was never applied
        next(batches)
    cursor.consume(first.ids)
    cursor.consume(cursor.peek(4))
    loader = JournaledLoader(Augmented(), cursor, batch_size=4, collate_fn=collate)
    stale = iter(loader)
    fresh = next(stale)  # planned from the cursor at position 8
    cursor.consume(fresh.ids)
    cursor.consume(cursor.peek(4))  # the cursor moved elsewhere
    with pytest.raises(StaleBatchError, match="already past"):
        next(stale)
    assert next(iter(loader)).start == cursor.consumed == 16  # a new pass continues from the cursor


@pytest.mark.parametrize("workers", [0, 2])
def test_journal_replay_rebuilds_and_resume_loads_no_skipped_sample(tmp_path, workers):
    calls = tmp_path / "calls"
    steps, data = 9, Augmented(calls)

    def run(n, seed_init):
        state = make_state(seed_init)
        loader = JournaledLoader(data, state["data"], batch_size=4, collate_fn=collate, num_workers=workers,
                                 endless=True, seed=3)
        with replay.Journal.open(tmp_path / "j", state=state, ops=make_ops(loader), snapshot=replay.Every(entries=4),
                                 async_snapshots=False) as journal:
            recovery = journal.recovery
            losses = [journal.apply("train_step", **batch) for _, batch in zip(range(journal.count(), n), loader)]
            journal.flush()
            journal.abandon()  # as a crash: no snapshot on close
        return state, recovery, losses

    _, _, losses = run(steps, 0)
    assert len(losses) == steps and all(isinstance(v, float) for v in losses)  # apply returns the handler's value
    assert _loaded_whole_batches_from(0, calls_of(calls), applied=steps) >= steps
    calls.unlink()

    # Reopen from another init: the snapshot at 8 is loaded and entry 9 replayed, its batch
    # rebuilt from the log; then the loader starts at the recovered position (36 samples).
    resumed, recovery, more = run(steps + 2, 1)
    assert (recovery.entries_replayed, len(more)) == (1, 2)
    loaded = calls_of(calls)
    assert loaded[:4] == _ids_from(32, 4), "replay rebuilds entry 9's batch, and only it"
    # Every later load is a whole batch of the live pass from 36 on: samples 0..31 (and
    # the replayed ones, after their rebuild) were never loaded again.
    assert _loaded_whole_batches_from(36, loaded[4:], applied=2) >= 2

    # The same 11 steps in one go, without a journal or workers: bit-identical.
    plain = make_state(0)
    loader = JournaledLoader(Augmented(), plain["data"], batch_size=4, collate_fn=collate, endless=True, seed=3)
    handler = make_ops(loader).spec("train_step").handler
    for _, batch in zip(range(steps + 2), loader):
        handler(plain, **batch)
    assert fingerprint(resumed) == fingerprint(plain)


def _ids_from(start: int, n: int) -> list[int]:
    """The cursor's ids [start, start + n) over epochs."""
    cursor = DataCursor(SAMPLES, seed=5)
    cursor.consume(cursor.peek(start))
    return cursor.peek(n)


# Batches the two workers may have loaded past the last one handed out (prefetch_factor 2 x 2
# workers), with one more for the batch each worker may be building when the pass ends.
AHEAD = 6


def _loaded_whole_batches_from(start: int, loaded: list[int], applied: int) -> int:
    """How many batches `loaded` holds when it is, as a multiset, the `applied` batches of 4
    from sample `start` and whole batches among the AHEAD after them (workers interleave
    their lines); AssertionError otherwise. The loaded-ahead batches need not be the next
    ones: at shutdown a worker skips the batch it still had queued while the other worker
    may already have loaded a later one."""
    batches = [Counter(_ids_from(start + 4 * j, 4)) for j in range(applied + AHEAD)]
    need = sum(batches[:applied], Counter())
    assert not need - Counter(loaded), (start, applied, loaded)  # every applied batch was loaded
    extra = Counter(loaded) - need
    for chosen in range(1 << AHEAD):
        ahead = [batches[applied + j] for j in range(AHEAD) if chosen >> j & 1]
        if sum(ahead, Counter()) == extra:
            return applied + len(ahead)
    raise AssertionError(f"not whole batches of the pass from {start}: {loaded}")


def test_ids_that_are_not_the_cursors_next_are_refused_and_rolled_back(tmp_path):
    state = make_state()
    loader = JournaledLoader(Augmented(), state["data"], batch_size=4, collate_fn=collate)
    with replay.Journal.open(tmp_path / "j", state=state, ops=make_ops(loader)) as journal:
        batch = next(iter(loader))
        journal.apply("train_step", **batch)
        with pytest.raises(ValueError, match="applied twice or out of order"):
            journal.apply("train_step", **batch)  # the same ids again
        assert journal.index == 1 and state["data"].consumed == 4


def test_cursor_epoch_length_is_part_of_its_identity_and_old_snapshots_still_load():
    plain = DataCursor(10, seed=3)
    assert "epoch_length" not in plain.state_dict()  # the layout of existing snapshots is unchanged
    short = DataCursor(10, seed=3, epoch_length=8)
    short.consume(short.peek(9))
    assert (short.epoch, short.position, short.consumed) == (1, 1, 9)
    epoch1 = DataCursor(10, seed=3)
    epoch1.epoch = 1
    assert short.peek(7) == epoch1.peek(8)[1:]  # epoch 1 serves the first 8 ids of its permutation
    saved = short.state_dict()
    assert saved["epoch_length"] == 8
    with pytest.raises(ValueError, match="epoch_length"):
        DataCursor(10, seed=3).load_state_dict(saved)
    with pytest.raises(ValueError, match="epoch_length"):
        short.load_state_dict(plain.state_dict())
    restored = DataCursor(10, seed=3, epoch_length=8)
    restored.load_state_dict(saved)
    assert restored.peek(20) == short.peek(20)
    for bad in (0, 11, 2.0, True):
        with pytest.raises(ValueError, match="epoch_length"):
            DataCursor(10, epoch_length=bad)


def test_a_batch_keeps_its_type_and_start_through_pin_memorys_mapping_path():
    from torch.utils.data._utils.pin_memory import pin_memory

    batch = Batch([3, 1], 77, {"x": "not a tensor", "n": 2}, start=40)
    pinned = pin_memory(batch)  # DataLoader's pin_memory thread runs this on every batch
    assert type(pinned) is Batch and pinned.start == 40 and pinned.payload == {"ids": [3, 1], "seed": 77}
    assert pinned.inputs == batch.inputs


def test_persistent_workers_replan_from_the_cursor_on_every_pass():
    cursor, reference = DataCursor(SAMPLES, seed=5), DataCursor(SAMPLES, seed=5)
    loader = JournaledLoader(Augmented(), cursor, batch_size=4, collate_fn=collate, num_workers=2,
                             persistent_workers=True)
    for batch in loader:  # a pass abandoned after two batches (its prefetched ones are dropped)
        cursor.consume(batch.ids)
        reference.consume(batch.ids)
        if cursor.position == 8:
            break
    seen = []
    for _ in range(2):  # the rest of epoch 0, then all of epoch 1: the same workers, planned anew
        for batch in loader:
            assert batch.ids == reference.peek(len(batch.ids))
            assert bits(loader.rebuild(**batch.payload)) == bits(batch.inputs)
            cursor.consume(batch.ids)
            reference.consume(batch.ids)
            seen.append(len(batch.ids))
    assert seen == [4, 4, 4, 2] + [4, 4, 4, 4, 4, 2] and (cursor.epoch, cursor.position) == (2, 0)
