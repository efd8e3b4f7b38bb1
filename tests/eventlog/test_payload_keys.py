"""encode_payload's key check, whichever way a payload takes through it: the top level of
a dict is checked inline (str keys and leaf values cost one type check each), anything
that may hold keys is walked. Both refuse the same keys with the same path, and a
payload that passes encodes to the bytes msgpack gives."""

import collections
import os

import msgpack
import pytest

from eventlog import EventLog
from eventlog.codec import decode_payload, encode_payload


class Key:
    """A hashable object msgpack cannot encode as a key."""

    def __hash__(self):
        return 1


class DictSub(dict):
    pass


REFUSED = [
    ({("a", 1): 2}, "payload[('a', 1)]: map key of type tuple"),  # top-level tuple key
    ({"data": b"x", (1,): 2}, "payload[(1,)]: map key of type tuple"),  # after a flat item
    ({"x": [{"ok": 1}, {(1,): 2}]}, "payload['x'][1][(1,)]: map key of type tuple"),  # nested in a list
    ({"x": {"y": {(1, 2): 0}}}, "payload['x']['y'][(1, 2)]: map key of type tuple"),  # nested dicts
    ({"x": ({(0,): 1},)}, "payload['x'][0][(0,)]: map key of type tuple"),  # in a tuple value
    ({"x": DictSub({(0,): 1})}, "payload['x'][(0,)]: map key of type tuple"),  # a dict subclass value
    (DictSub({(0,): 1}), "payload[(0,)]: map key of type tuple"),  # a dict subclass payload
    ([{"a": 1}, {(2,): 3}], "payload[1][(2,)]: map key of type tuple"),  # a list payload
    ({Key(): 1}, "map key of type Key"),
    ({frozenset(): 1}, "map key of type frozenset"),
]


@pytest.mark.parametrize("payload,message", REFUSED, ids=range(len(REFUSED)))
def test_keys_that_would_not_decode_are_refused_with_their_path(payload, message):
    with pytest.raises(TypeError, match="cannot be stored") as raised:
        encode_payload(payload)
    assert message in str(raised.value)


@pytest.mark.parametrize("payload,message", REFUSED[:3], ids=range(3))
def test_a_refused_key_appends_nothing(tmp_path, payload, message):
    for mode in ("sync", "group"):
        with EventLog.open(tmp_path / mode, durability=mode) as log:
            log.append("before", 1)
            with pytest.raises(TypeError, match="map key"):
                log.append("bad", payload)
            assert log.last_index == 1
            assert log.append("after", 2) == 2


ACCEPTED = [
    {"data": os.urandom(256)},
    {"s": "t", "i": -(2**63), "u": 2**64 - 1, "f": 1.5, "b": True, "n": None, "by": b""},
    {1: "int key", b"k": "bytes key", None: "none key", 2.5: "float key", True: "bool key"},
    {"x": [1, {"y": (2, 3)}], "z": {"w": []}},
    collections.OrderedDict(a=1),  # a dict subclass takes the walk and encodes as a map
    {},
    None,
    [1, "a", {"k": b"v"}],
    "plain",
]


@pytest.mark.parametrize("payload", ACCEPTED, ids=range(len(ACCEPTED)))
def test_accepted_payloads_encode_as_msgpack_does(payload):
    data = encode_payload(payload)
    assert data == msgpack.packb(payload, use_bin_type=True)
    assert decode_payload(data) == msgpack.unpackb(data, raw=False, strict_map_key=False)


def test_unencodable_leaf_values_are_still_named():
    with pytest.raises(TypeError, match=r"payload\['big'\]: integer"):
        encode_payload({"big": 2**64})
    with pytest.raises(TypeError, match=r"payload\['obj'\]: object of type"):
        encode_payload({"ok": 1, "obj": object()})
    with pytest.raises(TypeError, match=r"payload\['s'\]: string is not valid UTF-8"):
        encode_payload({"s": "\ud800"})
