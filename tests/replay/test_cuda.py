"""CUDA: digests agree across devices, payload tensors reach handlers on the state's device, restore stays on it,
replay inside ``torch.cuda.stream(s)`` copies payloads on s."""

from __future__ import annotations

import pytest
import torch

import replay
from replay import readahead
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


def test_replay_copies_payloads_on_the_stream_current_when_it_began(tmp_path, monkeypatch):
    """The read-ahead thread copies payload tensors to the GPU on the replaying thread's
    current stream, so the handlers' kernels there are ordered after the copies."""
    ops = replay.Ops()

    @ops.op
    def put(state, *, rows, values):
        state["table"][rows] += values

    def make():
        return {"table": torch.zeros(4, 3, device="cuda")}

    state = make()
    with open_journal(tmp_path, state, ops, snapshot=replay.Every(entries=1000), snapshot_on_close=False) as journal:
        for i in range(6):
            journal.apply("put", rows=[i % 4], values=torch.full((1, 3), float(i)))
    streams = []
    copy = readahead.to_device

    def recording(obj, device):
        streams.append(torch.cuda.current_stream(device))
        return copy(obj, device)

    monkeypatch.setattr(readahead, "to_device", recording)
    side = torch.cuda.Stream()
    again = make()
    with torch.cuda.stream(side):
        with open_journal(tmp_path, again, ops, snapshot=replay.Every(entries=1000), snapshot_on_close=False):
            pass
    torch.cuda.synchronize()
    assert len(streams) >= 6 and all(s == side for s in streams), streams
    assert_same(again, state)
