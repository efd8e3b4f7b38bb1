"""JournaledLoader(accumulate=k): k micro-batches in one journaled batch, so one entry runs
the k backward() calls of an optimizer step and a resume (or a rollback) is exact."""

from __future__ import annotations

import random

import pytest
import torch

import replay
from replay.determinism import fingerprint
from replay.loader import JournaledLoader

from .harness import crash, open_journal

pytestmark = pytest.mark.timeout(240)

SAMPLES, FEATURES, CLASSES, MICRO, K = 26, 5, 3, 3, 2


class Noisy(torch.utils.data.Dataset):
    def __init__(self):
        g = torch.Generator().manual_seed(11)
        self.x, self.y = torch.randn(SAMPLES, FEATURES, generator=g), torch.randint(0, CLASSES, (SAMPLES,), generator=g)

    def __len__(self):
        return SAMPLES

    def __getitem__(self, i):  # augmentations from the global RNGs, as transforms draw
        x = self.x[i] + 0.1 * torch.randn(FEATURES)
        return (x.flip(0) if random.random() < 0.5 else x), self.y[i]


def collate(samples):
    xs, ys = zip(*samples)
    return torch.stack(xs), torch.stack(ys)


def build(init: int, num_workers: int = 0):
    torch.manual_seed(init)
    model = torch.nn.Sequential(torch.nn.Linear(FEATURES, 8), torch.nn.ReLU(), torch.nn.Dropout(0.2),
                                torch.nn.Linear(8, CLASSES))
    optim = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    cursor = replay.DataCursor(SAMPLES, seed=1)
    loader = JournaledLoader(Noisy(), cursor, batch_size=MICRO, accumulate=K, seed=6, collate_fn=collate,
                             endless=True, num_workers=num_workers)
    ops = replay.Ops()

    @ops.op(inputs=loader.rebuild)
    def train_step(state, *, ids, seed, inputs):
        state["data"].consume(ids)
        for j, (x, y) in enumerate(inputs):  # the k micro-batches of one optimizer step
            with replay.seeded_rng(seed, j):
                loss = torch.nn.functional.cross_entropy(state["model"](x), y) / len(inputs)
            loss.backward()
        state["optim"].step()
        state["optim"].zero_grad()

    return {"model": model, "optim": optim, "data": cursor}, loader, ops


def test_a_batch_holds_k_micro_batches_that_rebuild_bit_identical():
    cursor = replay.DataCursor(SAMPLES, seed=1)
    loader = JournaledLoader(Noisy(), cursor, batch_size=MICRO, accumulate=K, seed=6, collate_fn=collate)
    sizes = []
    for batch in loader:
        assert len(batch.inputs) == -(-len(batch.ids) // MICRO) <= K
        assert [len(y) for _, y in batch.inputs] == [len(batch.ids[j:j + MICRO]) for j in range(0, len(batch.ids), MICRO)]
        again = loader.rebuild(**batch.payload)  # what replay builds from the logged ids and seed
        assert all(torch.equal(a, b) for pair in zip(batch.inputs, again) for a, b in zip(*pair))
        cursor.consume(batch.ids)
        sizes.append(len(batch.ids))
    assert sizes == [MICRO * K] * (SAMPLES // (MICRO * K)) + [SAMPLES % (MICRO * K)]
    assert len(JournaledLoader(Noisy(), cursor, batch_size=MICRO, accumulate=K)) == -(-SAMPLES // (MICRO * K))


def test_options_are_checked():
    cursor = replay.DataCursor(SAMPLES, seed=1)
    for bad in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match="accumulate"):
            JournaledLoader(Noisy(), cursor, batch_size=MICRO, accumulate=bad)
    with pytest.raises(ValueError, match="6 samples per batch"):  # 21 is whole micro-batches, not whole batches
        JournaledLoader(Noisy(), replay.DataCursor(SAMPLES, seed=1, epoch_length=21), batch_size=MICRO,
                        accumulate=K, drop_last=True)
    JournaledLoader(Noisy(), replay.DataCursor(SAMPLES, seed=1, epoch_length=24), batch_size=MICRO, accumulate=K,
                    drop_last=True)


def _plain(steps: int):
    state, loader, ops = build(0)
    handler = ops.spec("train_step").handler
    for _, batch in zip(range(steps), loader):
        handler(state, **batch)
    return fingerprint(state)


@pytest.mark.parametrize("num_workers", [0, 2])
def test_a_crash_between_entries_resumes_bit_identical_to_an_uninterrupted_run(tmp_path, num_workers):
    """Crash after 4 steps (abandoned as a kill would), reopen with another init, train on
    to 11: the bytes of an uninterrupted run (an epoch boundary, with its short batch, included)."""
    steps = 11
    state, loader, ops = build(0, num_workers)
    journal = open_journal(tmp_path, state, ops, snapshot=replay.Every(entries=3))
    for _, batch in zip(range(4), loader):
        journal.apply("train_step", **batch)
    journal.flush()
    crash(journal)
    state, loader, ops = build(123, num_workers)
    with open_journal(tmp_path, state, ops, snapshot=replay.Every(entries=3)) as journal:
        assert journal.count() == 4 and journal.recovery.entries_replayed == 1  # snapshot 3, entry 4 replayed
        for _, batch in zip(range(journal.count(), steps), loader):
            journal.apply("train_step", **batch)
    assert fingerprint(state) == _plain(steps)
