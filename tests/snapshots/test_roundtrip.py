"""Round trips: every dtype and shape class, containers and key types, a model with its
AdamW state, map_location, load_into, and what is refused."""

from __future__ import annotations

import math
from collections import OrderedDict, namedtuple

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import snapshots
from snapshots.tensorbytes import DTYPES

from .conftest import assert_same, small_model_and_optimizer


def _sample(dtype: torch.dtype, shape, seed: int = 0) -> torch.Tensor:
    """Random bits reinterpreted as dtype: every bit pattern, NaN payloads included."""
    g = torch.Generator().manual_seed(seed)
    n = math.prod(shape) * dtype.itemsize
    raw = torch.randint(0, 256, (n,), dtype=torch.uint8, generator=g)
    if dtype == torch.bool:
        raw = raw % 2
    return raw.view(dtype).reshape(shape) if n else torch.empty(shape, dtype=dtype)


@pytest.mark.parametrize("name", sorted(DTYPES))
@pytest.mark.parametrize("shape", [(), (0,), (3, 0, 2), (1,), (7, 13), (3000,)], ids=str)
def test_every_dtype_and_shape_round_trips(store, name, shape):
    t = _sample(DTYPES[name], shape)
    info = store.save({"t": t}, index=1, term=1)
    assert_same(store.load(info), {"t": t})
    assert info.bytes_logical == t.numel() * t.element_size()


def test_non_contiguous_views_and_shared_storage(store):
    base = torch.randn(40, 30)
    state = {
        "transposed": base.t(),
        "strided": base[::3, 1::2],
        "row": base[5],
        "same_storage": [base[:10], base[5:15]],
        "expanded": torch.randn(1, 6).expand(4, 6),
        "conj": torch.randn(5, dtype=torch.complex64).conj(),
        "bf16_t": base.to(torch.bfloat16).t(),
    }
    back = store.load(store.save(state, index=1, term=1))
    assert_same(back, {k: _materialize(v) for k, v in state.items()})
    assert back["same_storage"][0].data_ptr() != back["same_storage"][1].data_ptr()


def _materialize(v):
    if isinstance(v, list):
        return [_materialize(x) for x in v]
    return v.resolve_conj().contiguous().clone()


def test_tensor_spanning_many_chunks_with_a_short_tail(open_store):
    store = open_store(chunk_size=1024)
    t = torch.randn(10_000, dtype=torch.float64)[:9_999]  # 79992 bytes: 78 full chunks + tail
    info = store.save([t], index=1, term=1)
    assert info.chunks >= 78
    assert_same(store.load(info), [t])


def test_containers_scalars_and_key_types(store):
    Point = namedtuple("Point", "x y")
    state = OrderedDict(
        [
            ("none", None), ("bools", [True, False]), ("int", -(2**63)), ("uint", 2**64 - 1),
            ("float", 1.5), ("nan", float("nan")), ("inf", -math.inf), ("str", "héllo"), ("bytes", b"\x00\xff"),
            ("int_keys", {0: "a", 1: {2: torch.ones(2)}, -5: None}),
            ("mixed_keys", {None: 1, True: 2, 2.5: 3, b"k": 4, "s": 5}),
            ("tuple", (1, "a", (torch.zeros(3), None))),
            ("empty", {"d": {}, "l": [], "t": ()}),
        ]
    )
    back = store.load(store.save(state, index=1, term=1))
    assert_same(back, state)
    # Documented lossy cases: tuple subclasses load as plain tuples, torch.Size too.
    back = store.load(store.save({"p": Point(1, 2), "size": torch.Size([2, 3])}, index=2, term=1))
    assert_same(back, {"p": (1, 2), "size": (2, 3)})


def test_model_and_adamw_state_round_trip_bit_identically(store):
    model, optim = small_model_and_optimizer()
    state = {"model": model.state_dict(), "optim": optim.state_dict()}
    info = store.save(state, index=7, term=2)
    back = store.load(info)
    assert_same(back["model"], model.state_dict())
    assert_same(back["optim"], optim.state_dict())
    assert all(type(k) is int for k in back["optim"]["state"])

    model2, optim2 = small_model_and_optimizer(seed=1, steps=1)
    model2.load_state_dict(back["model"])
    optim2.load_state_dict(back["optim"])
    assert_same(optim2.state_dict(), optim.state_dict())
    # Both continue identically from the restored state.
    batch = torch.randint(0, 50, (4, 5))
    for m, o in ((model, optim), (model2, optim2)):
        o.zero_grad()
        m(batch).square().mean().backward()
        o.step()
    assert_same(model2.state_dict(), model.state_dict())


