"""The stream decoder's tensor layouts (codec.payload_unpacker's _LayoutCache, used by every
`entries()` read and so by replay): a tensor decoded from a cached layout is exactly what
`decode_tensor` gives (dtype, shape, bytes, fresh and writable memory of its own), and a
body that does not fit its cached header is refused as `decode_tensor` refuses it."""

from __future__ import annotations

import msgpack
import pytest
import torch

from eventlog.codec import TENSOR_EXT, decode_tensor, encode_payload, encode_tensor, payload_unpacker

from .test_codec import DTYPES, _bits, _random


def _stream(payloads):
    """Each payload decoded in turn by one reused unpacker, as record.decode_entries does."""
    unpacker, out = payload_unpacker(), []
    for data in payloads:
        unpacker.feed(data)
        out.append(unpacker.unpack())
    return out


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", [(), (0,), (3, 0, 2), (5,), (4, 3), (2, 3, 4)], ids=str)
def test_cached_layout_decodes_what_decode_tensor_does(dtype, shape):
    tensors = [_random(shape, dtype) for _ in range(3)]  # the 2nd and 3rd hit the cached layout
    for sent, got in zip(tensors, _stream([encode_payload({"t": t}) for t in tensors])):
        got = got["t"]
        reference = decode_tensor(encode_tensor(sent))
        assert (got.dtype, got.shape, got.device) == (reference.dtype, reference.shape, reference.device)
        assert torch.equal(_bits(got), _bits(sent))
        assert got.is_contiguous()


def test_cached_tensors_are_fresh_writable_and_unshared():
    sent = [torch.full((4, 3), float(k)) for k in range(4)]
    got = [p["t"] for p in _stream([encode_payload({"t": t}) for t in sent])]
    got[1].add_(100)  # a handler mutating its payload in place touches nothing else
    assert [float(t[0, 0]) for t in got] == [0.0, 101.0, 2.0, 3.0]
    assert len({t.data_ptr() for t in got}) == len(got)


def test_many_layouts_beyond_the_cache_bound_still_decode():
    sent = [torch.arange(n, dtype=torch.int32) for n in range(1, 200)]
    got = [p["t"] for p in _stream([encode_payload({"t": t}) for t in sent])]
    assert all(torch.equal(a, b) for a, b in zip(got, sent))


@pytest.mark.parametrize("extra", [-4, -1, 1, 8])
def test_a_body_not_matching_its_cached_header_is_refused(extra):
    good = encode_tensor(torch.zeros(3, dtype=torch.float32))
    bad = good + b"\x00" * extra if extra > 0 else good[:extra]
    with pytest.raises(ValueError, match="needs 12 bytes"):
        _stream([encode_payload({"t": torch.zeros(3)}), msgpack.packb(msgpack.ExtType(TENSOR_EXT, bad))])
    with pytest.raises(ValueError, match="needs 12 bytes"):
        decode_tensor(bad)  # the same refusal as the uncached decoder


def test_unknown_ext_type_is_refused_by_the_stream_decoder():
    with pytest.raises(ValueError, match="ext type 9"):
        _stream([msgpack.packb(msgpack.ExtType(9, b"x"))])
