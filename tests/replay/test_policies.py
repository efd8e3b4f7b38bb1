"""Snapshot policies fire on each of their bounds."""

from __future__ import annotations

import pytest

import replay

from .harness import open_journal
from .models import make_ops, make_state


def _snapshot_indexes(journal):
    return [i.index for i in journal.snapshots.list()]


@pytest.mark.parametrize("policy, applies, expected", [
    (replay.Every(entries=4), 9, [0, 4, 8]),
    (replay.Every(), 9, [0]),
])
def test_every_fires_on_its_bound(tmp_path, policy, applies, expected):
    with open_journal(tmp_path, make_state(), make_ops(), snapshot=policy, keep_last=10, keep_log=True,
                      async_snapshots=False) as journal:
        for i in range(applies):
            journal.apply("add", row=i % 4, value=float(i))
        indexes = _snapshot_indexes(journal)
    assert indexes == expected


def test_log_bytes_counts_appended_payload_bytes(tmp_path):
    with open_journal(tmp_path, make_state(), make_ops(), snapshot=replay.Every(log_bytes=60), keep_last=20,
                      keep_log=True, async_snapshots=False) as journal:
        for i in range(12):
            journal.apply("add", row=i % 4, value=float(i))
        # Stored bytes of each entry: the 32-byte header, the op name and the payload.
        sizes = {h.index: 32 + len(h.op.encode()) + h.payload_size for h in journal.log.headers()}
        indexes = _snapshot_indexes(journal)
    expected, total = [0], 0
    for index in sorted(sizes):
        total += sizes[index]
        if total >= 60:
            expected.append(index)
            total = 0
    assert len(expected) > 2 and indexes == expected


class _HandlerClock:
    """Stands in for the apply path's `time` module (replay.applier): perf_counter advances
    only when a handler says it spent time, so the policy sees exact apply costs however
    loaded the machine is."""

    def __init__(self):
        self.now = 0.0

    def perf_counter(self):
        return self.now


def test_replay_seconds_uses_measured_apply_cost(tmp_path, monkeypatch):
    import replay.applier

    clock = _HandlerClock()
    monkeypatch.setattr(replay.applier, "time", clock)
    ops = make_ops()

    @ops.op
    def slow(state, *, ms):
        clock.now += ms / 1000

    with open_journal(tmp_path, make_state(), ops, snapshot=replay.Every(replay_seconds=0.05), keep_last=10,
                      keep_log=True, async_snapshots=False) as journal:
        for _ in range(5):
            journal.apply("add", row=0, value=1.0)  # costs nothing on this clock: no snapshot
        assert _snapshot_indexes(journal) == [0]
        for _ in range(3):
            journal.apply("slow", ms=30)
        assert _snapshot_indexes(journal) == [0, 7]  # 30 + 30 ms reach 50 ms at index 7; 8 alone does not


def test_every_validates_bounds():
    with pytest.raises(ValueError):
        replay.Every(entries=0)
