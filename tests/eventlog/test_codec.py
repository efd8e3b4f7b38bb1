"""Payload codec: every dtype and shape class round-trips bit-exactly; bad input is named."""

import math

import msgpack
import pytest
import torch

from eventlog.codec import TENSOR_EXT, decode_payload, decode_tensor, encode_payload, encode_tensor

DTYPES = [
    torch.float32, torch.float64, torch.float16, torch.bfloat16, torch.uint8, torch.int8,
    torch.int16, torch.int32, torch.int64, torch.bool, torch.complex64, torch.complex128,
] + [getattr(torch, n) for n in ("uint16", "uint32", "uint64", "float8_e4m3fn", "float8_e5m2") if hasattr(torch, n)]


def _random(shape, dtype):
    raw = torch.randint(0, 256, (math.prod(shape) * torch.empty((), dtype=dtype).element_size(),), dtype=torch.uint8)
    if dtype == torch.bool:
        return (raw % 2).bool().reshape(shape)
    return raw.view(dtype).reshape(shape)


def _bits(t):
    return t.contiguous().reshape(-1).view(torch.uint8) if t.numel() else t


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", [(), (0,), (3, 0, 2), (5,), (4, 3), (2, 3, 4)], ids=str)
def test_tensor_round_trip_is_bit_exact(dtype, shape):
    t = _random(shape, dtype)
    got = decode_payload(encode_payload({"t": t}))["t"]
    assert got.dtype == dtype and tuple(got.shape) == shape
    assert torch.equal(_bits(got), _bits(t))  # bitwise: NaN payloads and -0.0 included


def test_non_contiguous_and_views():
    base = torch.arange(24, dtype=torch.float32).reshape(4, 6)
    for view in (base.t(), base[:, ::2], base[1:3], base.expand(2, 4, 6)[1], base.unsqueeze(0).transpose(0, 2)):
        got = decode_tensor(encode_tensor(view))
        assert got.is_contiguous() and torch.equal(got, view)


def test_conjugate_and_negative_views_are_resolved():
    z = torch.tensor([1 + 2j, 3 - 4j], dtype=torch.complex64)
    assert torch.equal(decode_tensor(encode_tensor(z.conj())), z.conj().resolve_conj())


def test_decoded_tensors_are_fresh_and_writable():
    t = torch.ones(4)
    got = decode_tensor(encode_tensor(t))
    got.add_(1)
    assert torch.equal(t, torch.ones(4)) and torch.equal(got, torch.full((4,), 2.0))


def test_parameters_and_grad_tensors_encode_as_plain_tensors():
    p = torch.nn.Parameter(torch.randn(3))
    got = decode_payload(encode_payload(p))
    assert type(got) is torch.Tensor and not got.requires_grad and torch.equal(got, p.detach())


def test_unsupported_tensors_are_type_errors_naming_the_path():
    sparse = torch.eye(3).to_sparse()
    with pytest.raises(TypeError, match=r"payload\['w'\]\[0\].*layout"):
        encode_payload({"w": [sparse]})


@pytest.mark.parametrize("bad, where", [
    ({"a": {"b": object()}}, r"payload\['a'\]\['b'\]"),
    ([1, 2, {3}], r"payload\[2\]"),
    ({"big": 2**70}, r"payload\['big'\].*64 bits"),
    ({"s": "\ud800"}, r"payload\['s'\].*UTF-8"),
    ({(1, 2): 3}, r"payload\[\(1, 2\)\].*key"),
])
def test_unencodable_values_are_named(bad, where):
    with pytest.raises(TypeError, match=where):
        encode_payload(bad)


def _tensor_ext(body):
    return msgpack.packb(msgpack.ExtType(TENSOR_EXT, body))


@pytest.mark.parametrize("body, message", [
    (b"\x01", "shorter"),
    (b"\x02\x01\x00", "codec version"),
    (b"\x01\xee\x00", "dtype code"),
    (b"\x01\x01\x21", "ndim"),
    (b"\x01\x01\x01" + (2**40).to_bytes(8, "big"), "needs"),  # a hostile shape, no allocation
    (b"\x01\x01\x01" + (3).to_bytes(8, "big") + b"\x00" * 11, "needs 12 bytes"),
])
def test_malformed_tensor_ext_is_rejected(body, message):
    with pytest.raises(ValueError, match=message):
        decode_payload(_tensor_ext(body))


def test_unknown_ext_type_is_rejected():
    with pytest.raises(ValueError, match="ext type 9"):
        decode_payload(msgpack.packb(msgpack.ExtType(9, b"x")))
