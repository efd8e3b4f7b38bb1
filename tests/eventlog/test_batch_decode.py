"""The batch decoder (record.decode_entries, used by every `entries()` read) gives exactly
what the per-entry decoder gives: the same entries, and for damage the same error at the
same index, whatever byte of whichever entry is damaged."""

from __future__ import annotations

import pytest
import torch

from eventlog import CorruptEntryError, record
from eventlog.codec import encode_payload


def _values(n=6):
    """(index, stored value) of n chained entries, payloads of every kind the codec writes."""
    payloads = [{"i": 1}, {"t": torch.arange(6, dtype=torch.float32).reshape(2, 3)}, {"b": b"x" * 40, "l": [1, 2]},
                None, {"s": "é", "f": 0.5}, {"n": -(2**63)}]
    out, seed = [], 0
    for index in range(1, n + 1):
        value, seed = record.frame(index, 3, b"op" if index % 2 else b"other", encode_payload(payloads[index - 1]),
                                   1_000 + index, seed)
        out.append((index, value))
    return out


def _per_entry(values, seed=0):
    """What decoding each value in turn with decode_entry gives: (entries, error or None)."""
    out = []
    for index, value in values:
        try:
            entry = record.decode_entry(index, value, seed)
        except CorruptEntryError as exc:
            return out, exc
        out.append(entry)
        seed = entry.checksum
    return out, None


def _plain(value):
    """`value` with tensors as (dtype, shape, bytes), comparable with ==."""
    if isinstance(value, torch.Tensor):
        return (str(value.dtype), tuple(value.shape), value.numpy().tobytes())
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


def _same(batch_result, expected):
    (got, got_error), (want, want_error) = batch_result, expected
    assert [(e.index, e.term, e.op, e.time_ns, e.checksum) for e in got] == \
        [(e.index, e.term, e.op, e.time_ns, e.checksum) for e in want]
    assert [_plain(e.payload) for e in got] == [_plain(e.payload) for e in want]
    assert type(got_error) is type(want_error)
    if want_error is not None:
        assert got_error.index == want_error.index and str(got_error) == str(want_error)


def test_sound_entries_decode_as_one_by_one():
    values = _values()
    _same(record.decode_entries([(i, v, len(v)) for i, v in values], 0), _per_entry(values))


@pytest.mark.parametrize("victim", [1, 2, 4])
def test_every_damaged_byte_is_the_same_error_at_the_same_index(victim):
    values = _values()
    index, value = values[victim - 1]
    for at in range(len(value)):
        for flip in (0x01, 0x80):
            damaged = bytearray(value)
            damaged[at] ^= flip
            case = values[: victim - 1] + [(index, bytes(damaged))] + values[victim:]
            result = record.decode_entries([(i, v, len(v)) for i, v in case], 0)
            _same(result, _per_entry(case))
            assert result[1] is not None, f"flipping byte {at} of entry {index} went unnoticed"


def test_a_cut_or_extended_payload_is_damage_and_the_unpacker_recovers():
    values = _values()
    index, value = values[0]
    for variant in (value[:-1], value + b"\x00"):
        case = [(index, variant)] + values[1:]
        _same(record.decode_entries([(i, v, len(v)) for i, v in case], 0), _per_entry(case))
    # bytes after a payload's msgpack document, with a matching header and checksum:
    # the reused Unpacker must not hand them to the next entry
    trailing, seed = record.frame(1, 3, b"op", encode_payload({"a": 1}) + encode_payload({"b": 2}), 5, 0)
    second, _ = record.frame(2, 3, b"op", encode_payload({"c": 3}), 6, seed)
    case = [(1, trailing), (2, second)]
    got = record.decode_entries([(i, v, len(v)) for i, v in case], 0)
    _same(got, _per_entry(case))
    assert got[1] is not None and got[1].index == 1
