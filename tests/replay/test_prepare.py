"""readahead.prepare unwraps the envelope of a batch of entries inline: a well-formed one
gives exactly what envelope.unwrap gives, and every malformed one is the EnvelopeError
unwrap raises, at its own position (the entries before it prepared, none after)."""

from __future__ import annotations

import pytest

from eventlog.record import Entry
from replay.envelope import unwrap
from replay.errors import EnvelopeError
from replay.readahead import Prepared, prepare

GOOD = [{"v": 1, "p": {}}, {"v": 3, "p": {"rows": [1, 2], "x": None}}, {"v": 2**40, "p": {"é": b"x"}}]
BAD = [None, [], {"v": 1}, {"v": 1, "p": {}, "x": 0}, {"v": 1, "x": {}}, {"p": {}, "x": 1},
       {"v": 0, "p": {}}, {"v": -1, "p": {}}, {"v": True, "p": {}}, {"v": 1.0, "p": {}}, {"v": "1", "p": {}},
       {"v": 1, "p": []}, {"v": 1, "p": None}, {"v": 1, "p": {1: 2}}, {"v": 1, "p": {"a": 1, b"b": 2}}]


def _entries(stored):
    return [Entry(10 + k, 2, f"op{k}", value, 1000 + k, 77 + k) for k, value in enumerate(stored)]


def test_well_formed_envelopes_are_what_unwrap_gives():
    prepared, error = prepare(_entries(GOOD), None)
    assert error is None
    assert prepared == [Prepared(10 + k, 2, f"op{k}", *unwrap(10 + k, f"op{k}", s), 77 + k) for k, s in enumerate(GOOD)]


@pytest.mark.parametrize("bad", BAD, ids=repr)
def test_a_malformed_envelope_is_unwraps_error_at_its_position(bad):
    with pytest.raises(EnvelopeError) as expected:
        unwrap(12, "op2", bad)
    prepared, error = prepare(_entries(GOOD[:2] + [bad] + GOOD[2:]), None)
    assert [p.index for p in prepared] == [10, 11]
    assert isinstance(error, EnvelopeError) and str(error) == str(expected.value)
    assert (error.index, error.op) == (12, "op2")
