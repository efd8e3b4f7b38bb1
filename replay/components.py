"""State components: what a journal's state may hold, how it is captured and restored in place.

A journal's state is a str-keyed mapping of components:

- objects with ``state_dict()``/``load_state_dict()`` (modules, optimizers, schedulers,
  DataCursor, user objects): restored with ``load_state_dict``, which for modules copies
  into the existing parameters and for optimizers keeps their parameter references;
- bare tensors: restored with ``copy_``, so the tensor object and its device stay;
- plain dicts (nested, tensor or msgpack leaves): restored in place, so other references
  to the dict (and to tensors in it of unchanged shape and dtype) stay valid.

Restoring in place is the point: code holding a reference to a parameter, an optimizer
or a counter dict keeps seeing the live state after recovery or a rollback.

Restoring also forgets what a cold process would not have (`forget_transient`): a
rollback restores a snapshot into the very objects whose handler just raised, possibly
after ``backward()``, and must replay on the state a crash and a fresh open would give
(replay/INVARIANTS.md, invariant 15).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Iterator

import torch
from snapshots import StateMismatchError

STATE_DICT, TENSOR, DICT = "state_dict", "tensor", "dict"


def kind_of(name: str, component: Any) -> str:
    """The component kind of `component`; TypeError naming `name` if it is none of the three."""
    if isinstance(component, torch.Tensor):
        return TENSOR
    if callable(getattr(component, "state_dict", None)) and callable(getattr(component, "load_state_dict", None)):
        return STATE_DICT
    if isinstance(component, dict):
        return DICT
    raise TypeError(
        f"state component {name!r} ({type(component).__name__}) is not a tensor, a plain dict, "
        "or an object with state_dict()/load_state_dict()"
    )


def check_state(state: Any) -> dict[str, str]:
    """{name: kind} of a journal state; TypeError if it is not a str-keyed mapping of components."""
    if not isinstance(state, Mapping) or not state:
        raise TypeError("state must be a non-empty mapping of name -> component")
    kinds = {}
    for name, component in state.items():
        if not isinstance(name, str):
            raise TypeError(f"state component names must be str, got {name!r}")
        kinds[name] = kind_of(name, component)
    return kinds


def capture(state: Mapping[str, Any], kinds: dict[str, str]) -> dict[str, Any]:
    """A nested tree of the live state for a snapshot: {name: state_dict() | tensor | dict}.

    Tensors in the tree alias the live ones; the snapshot store stages (copies) them.
    """
    tree = {}
    for name, component in state.items():
        tree[name] = component.state_dict() if kinds[name] == STATE_DICT else component
    return tree


def restore(state: Mapping[str, Any], kinds: dict[str, str], tree: Mapping[str, Any]) -> None:
    """Load `tree` (as `capture` produced it, tensors anywhere) into the live state, in place.

    A component missing from the tree, or a tree entry naming no component, raises
    StateMismatchError before anything is changed: a snapshot of a different state
    layout must not be half-applied (`check_layout` refuses those, and more, first).
    """
    _check_components(state, tree)
    forget_transient(state, kinds)
    with torch.no_grad():
        for name, component in state.items():
            saved = tree[name]
            kind = kinds[name]
            if kind == STATE_DICT:
                component.load_state_dict(saved)
            elif kind == TENSOR:
                _check_tensor((name,), saved, component)
                component.copy_(saved)
            else:
                _restore_dict(component, saved, default_device(state))


def forget_transient(state: Mapping[str, Any], kinds: dict[str, str]) -> None:
    """Drop from the live state what is not in a snapshot and a fresh process lacks.

    - Gradients: every ``.grad`` becomes None, as in a process that has not run
      ``backward()`` yet: the parameters of module components
      (``zero_grad(set_to_none=True)``), those of optimizer components (a parameter may
      be held by an optimizer only), bare tensor components and tensors in plain dicts.
      Without this, a handler that raised after ``backward()`` leaves its gradients
      behind, and the replay of the rollback (or the retry), whose ``backward()``
      accumulates into ``.grad``, computes another step whenever the loop calls
      ``zero_grad()`` at the end of a step rather than its start.
    - A GradScaler's per-optimizer stage (``unscale_()`` or ``step()`` called since the
      last ``update()``): a handler that raised between them (a NaN guard after
      ``unscale_``) would make the replay's ``unscale_()`` raise. ``update(new_scale=...)``
      is the public way to forget it; the scale it sets is the one `restore` loads next.

    Other objects are left alone: what they hold outside their state_dict is theirs.
    """
    for name, component in state.items():
        kind = kinds[name]
        if isinstance(component, (torch.nn.Module, torch.optim.Optimizer)):
            component.zero_grad(set_to_none=True)
        elif isinstance(component, _GRAD_SCALERS):
            _forget_scaler_stages(component)
        elif kind == TENSOR:
            component.grad = None
        elif kind == DICT:
            for _, leaf in leaves(component):
                if isinstance(leaf, torch.Tensor) and leaf.grad is not None:
                    leaf.grad = None


# torch.amp.GradScaler is torch >= 2.3; torch.cuda.amp.GradScaler (its subclass there) is older.
_GRAD_SCALERS = tuple(cls for cls in (getattr(torch.amp, "GradScaler", None), torch.cuda.amp.GradScaler) if cls)


def _forget_scaler_stages(scaler) -> None:
    if not scaler.is_enabled():
        return
    try:
        scaler.update(new_scale=scaler.get_scale())
    except (AssertionError, RuntimeError):
        pass  # it never scaled in this process: it has no stage to forget


def layout_template(state: Mapping[str, Any], kinds: dict[str, str]) -> dict[str, Any]:
    """The live tensors whose layout a snapshot must share: tensor components and the
    tensors of state_dict components (plain dicts may legitimately change shape)."""
    return {name: (component.state_dict() if kinds[name] == STATE_DICT else component)
            for name, component in state.items() if kinds[name] != DICT}


def check_layout(state: Mapping[str, Any], kinds: dict[str, str], tree: Mapping[str, Any]) -> None:
    """Refuse a saved tree whose layout the live state cannot take without a silent change.

    StateMismatchError (naming the key path and both layouts) when the components differ,
    a tensor component differs in dtype or shape, or a tensor inside a state_dict
    component (a module parameter, an optimizer moment) exists on both sides with another
    dtype or shape: ``load_state_dict`` would cast it silently, and replay after a cast is
    not the run that wrote the log. Tensors on one side only (an optimizer before its
    first step has no moments yet) and plain-dict leaves (replaced, not copied into, by
    `restore`) are not compared.
    """
    _check_components(state, tree)
    for name, component in state.items():
        if kinds[name] == TENSOR:
            _check_tensor((name,), tree[name], component)
        elif kinds[name] == STATE_DICT:
            saved = dict(leaves(tree[name], (name,)))
            for path, live in leaves(component.state_dict(), (name,)):
                if isinstance(live, torch.Tensor) and path in saved:
                    _check_tensor(path, saved[path], live)


def _check_components(state: Mapping[str, Any], tree: Mapping[str, Any]) -> None:
    missing, extra = sorted(set(state) - set(tree)), sorted(set(tree) - set(state))
    if missing or extra:
        key = (missing or extra)[0]
        raise StateMismatchError(
            repr(key), f"snapshot components {sorted(tree)} do not match the journal's state {sorted(state)}")


def _check_tensor(path: tuple, saved: Any, live: torch.Tensor) -> None:
    where = "".join(f"[{p!r}]" for p in path)
    if not isinstance(saved, torch.Tensor):
        raise StateMismatchError(where, f"live state has a tensor, snapshot has a {type(saved).__name__}")
    if saved.dtype != live.dtype or tuple(saved.shape) != tuple(live.shape):
        raise StateMismatchError(
            where, f"live state has {live.dtype} {tuple(live.shape)}, snapshot has {saved.dtype} {tuple(saved.shape)}")


def _restore_dict(live: dict, saved: Mapping, device: torch.device) -> None:
    for key in [k for k in live if k not in saved]:
        del live[key]
    for key, value in saved.items():
        current = live.get(key)
        if (isinstance(current, torch.Tensor) and isinstance(value, torch.Tensor)
                and current.shape == value.shape and current.dtype == value.dtype):
            current.copy_(value)
            value = current
        elif isinstance(current, dict) and isinstance(value, Mapping):
            _restore_dict(current, value, device)
            value = current
        elif isinstance(value, torch.Tensor):
            value = value.to(current.device if isinstance(current, torch.Tensor) else device)
        # Re-inserting every key keeps the saved insertion order, so iteration over the
        # restored dict (and anything computed from it) matches the run that wrote it.
        live.pop(key, None)
        live[key] = value


def default_device(state: Mapping[str, Any]) -> torch.device:
    """Device of the first tensor found in the state (components in order); cpu if none."""
    for _, leaf in leaves(state):
        if isinstance(leaf, torch.Tensor):
            return leaf.device
    return torch.device("cpu")


def leaves(tree: Any, path: tuple = ()) -> Iterator[tuple[tuple, Any]]:
    """(path, leaf) pairs of a nested state, mappings in sorted key order, state_dict objects expanded.

    Sorting keys makes the order a function of the content, not of insertion history,
    which a restored dict or a reloaded state_dict may not share with the original run.
    """
    if isinstance(tree, torch.Tensor):
        yield path, tree
    elif isinstance(tree, Mapping):
        for key in sorted(tree, key=lambda k: (type(k).__name__, str(k))):
            yield from leaves(tree[key], path + (key,))
    elif isinstance(tree, (list, tuple)):
        for position, item in enumerate(tree):
            yield from leaves(item, path + (position,))
    elif callable(getattr(tree, "state_dict", None)):
        yield from leaves(tree.state_dict(), path)
    else:
        yield path, tree


def to_device(obj: Any, device: torch.device) -> Any:
    """`obj` with every tensor in it (through dicts, lists, tuples) moved to `device`."""
    if isinstance(obj, torch.Tensor):
        if obj.device == device:
            return obj
        # Host-to-device copies may be asynchronous (stream-ordered before any use);
        # device-to-host copies must not be, or the host could read unfinished bytes.
        return obj.to(device, non_blocking=obj.device.type == "cpu" and device.type == "cuda")
    if isinstance(obj, dict):
        return {k: to_device(v, device) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        # Payloads often carry long lists of sample ids: leave containers without
        # tensors untouched instead of rebuilding them element by element.
        if not any(isinstance(v, _CONTAINERS) for v in obj):
            return obj
        return type(obj)(to_device(v, device) for v in obj)
    return obj


_CONTAINERS = (torch.Tensor, dict, list, tuple)
