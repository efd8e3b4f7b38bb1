"""Choosing part of a snapshot: `only=` of `SnapshotStore.load` / `load_into`, and the
components a non-strict `load_into` shares with the live state.

A selector is a string naming a subtree by its dotted key path: ``"model"`` is the
top-level component, ``"model.0"`` every key under it whose dotted name starts with
``model.0.`` (a module's state dict has flat keys such as ``"0.weight"``, so names are
matched as joined strings, not key by key), ``"optim.state.3.exp_avg"`` one tensor.
Keys that are not strings are written with ``str()`` (an optimizer's int parameter ids).

A selection keeps the path down to each chosen subtree and nothing beside it; the
mappings on the way that lost keys are marked partial, so an in-place restore leaves
the live keys outside the selection untouched. A selector can only descend through
mappings: one that reaches inside a list, tuple or tensor is refused (ValueError),
as positions cannot be left out of a list without renumbering it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Iterable

from . import tree
from .errors import ComponentNotFoundError, StateMismatchError


@dataclass(frozen=True)
class Selected:
    """Part of a snapshot's tree: the pruned `node`, the positions of the tensor records it
    still references, and the key paths of mappings some of whose keys were left out."""

    node: list
    tensors: frozenset[int]
    partial: frozenset[tree.KeyPath]
    selectors: tuple[str, ...] | None = None  # None: whole top-level components (see `common`)

    def covers(self, path: tree.KeyPath) -> bool:
        """Whether a live key path lies inside the selection (the layout check's scope)."""
        if self.selectors is None:
            return bool(path) and any(_same_key(path[0], key) for key, _ in self.node[1])
        name = dotted(path)
        return any(name == s or name.startswith(s + ".") for s in self.selectors)


def selectors(only: Any) -> tuple[str, ...]:
    """`only` as a tuple of selectors: one string, or an iterable of non-empty strings.
    TypeError for anything else, ValueError for none or an empty one."""
    items = (only,) if isinstance(only, str) else tuple(only)
    if not items:
        raise ValueError("only= names no component (pass None to load everything)")
    for s in items:
        if not isinstance(s, str):
            raise TypeError(f"only= takes component names or dotted prefixes (str), got {s!r}")
        if not s or s.startswith(".") or s.endswith("."):
            raise ValueError(f"only= selector {s!r} is not a dotted key path")
    return items


def dotted(path: tree.KeyPath) -> str:
    """A key path as the dotted name selectors match: ('optim', 'state', 0) -> 'optim.state.0'."""
    return ".".join(str(k) for k in path)


def select(node: list, only: Iterable[str]) -> Selected:
    """The part of `node` that `only` chooses. ComponentNotFoundError names a selector that
    matches nothing (and the snapshot's components); ValueError when the root is not a
    mapping or a selector reaches inside a list, tuple or tensor."""
    wanted = selectors(only)
    if node[0] not in ("d", "o"):
        raise ValueError(f"only= needs a snapshot whose root is a mapping; this one's root is {_kind(node)}")
    used: set[str] = set()
    partial: set[tree.KeyPath] = set()

    def prune(mapping: list, path: tree.KeyPath, candidates: list[str]) -> list:
        tag, pairs = mapping
        kept = []
        for key, child in pairs:
            name = dotted(path + (key,))
            whole = [s for s in candidates if name == s or name.startswith(s + ".")]
            deeper = [s for s in candidates if s.startswith(name + ".")]
            if whole:
                used.update(whole)
                kept.append([key, child])
            elif deeper:
                if child[0] not in ("d", "o"):
                    raise ValueError(f"only= selector {deeper[0]!r} reaches inside {_kind(child)} at "
                                     f"{tree.format_path(path + (key,))}: select {name!r} as a whole")
                sub = prune(child, path + (key,), deeper)
                if sub[1]:
                    kept.append([key, sub])
        if len(kept) < len(pairs):
            partial.add(path)
        return [tag, kept]

    pruned = prune(node, (), list(wanted))
    missing = [s for s in wanted if s not in used]
    if missing:
        raise ComponentNotFoundError(missing[0], [str(k) for k, _ in node[1]])
    return Selected(pruned, _positions(pruned), frozenset(partial), wanted)


def common(node: list, live: Any) -> Selected:
    """The top-level components of `node` that the live mapping `live` also has (a
    non-strict `load_into`). StateMismatchError when either root is not a mapping or they
    share no component."""
    if node[0] not in ("d", "o") or not isinstance(live, Mapping):
        raise StateMismatchError("<root>", "strict=False needs mappings of components on both sides "
                                 f"(snapshot: {_kind(node)}, live state: {type(live).__name__})")
    kept = [[key, child] for key, child in node[1] if key in live]
    if not kept:
        raise StateMismatchError("<root>", f"no component in common: the snapshot has {[k for k, _ in node[1]]}, "
                                 f"the live state {list(live)}")
    partial = frozenset({()}) if len(kept) < len(node[1]) else frozenset()
    pruned = [node[0], kept]
    return Selected(pruned, _positions(pruned), partial)


def everything(node: list, n_tensors: int) -> Selected:
    """The whole tree, as a selection (nothing partial)."""
    return Selected(node, frozenset(range(n_tensors)), frozenset())


def _positions(node: list) -> frozenset[int]:
    return frozenset(i for _, i in tree.tensor_paths(node))


def _same_key(a: Any, b: Any) -> bool:
    return type(a) is type(b) and a == b


def _kind(node: list) -> str:
    return {"v": "a plain value", "x": "a tensor", "l": "a list", "t": "a tuple"}.get(node[0], "a mapping")
