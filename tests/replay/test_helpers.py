"""DataCursor and seeded generators: data order and randomness that resume exactly."""

from __future__ import annotations

import pytest
import torch

import replay

from .harness import crash, open_journal
from .models import SAMPLES, make_ops, make_state


def test_seeded_generator_is_reproducible_and_salted():
    a = torch.rand(4, generator=replay.seeded_generator(7))
    assert torch.equal(a, torch.rand(4, generator=replay.seeded_generator(7)))
    assert not torch.equal(a, torch.rand(4, generator=replay.seeded_generator(8)))
    assert not torch.equal(torch.rand(4, generator=replay.seeded_generator(7, 1)),
                           torch.rand(4, generator=replay.seeded_generator(7, 2)))
    with pytest.raises(TypeError):
        replay.seeded_generator(1.5)


def test_data_cursor_hands_out_each_sample_once_per_epoch_and_refuses_repeats():
    cursor = replay.DataCursor(10, seed=3)
    seen = []
    for _ in range(5):
        ids = cursor.peek(4)
        cursor.consume(ids)
        seen.extend(ids)
    assert sorted(seen[:10]) == list(range(10)) and sorted(seen[10:20]) == list(range(10))
    assert cursor.consumed == 20 and (cursor.epoch, cursor.position) == (2, 0)
    with pytest.raises(ValueError, match="applied twice"):
        cursor.consume(seen[-4:])
    assert cursor.peek(0) == []


def test_data_cursor_state_round_trips_and_checks_configuration():
    a = replay.DataCursor(10, seed=3)
    a.consume(a.peek(7))
    b = replay.DataCursor(10, seed=3)
    b.load_state_dict(a.state_dict())
    assert b.peek(9) == a.peek(9)
    with pytest.raises(ValueError, match="seed"):
        replay.DataCursor(10, seed=4).load_state_dict(a.state_dict())


def test_training_resumes_with_exactly_once_sample_consumption_across_a_crash(tmp_path):
    state, ops = make_state(), make_ops()
    journal = open_journal(tmp_path, state, ops, snapshot=replay.Every(entries=5))
    consumed = []
    for s in range(6):
        ids = state["data"].peek(12)
        journal.apply("train_step", ids=ids, seed=s)
        consumed.extend(ids)
    journal.flush()
    crash(journal)
    again = make_state(seed=1)
    with open_journal(tmp_path, again, ops) as journal:
        assert again["data"].consumed == len(consumed)
        ids = again["data"].peek(SAMPLES)
        # The rest of this epoch is exactly the samples the first run had not consumed yet.
        rest = ids[: SAMPLES - len(consumed) % SAMPLES]
        assert sorted(consumed[SAMPLES:] + rest) == list(range(SAMPLES))
        journal.apply("train_step", ids=rest[:4], seed=99)
        with pytest.raises(replay.HandlerError if False else ValueError):
            journal.apply("train_step", ids=rest[:4], seed=99)  # the same samples again: refused
