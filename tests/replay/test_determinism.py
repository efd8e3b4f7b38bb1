"""Digests catch divergence; the digest itself is exact, bit- and order-sensitive; the guard."""

from __future__ import annotations

import pytest
import torch

import replay
from replay.determinism import tensor_digest

from .harness import open_journal
from .models import make_ops, make_state


def test_handler_reading_global_rng_is_caught_by_digests(tmp_path):
    ops = make_ops()

    @ops.op
    def noisy(state, *, row):
        state["table"][row] += torch.rand(())  # global RNG: not in the payload, not replayable

    state = make_state()
    with open_journal(tmp_path, state, ops, digest_every=4, snapshot=replay.Every(), keep_log=True,
                      snapshot_on_close=False) as journal:  # no closing snapshot: the reopen replays
        with pytest.warns(replay.UnseededDrawWarning, match="'noisy'"):  # the default check saw it at once
            for i in range(8):
                journal.apply("noisy", row=i % 4)
        digests = [h.index for h in journal.log.headers() if h.op == "replay.digest"]
    assert digests and digests[0] == 5
    again = make_state()  # (make_state reseeds the global RNG, so reseed after it)
    torch.manual_seed(12345)  # a different global RNG state on "restart"
    with pytest.raises(replay.DivergenceError) as err:
        open_journal(tmp_path, again, ops)
    assert err.value.index == digests[0]
    assert err.value.expected != err.value.actual


def test_divergence_error_names_the_last_good_index_and_the_truncate_that_recovers(tmp_path):
    """A digest checks only the entries before it: the error says which range is suspect and
    what to run; after the fix and that truncate, the journal opens and the loop redoes the steps."""
    ops = make_ops()
    broken = [False]

    @ops.op
    def step(state, *, row, seed):
        extra = torch.rand(()) if broken[0] else 0.0  # the nondeterminism the user must fix
        state["table"][row] += torch.randint(0, 100, (), generator=replay.seeded_generator(seed)) + extra

    with open_journal(tmp_path, make_state(), ops, digest_every=3, snapshot=replay.Every(),
                      snapshot_on_close=False, rng_check="off") as journal:  # digests alone, here
        for s in range(4):  # entries 1, 2, 3, (digest 4), 5: all deterministic
            journal.apply("step", row=s % 4, seed=s)
        broken[0] = True
        for s in range(4, 8):  # 6, (digest 7): the first diverging digest; 8, 9, (digest 10), 11
            journal.apply("step", row=s % 4, seed=s)
        assert journal.count() == 8
    broken[0] = False
    with pytest.raises(replay.DivergenceError) as err:
        open_journal(tmp_path, make_state(), ops)
    assert (err.value.index, err.value.last_good) == (7, 4)
    message = str(err.value)
    assert "verified at index 4" in message and "5..6" in message
    assert "replay truncate DIR --after 4" in message and "replay.truncate(path, after=4)" in message
    replay.truncate(tmp_path, after=err.value.last_good, reason="divergence")
    with open_journal(tmp_path, make_state(), ops, digest_every=3) as journal:
        assert journal.count() == 3 and journal.recovery.digests_checked == 1
        for s in range(journal.count(), 8):
            journal.apply("step", row=s % 4, seed=s)
        assert journal.count() == 8


def test_deterministic_handlers_pass_their_digests(tmp_path):
    state, ops = make_state(), make_ops()
    with open_journal(tmp_path, state, ops, digest_every=3, snapshot=replay.Every(), keep_log=True,
                      snapshot_on_close=False) as journal:
        for s in range(6):
            journal.apply("train_step", ids=state["data"].peek(4), seed=s)
    with open_journal(tmp_path, make_state(seed=3), ops) as journal:
        assert journal.recovery.digests_checked == 2


def test_tensor_digest_is_exact_and_sensitive_to_every_bit_and_to_order():
    torch.manual_seed(0)
    x = torch.randn(257)
    base = tensor_digest(x)
    assert tensor_digest(x.clone()) == base
    raw = x.view(torch.int32)
    for word in (0, 100, 256):
        for bit in (0, 17, 31):
            y = raw.clone()
            y[word] ^= 1 << bit if bit < 31 else -(1 << 31)
            assert tensor_digest(y.view(torch.float32)) != base
    assert tensor_digest(x.flip(0)) != base
    assert tensor_digest(x[1:]) != tensor_digest(x[:-1])
    for dtype in (torch.bfloat16, torch.float16, torch.int8, torch.bool, torch.float64):
        t = torch.ones(5, dtype=dtype)
        assert tensor_digest(t) == tensor_digest(t.clone())


def test_state_digest_covers_non_tensor_leaves_and_component_order_insensitivity():
    a = {"t": torch.zeros(3), "d": {"step": 1, "lr": 0.1}}
    b = {"d": {"lr": 0.1, "step": 1}, "t": torch.zeros(3)}
    assert replay.state_digest(a) == replay.state_digest(b)
    b["d"]["step"] = 2
    assert replay.state_digest(a) != replay.state_digest(b)


def test_deterministic_guard_turns_on_and_restores(tmp_path):
    assert not torch.are_deterministic_algorithms_enabled()
    with open_journal(tmp_path, make_state(), make_ops(), deterministic=True):
        assert torch.are_deterministic_algorithms_enabled()
    assert not torch.are_deterministic_algorithms_enabled()
