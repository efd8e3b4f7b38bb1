"""Chunk encoding policy: byte grouping is exact, streams that do not compress are stored
raw (decided on a sample) and still verify, compressible ones are compressed, and the
compression ratios on trained-like float data stay within the targets."""

from __future__ import annotations

import pytest
import torch

from snapshots.chunkfile import (
    CODEC_RAW,
    CODEC_STREAMS,
    CODEC_ZSTD,
    HEADER,
    SAMPLE_MIN,
    STREAM,
    ChunkCodec,
    chunk_id,
    group,
    ungroup,
)
from snapshots.tensorbytes import byte_view

from tests.chunkcopies import all_regions

from .conftest import assert_same

CHUNK = 1 << 20  # streams of 256 KiB and more: large enough to be sampled


def _table(parts: list) -> tuple[int, int, list[int]]:
    """(codec, width, stream codecs) of an encoded chunk."""
    data = b"".join(bytes(memoryview(p)) for p in parts)
    _, _, codec, width, _, _ = HEADER.unpack_from(data)
    if codec != CODEC_STREAMS:
        return codec, width, []
    return codec, width, [STREAM.unpack_from(data, HEADER.size + j * STREAM.size)[0] for j in range(width)]


@pytest.fixture
def open_store(open_store):
    """The stores of this module compress (the codec under test); the default stores raw."""

    def make(path=None, **options):
        options.setdefault("compression", "zstd")
        return open_store(path, **options)

    return make


@pytest.mark.parametrize("width", [1, 2, 4, 8])
def test_group_and_ungroup_are_exact_inverses_for_every_byte_value(width):
    values = torch.arange(256, dtype=torch.uint8)
    # Every byte value at every position of an element, including the sign byte.
    raw = torch.cat([values.repeat_interleave(width), values.flip(0).repeat(width), values.repeat(width)])
    grouped = group(raw, width, torch.empty_like(raw))
    assert torch.equal(grouped, torch.cat([raw[j::width] for j in range(width)]))
    assert torch.equal(ungroup(grouped, width, torch.empty_like(raw)), raw)


def _weights(dtype, n, seed=0):
    g = torch.Generator().manual_seed(seed)
    wide = torch.float64 if dtype == torch.float64 else torch.float32  # no zero low bytes
    return (torch.randn(n, generator=g, dtype=wide) * 0.02).to(dtype)


@pytest.mark.parametrize("dtype,compressed", [
    (torch.bfloat16, [1]),
    (torch.float16, [1]),
    (torch.float32, [3]),
    (torch.float64, [6, 7]),  # byte 6 holds 4 exponent bits
])
def test_mantissa_streams_are_stored_raw_and_exponent_streams_compressed(dtype, compressed):
    raw = byte_view(_weights(dtype, CHUNK // dtype.itemsize))
    assert raw.numel() // dtype.itemsize >= SAMPLE_MIN
    codec, width, streams = _table(ChunkCodec().encode(raw, dtype.itemsize))
    assert (codec, width) == (CODEC_STREAMS, dtype.itemsize)
    assert [j for j, c in enumerate(streams) if c == CODEC_ZSTD] == compressed
    assert all(c == CODEC_RAW for j, c in enumerate(streams) if j not in compressed)


def test_compressible_low_bytes_are_not_skipped_by_the_sample():
    # fp32 widened from bf16: the two low bytes of every element are zero.
    raw = byte_view(_weights(torch.bfloat16, CHUNK // 4).float())
    _, _, streams = _table(ChunkCodec().encode(raw, 4))
    assert streams[0] == streams[1] == streams[3] == CODEC_ZSTD


def test_partly_compressible_stream_is_found_by_the_sample():
    # Random mantissas, but the last eighth of the chunk is zeros: still worth compressing.
    t = _weights(torch.bfloat16, CHUNK // 2)
    t[-len(t) // 8:] = 0
    _, _, streams = _table(ChunkCodec().encode(byte_view(t), 2))
    assert streams == [CODEC_ZSTD, CODEC_ZSTD]


def test_noise_is_stored_as_a_raw_chunk():
    g = torch.Generator().manual_seed(3)
    raw = torch.randint(0, 256, (CHUNK,), dtype=torch.uint8, generator=g)
    for width in (1, 2, 4):
        codec, width_stored, _ = _table(ChunkCodec().encode(raw, width))
        assert (codec, width_stored) == (CODEC_RAW, 1)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32, torch.float64, torch.complex64])
def test_chunks_with_raw_streams_round_trip_and_verify(open_store, tmp_path, dtype):
    store = open_store(chunk_size=CHUNK)
    g = torch.Generator().manual_seed(1)
    t = torch.randn(3 * CHUNK // dtype.itemsize + 5, generator=g, dtype=torch.float32 if not dtype.is_complex else dtype)
    state = {"w": (t * 0.02).to(dtype), "zeros": torch.zeros(CHUNK // dtype.itemsize, dtype=dtype)}
    info = store.save(state, index=1, term=1)
    assert store.verify(info).ok
    assert_same(store.load(info), state)
    live = {"w": torch.empty_like(state["w"]), "zeros": torch.ones_like(state["zeros"])}
    store.load_into(info, live)
    assert_same(live, state)
    # Every chunk file (loose, or its range in a pack) decodes, by itself, to bytes that
    # hash to its name.
    copies = all_regions(tmp_path / "snap")
    assert len(copies) == info.chunks
    for where in copies:
        raw_len = HEADER.unpack(where.read()[:HEADER.size])[5]
        out = torch.empty(raw_len, dtype=torch.uint8)
        ChunkCodec().read(where.path, raw_len, where.size, out, where.offset if where.pack else None)
        assert chunk_id(out) == where.cid


@pytest.mark.parametrize("dtype,target", [(torch.bfloat16, 0.70), (torch.float32, 0.87)])
def test_compression_ratio_of_trained_like_weights_meets_target(open_store, dtype, target):
    store = open_store(chunk_size=4 << 20)
    state = {f"w{i}": _weights(dtype, (2 << 20) // dtype.itemsize, seed=i) for i in range(4)}
    info = store.save(state, index=1, term=1)
    assert info.bytes_stored / info.bytes_logical <= target


def test_compression_ratio_of_adam_moments_meets_fp32_target(open_store):
    g = torch.Generator().manual_seed(5)
    n = (2 << 20) // 4
    state = {"exp_avg": torch.randn(n, generator=g) * 1e-4, "exp_avg_sq": (torch.randn(n, generator=g) * 1e-4).square()}
    info = open_store(chunk_size=4 << 20).save(state, index=1, term=1)
    assert info.bytes_stored / info.bytes_logical <= 0.87