def test_load_into_copies_in_place_and_keeps_references(store):
    model, optim = small_model_and_optimizer()
    live = {"params": dict(model.named_parameters()), "cursor": {"epoch": 1, "seen": [1, 2]}, "step": 5}
    saved = {k: v.detach().clone() for k, v in live["params"].items()}
    info = store.save(live, index=1, term=1)
    pointers = {k: v.data_ptr() for k, v in live["params"].items()}
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1)
    live["cursor"]["epoch"], live["cursor"]["seen"] = 9, [1, 2, 3, 4]
    live["cursor"]["extra"] = "gone after restore"
    live["step"] = 6

    assert store.load_into(info, live) == info
    for k, p in live["params"].items():
        assert p.data_ptr() == pointers[k]
        assert torch.equal(p, saved[k])
    assert live["cursor"] == {"epoch": 1, "seen": [1, 2]}
    assert live["step"] == 5
    assert optim.param_groups[0]["params"][0] is live["params"]["0.weight"]


@pytest.mark.parametrize(
    "mutate, key",
    [
        (lambda s: s.update(w=torch.zeros(3, 3)), "['w']"),
        (lambda s: s.update(w=torch.zeros(2, 2, dtype=torch.float64)), "['w']"),
        (lambda s: s.update(w=[1, 2]), "['w']"),
        (lambda s: s["nested"].pop("b"), "['nested']['b']"),
        (lambda s: s["nested"].update(c=torch.ones(1)), "['nested']['c']"),
        (lambda s: s.update(items=[torch.ones(2)]), "['items']"),
    ],
)
def test_load_into_mismatch_names_the_key_and_changes_nothing(store, mutate, key):
    live = {"w": torch.ones(2, 2), "nested": {"b": torch.zeros(4)}, "items": [torch.ones(2), torch.ones(2)], "n": 1}
    info = store.save(live, index=1, term=1)
    live["n"] = 2
    mutate(live)
    w_before = live["w"].clone() if isinstance(live["w"], torch.Tensor) else None
    with pytest.raises(snapshots.StateMismatchError) as e:
        store.load_into(info, live)
    assert e.value.key == key
    assert live["n"] == 2  # checked before anything is touched: nothing was restored
    if w_before is not None:
        assert torch.equal(live["w"], w_before)


def test_map_location_and_root_tensor(store):
    t = torch.arange(12, dtype=torch.int16).reshape(3, 4)
    info = store.save(t, index=1, term=1)
    back = store.load(info, map_location=torch.device("cpu"))
    assert_same(back, t)
    live = torch.zeros(3, 4, dtype=torch.int16)
    store.load_into(info, live)
    assert torch.equal(live, t)


@pytest.mark.filterwarnings("ignore::UserWarning")
@pytest.mark.parametrize(
    "state, where",
    [
        ({"a": {"b": [1, object()]}}, "['a']['b'][1]"),
        ({"a": {1.5: {"s": {1, 2}}}}, "['a'][1.5]['s']"),
        ({"big": 2**70}, "['big']"),
        ({("tuple", "key"): 1}, "<root>"),
        ({"q": torch.quantize_per_tensor(torch.ones(2), 0.1, 0, torch.qint8)}, "['q']"),
        ({"sparse": torch.eye(3).to_sparse()}, "['sparse']"),
        ({"meta": torch.empty(2, device="meta")}, "['meta']"),
    ],
)
def test_unsupported_leaves_raise_type_error_naming_the_path(store, state, where):
    with pytest.raises(TypeError, match=__import__("re").escape(where)):
        store.save(state, index=1, term=1)
    assert store.list() == []


def test_meta_is_returned_and_must_be_msgpack(store):
    info = store.save({}, index=3, term=1, meta={"loss": 0.5, "tags": ["a"]})
    assert store.list()[0].meta == {"loss": 0.5, "tags": ["a"]} == info.meta
    with pytest.raises(TypeError, match="meta"):
        store.save({}, index=4, term=1, meta=object())


_scalars = st.one_of(
    st.none(), st.booleans(), st.integers(-(2**63), 2**64 - 1), st.floats(allow_nan=False),
    st.text(max_size=8), st.binary(max_size=8),
)
_tensors = st.builds(
    _sample,
    st.sampled_from([DTYPES[n] for n in ("float32", "bfloat16", "int64", "bool", "float16", "uint8", "complex64")]),
    st.lists(st.integers(0, 5), max_size=3).map(tuple),
    st.integers(0, 1000),
)
_keys = st.one_of(st.integers(-5, 5), st.text(max_size=4))
_states = st.recursive(
    st.one_of(_scalars, _tensors),
    lambda children: st.one_of(
        st.lists(children, max_size=4),
        st.lists(children, max_size=3).map(tuple),
        st.dictionaries(_keys, children, max_size=4),
    ),
    max_leaves=12,
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(state=_states)
def test_property_any_state_round_trips(store, state):
    info = store.save(state, index=1, term=1)
    assert_same(store.load(info), state)
