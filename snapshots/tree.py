"""The structure of a saved state: nested containers with tensor and msgpack leaves.

A tree node is `[tag, payload]` (FORMAT.md, "Tree nodes"). `flatten` turns a live state
into a node plus its tensor leaves in order; `build` does the reverse. Key paths in
errors are written like Python subscripts: `['optim']['state'][0]['exp_avg']`.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping
from typing import Any, Callable

import torch

SCALAR_TYPES = (type(None), bool, int, float, str, bytes)
_INT_MIN, _INT_MAX = -(2**63), 2**64 - 1
_MAX_DEPTH = 256

KeyPath = tuple


def format_path(path: KeyPath) -> str:
    """A key path as Python subscripts; the empty path (the root) is "<root>"."""
    return "".join(f"[{k!r}]" for k in path) or "<root>"


def is_scalar(value: Any) -> bool:
    """True for the leaf values a manifest stores inline: None, bool, 64-bit int, float, str, bytes."""
    if type(value) not in SCALAR_TYPES:
        return False
    return type(value) is not int or _INT_MIN <= value <= _INT_MAX


def flatten(state: Any) -> tuple[list, list[tuple[KeyPath, torch.Tensor]]]:
    """(tree node, [(key path, tensor), ...]) for a state; TypeError names the key path of
    anything that is not a mapping, list, tuple, tensor or scalar."""
    leaves: list[tuple[KeyPath, torch.Tensor]] = []

    def walk(value: Any, path: KeyPath) -> list:
        if len(path) > _MAX_DEPTH:
            raise TypeError(f"state nests deeper than {_MAX_DEPTH} levels at {format_path(path)}")
        if isinstance(value, torch.Tensor):
            leaves.append((path, value))
            return ["x", len(leaves) - 1]
        if is_scalar(value):
            return ["v", value]
        if isinstance(value, Mapping):
            pairs = []
            for key, child in value.items():
                if not is_scalar(key):
                    raise TypeError(f"unsupported key {key!r} ({type(key).__name__}) at {format_path(path)}")
                pairs.append([key, walk(child, path + (key,))])
            return ["o" if isinstance(value, OrderedDict) else "d", pairs]
        if isinstance(value, (list, tuple)):
            children = [walk(child, path + (i,)) for i, child in enumerate(value)]
            return ["t" if isinstance(value, tuple) else "l", children]
        if type(value) is int:
            raise TypeError(f"int {value} at {format_path(path)} does not fit in 64 bits")
        raise TypeError(f"unsupported value of type {type(value).__name__} at {format_path(path)}")

    return walk(state, ()), leaves


def build(node: list, tensor: Callable[[int], Any]) -> Any:
    """The state a (validated) node describes; `tensor(i)` supplies tensor leaf i."""
    tag, payload = node
    if tag == "v":
        return payload
    if tag == "x":
        return tensor(payload)
    if tag == "l":
        return [build(child, tensor) for child in payload]
    if tag == "t":
        return tuple(build(child, tensor) for child in payload)
    pairs = ((key, build(child, tensor)) for key, child in payload)
    return OrderedDict(pairs) if tag == "o" else dict(pairs)


def has_tensors(node: list) -> bool:
    """Whether any leaf under a (validated) node is a tensor."""
    tag, payload = node
    if tag == "x":
        return True
    if tag in ("l", "t"):
        return any(has_tensors(child) for child in payload)
    if tag in ("d", "o"):
        return any(has_tensors(child) for _, child in payload)
    return False


def tensor_paths(node: list, path: KeyPath = ()):
    """(key path, tensor position) for every tensor leaf of a (validated) node, in order."""
    tag, payload = node
    if tag == "x":
        yield path, payload
    elif tag in ("l", "t"):
        for i, child in enumerate(payload):
            yield from tensor_paths(child, path + (i,))
    elif tag in ("d", "o"):
        for key, child in payload:
            yield from tensor_paths(child, path + (key,))


def live_tensors(value: Any, path: KeyPath = ()):
    """(key path, tensor) for every tensor in a live state, walking mappings, lists and
    tuples like `flatten`; any other value is a plain leaf and is skipped, not refused."""
    if isinstance(value, torch.Tensor):
        yield path, value
    elif isinstance(value, Mapping):
        for key, child in value.items():
            yield from live_tensors(child, path + (key,))
    elif isinstance(value, (list, tuple)):
        for i, child in enumerate(value):
            yield from live_tensors(child, path + (i,))


def validate(node: Any, n_tensors: int, depth: int = 0) -> None:
    """Raise ValueError unless `node` is a well-formed tree whose tensor references are
    each in [0, n_tensors)."""
    if depth > _MAX_DEPTH:
        raise ValueError("tree nests too deep")
    if not (isinstance(node, list) and len(node) == 2 and isinstance(node[0], str)):
        raise ValueError(f"malformed tree node {node!r:.80}")
    tag, payload = node
    if tag == "v":
        if not is_scalar(payload):
            raise ValueError(f"inline value of type {type(payload).__name__}")
    elif tag == "x":
        if not (type(payload) is int and 0 <= payload < n_tensors):
            raise ValueError(f"tensor reference {payload!r} out of range")
    elif tag in ("l", "t"):
        if not isinstance(payload, list):
            raise ValueError(f"{tag!r} node payload is not an array")
        for child in payload:
            validate(child, n_tensors, depth + 1)
    elif tag in ("d", "o"):
        if not isinstance(payload, list):
            raise ValueError(f"{tag!r} node payload is not an array")
        for pair in payload:
            if not (isinstance(pair, list) and len(pair) == 2 and is_scalar(pair[0])):
                raise ValueError(f"malformed mapping entry {pair!r:.80}")
            validate(pair[1], n_tensors, depth + 1)
    else:
        raise ValueError(f"unknown tree tag {tag!r}")
