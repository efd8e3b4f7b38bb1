"""The ops and state every golden fixture was written with (tests/golden/make_fixtures.py).

Importable as ``tests.golden.recipe:ops`` / ``:make_state`` so the CLI (``--ops``/``--state``)
replays a fixture the same way the test does. Changing anything here changes what the
fixtures mean: don't, unless the fixtures are regenerated and the expected values with them.
"""

from __future__ import annotations

import torch

import replay

ops = replay.Ops()


def make_state() -> dict:
    """A float32 vector, a bf16 vector (byte-grouped in snapshots) and a plain dict."""
    return {"w": torch.zeros(4, dtype=torch.float32), "h": torch.zeros(3, dtype=torch.bfloat16),
            "counters": {"steps": 0}}


@ops.op
def add(state, *, value):
    """A scalar payload."""
    state["w"].add_(value)
    state["counters"]["steps"] += 1


@ops.op
def mix(state, *, t):
    """A tensor payload (eventlog's tensor ext type)."""
    state["h"].add_(t)
    state["counters"]["steps"] += 1


def payload(i: int, rank: int = 0) -> tuple[str, dict]:
    """The i-th (1-based) user entry's op and payload; a rank's own data on a multi-rank journal."""
    if i % 4 == 0:
        g = torch.Generator().manual_seed(1000 * rank + i)
        return "mix", {"t": torch.randn(3, generator=g).to(torch.bfloat16)}
    return "add", {"value": ((i * 7919 + rank) % 101) / 13.0}


def reference(n: int, rank: int = 0) -> dict:
    """The state after user entries 1..n, computed without a journal."""
    state = make_state()
    for i in range(1, n + 1):
        op, kwargs = payload(i, rank)
        (add if op == "add" else mix)(state, **kwargs)
    return state
