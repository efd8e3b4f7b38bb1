"""Ops.check_payload's keyword fast path accepts and refuses exactly what binding the
handler's signature does (the rule it replaces on every apply), with the same message."""

from __future__ import annotations

import itertools

import pytest

import replay
from replay.errors import PayloadRejectedError


def _handlers():
    def kw_only(state, *, x, y=1): pass
    def positional_or_keyword(state, x, y=2): pass
    def with_inputs(state, *, x, inputs=None): pass
    def var_keyword(state, *, x, **rest): pass
    def positional_only_after_state(state, x, /, *, y): pass
    def var_positional(state, *args, x): pass
    def state_only(state): pass
    def needs_inputs(state, *, x, inputs): pass
    return [kw_only, positional_or_keyword, with_inputs, var_keyword, positional_only_after_state, var_positional,
            state_only, needs_inputs]


PAYLOAD_KEYS = ["x", "y", "z", "state", "rest", "args"]


def _outcome(call):
    try:
        call()
    except (TypeError, PayloadRejectedError) as exc:
        return str(exc).rsplit("rejected: ", 1)[-1]
    return "ok"


@pytest.mark.parametrize("handler", _handlers(), ids=lambda h: h.__name__)
def test_check_payload_agrees_with_binding_the_signature(handler):
    import inspect

    ops = replay.Ops()
    ops.op(handler, inputs=(lambda **payload: None) if handler.__name__ == "needs_inputs" else None)
    signature = inspect.signature(handler)
    passes_inputs = "inputs" in signature.parameters
    for size in range(len(PAYLOAD_KEYS) + 1):
        for keys in itertools.combinations(PAYLOAD_KEYS, size):
            payload = {key: 1 for key in keys}
            extra = {"inputs": None} if passes_inputs else {}
            expected = _outcome(lambda: signature.bind(None, **payload, **extra))
            # twice: the first call learns the op's keywords, the second uses them
            for _ in range(2):
                assert _outcome(lambda: ops.check_payload(handler.__name__, payload)) == expected, (keys, expected)
