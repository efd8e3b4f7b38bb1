"""CUDA: digests agree across devices, payload tensors reach handlers on the state's device, restore stays on it."""

from __future__ import annotations

import pytest
import torch

import replay
from replay.determinism import tensor_digest

from .harness import open_journal
from .models import assert_same

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


def test_digest_is_the_same_on_cpu_and_cuda():
    x = torch.randn(10_001, dtype=torch.bfloat16)
    assert tensor_digest(x) == tensor_digest(x.cuda())


def test_cuda_state_recovers_in_place_on_its_device(tmp_path):
    ops = replay.Ops()
    devices = []

    @ops.op
    def put(state, *, rows, values):
        devices.append(values.device.type)
        state["table"][rows] += values

    def make():
        return {"table": torch.zeros(4, 3, device="cuda"), "meta": {"n": 0}}

    state = make()
    with open_journal(tmp_path, state, ops, snapshot=replay.Every(entries=2), digest_every=2) as journal:
        for i in range(5):
            journal.apply("put", rows=[i % 4], values=torch.full((1, 3), float(i)))
    again = make()
    table = again["table"]
    with open_journal(tmp_path, again, ops):
        assert again["table"] is table and table.is_cuda
        assert_same(again, state)
    assert set(devices) == {"cuda"}
