"""Restoring a snapshot into a live state in place (`SnapshotStore.load_into`).

The whole plan is checked before anything is touched, so a mismatch leaves the live
state as it was. Rules, by what the snapshot holds at a key path:

- a tensor: the live value must be a tensor of the same dtype and shape (any device);
  its bytes are replaced with `copy_`, so references to it (an optimizer's to a
  parameter) stay valid;
- a subtree without tensors (plain values, lists of them, ...): the value is assigned
  into the live mapping or list, replacing what was there; inside a tuple, which cannot
  be assigned into, it must already be equal;
- a mapping holding tensors: the live value must be a mutable mapping; keys the
  snapshot has are restored as above, live keys it lacks are deleted unless they hold
  tensors (then the states do not match);
- a list or tuple holding tensors: the live value must be a list or tuple of the same
  length, restored element by element.

A restore of part of a snapshot (`selection`) passes the key paths of the mappings that
lost keys to the selection as `partial`: there, live keys the selection lacks are left
as they are (neither deleted nor refused), since they were not asked for.
"""

from __future__ import annotations

from collections.abc import MutableMapping
from dataclasses import dataclass, field
from typing import Any, Callable

import torch

from . import tree
from .errors import StateMismatchError
from .manifest import TensorRecord
from .tensorbytes import DTYPES


@dataclass
class RestorePlan:
    copies: list[tuple[torch.Tensor, int]] = field(default_factory=list)  # (live tensor, tensor no)
    assigns: list[tuple[Any, Any, list]] = field(default_factory=list)  # (container, key, node)
    deletes: list[tuple[MutableMapping, Any]] = field(default_factory=list)

    def targets(self) -> dict[int, torch.Tensor]:
        """Tensor position -> the live tensor it is restored into (`decodable_into`)."""
        return {i: live for live, i in self.copies}

    def apply(self, tensor: Callable[[int], torch.Tensor]) -> None:
        """Execute the plan; `tensor(i)` gives loaded, verified tensor leaf i. A leaf that
        is the live tensor itself was decoded into it in place: nothing to copy, but its
        autograd version is bumped as copy_ would have."""
        decoded = []  # bumped in one call: one per tensor costs a few us each
        with torch.no_grad():
            for live, i in self.copies:
                loaded = tensor(i)
                if loaded is live:
                    decoded.append(live)
                else:
                    live.copy_(loaded)
        if decoded:
            torch.autograd.graph.increment_version(decoded)
        for container, key, node in self.assigns:
            container[key] = tree.build(node, tensor)
        for mapping, key in self.deletes:
            del mapping[key]


def plan_restore(node: list, live: Any, records: tuple[TensorRecord, ...],
                 partial: frozenset = frozenset()) -> RestorePlan:
    """Check that `live` can take the snapshot described by `node` in place and return
    the plan; raise StateMismatchError naming the first key path that cannot. `partial`:
    key paths of mappings pruned by a selection (module doc)."""
    plan = RestorePlan()
    _visit(node, live, (), records, plan, partial)
    return plan


def decodable_into(targets: dict[int, torch.Tensor], wanted) -> dict[int, torch.Tensor]:
    """The part of `targets` (tensor position -> live tensor, dtype and shape already
    checked) whose bytes a reader may overwrite directly, chunk by chunk, in any order:
    non-empty, contiguous, plain strided tensors (no conjugate or negative bit) on the
    CPU or a CUDA GPU (one address space: unified virtual addressing) that share no
    memory with another target. The others, and aliased ones (tied weights: their order
    of copies decides the result), keep the copy_ of `RestorePlan.apply`."""
    wanted = set(wanted)
    spans = []  # (start, end, position, direct)
    # A hot reload runs this for every tensor of the state: the cheapest torch accessors
    # (is_cpu, not device.type, which builds a device object) keep it near 1 us each.
    strided = torch.strided
    for i, live in targets.items():
        if i not in wanted or not (live.is_cpu or live.is_cuda) or live.numel() == 0:
            continue
        if live.layout == strided and live.is_contiguous() and not live.is_conj() and not live.is_neg():
            start = live.data_ptr()
            spans.append((start, start + live.nbytes, i, True))
        else:  # whatever it spans lies in its storage
            storage = live.untyped_storage()
            spans.append((storage.data_ptr(), storage.data_ptr() + storage.nbytes(), i, False))
    spans.sort()
    out: dict[int, torch.Tensor] = {}
    reach = -1  # the furthest end among the spans before
    for k, (start, end, i, direct) in enumerate(spans):
        overlaps_next = k + 1 < len(spans) and spans[k + 1][0] < end
        if direct and start >= reach and not overlaps_next:
            out[i] = targets[i]
        reach = max(reach, end)
    return out


