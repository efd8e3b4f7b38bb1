"""The workload every Journal fault test runs: a tiny training-like state and two ops fully
determined by the step number, so a plain fold of the first N steps is the reference."""

from __future__ import annotations

WIDTH, ROWS = 256, 32


def payload_for(step: int) -> tuple[str, dict]:
    """The op and payload of user step `step` (0-based): a training-like mix, fully determined by `step`."""
    if step % 3 == 2:
        return "touch", {"step": step, "row": (7 * step) % ROWS, "seed": step}
    return "sgd", {"step": step, "seed": 1000 + step, "lr": 0.01 * (1 + step % 4)}


def make_state(init: int = 0) -> dict:
    """A tiny training-like state: parameters, momentum, an embedding table, a counter."""
    import torch

    g = torch.Generator().manual_seed(init)
    return {
        "w": torch.randn(WIDTH, generator=g),
        "m": torch.zeros(WIDTH),
        "emb": torch.randn(ROWS, 64, generator=g).to(torch.bfloat16),
        "counters": {"steps": 0},
    }


def _check_order(state, step):
    if state["counters"]["steps"] != step:
        # Replaying an entry twice or skipping one shows up here, not only in the bytes.
        raise RuntimeError(f"step {step} applied after {state['counters']['steps']} steps")


def sgd(state, *, step, seed, lr):
    import torch

    _check_order(state, step)
    grad = torch.randn(WIDTH, generator=torch.Generator().manual_seed(seed))
    state["m"].mul_(0.9).add_(grad)
    state["w"].add_(state["m"], alpha=-lr)
    state["counters"]["steps"] = step + 1


def touch(state, *, step, row, seed):
    import torch

    _check_order(state, step)
    state["emb"][row] = torch.randn(64, generator=torch.Generator().manual_seed(seed)).to(torch.bfloat16)
    state["counters"]["steps"] = step + 1


HANDLERS = {"sgd": sgd, "touch": touch}


def make_ops():
    import replay

    ops = replay.Ops()
    ops.op(sgd)
    ops.op(touch)
    return ops


def reference(steps: int) -> dict:
    """The fold of the workload's first `steps` ops over the initial state, with no journal."""
    state = make_state(0)
    for s in range(steps):
        op, payload = payload_for(s)
        HANDLERS[op](state, **payload)
    return state


def fingerprint(state) -> dict:
    """replay.determinism.fingerprint in a form the frames carry unchanged: key paths joined
    with "/", tuples as lists (equal iff the states are bit-identical)."""
    from replay.determinism import fingerprint as kit_fingerprint

    return {"/".join(map(str, path)): _as_lists(value) for path, value in kit_fingerprint(state).items()}


def _as_lists(value):
    return [_as_lists(v) for v in value] if isinstance(value, (tuple, list)) else value