def check_layout(node: list, records: tuple[TensorRecord, ...], like: Any, *, strict: bool = True,
                 within: Callable[[tree.KeyPath], bool] | None = None) -> None:
    """Raise StateMismatchError unless `like` holds, at exactly the key paths where the
    snapshot has tensors, tensors of the snapshot's dtype and shape (devices may differ),
    and no tensor at any other key path. strict=False compares only the key paths where
    both hold a tensor. Only the manifest is consulted, so this runs before anything is
    allocated. Containers and plain values are not compared. `within` (a selection's
    `covers`) limits the live tensors considered to the selected key paths."""
    live = {path: t for path, t in tree.live_tensors(like) if within is None or within(path)}
    for path, i in tree.tensor_paths(node):
        record = records[i]
        saved = f"{DTYPES[record.dtype]} {record.shape}"
        tensor = live.pop(path, None)
        if tensor is None:
            if not strict:
                continue
            raise _mismatch(path, f"snapshot has a tensor {saved}, live state has none")
        if tensor.dtype != DTYPES[record.dtype] or tuple(tensor.shape) != record.shape:
            raise _mismatch(path, f"live state has {tensor.dtype} {tuple(tensor.shape)}, snapshot has {saved}")
    for path, tensor in live.items():
        if strict:
            raise _mismatch(path, f"live state has a tensor {tensor.dtype} {tuple(tensor.shape)}, snapshot has none")


def _mismatch(path: tree.KeyPath, reason: str) -> StateMismatchError:
    return StateMismatchError(tree.format_path(path), reason)


def _contains_tensor(value: Any) -> bool:
    if isinstance(value, torch.Tensor):
        return True
    if isinstance(value, dict):
        return any(_contains_tensor(v) for v in value.values())
    if isinstance(value, (list, tuple)):
        return any(_contains_tensor(v) for v in value)
    return False


def _visit(node: list, live: Any, path: tree.KeyPath, records, plan: RestorePlan, partial: frozenset) -> None:
    tag, payload = node
    if tag == "x":
        record = records[payload]
        if not isinstance(live, torch.Tensor):
            raise _mismatch(path, f"snapshot has a tensor, live state has {type(live).__name__}")
        dtype = DTYPES[record.dtype]
        if live.dtype != dtype:
            raise _mismatch(path, f"dtype {live.dtype} in the live state, {dtype} in the snapshot")
        if tuple(live.shape) != record.shape:
            raise _mismatch(path, f"shape {tuple(live.shape)} in the live state, {record.shape} in the snapshot")
        plan.copies.append((live, payload))
        return
    if tag == "l" and isinstance(live, list) and not tree.has_tensors(node):
        plan.assigns.append((live, slice(None), node))  # a list of plain values: replace its items
        return
    if tag in ("v", "t", "l") and not tree.has_tensors(node):
        if tree.build(node, lambda i: None) != live:
            raise _mismatch(path, "cannot replace a value in place here (the root or inside a tuple)")
        return
    if tag in ("d", "o"):
        if not isinstance(live, MutableMapping):
            raise _mismatch(path, f"snapshot has a mapping, live state has {type(live).__name__}")
        keys = set()
        for key, child in payload:
            keys.add(key)
            _visit_child(child, live, key, key in live, path + (key,), records, plan, partial, assignable=True)
        if path in partial:
            return  # keys outside the selection stay as they are
        for key in list(live.keys()):
            if key not in keys:
                if _contains_tensor(live[key]):
                    raise _mismatch(path + (key,), "live state has tensors the snapshot lacks")
                plan.deletes.append((live, key))
        return
    # "l" or "t"
    kind = list if tag == "l" else tuple
    if not isinstance(live, kind):
        raise _mismatch(path, f"snapshot has a {kind.__name__}, live state has {type(live).__name__}")
    if len(live) != len(payload):
        raise _mismatch(path, f"length {len(live)} in the live state, {len(payload)} in the snapshot")
    for i, child in enumerate(payload):
        _visit_child(child, live, i, True, path + (i,), records, plan, partial, assignable=(kind is list))


def _visit_child(child, container, key, present, path, records, plan, partial, assignable) -> None:
    if assignable and not tree.has_tensors(child):
        plan.assigns.append((container, key, child))
        return
    if not present:
        raise _mismatch(path, "missing from the live state")
    _visit(child, container[key], path, records, plan, partial)
