"""The op registry: which handler applies which op, at which version, with which checks.

A handler is ``fn(state, **payload)``: it mutates the journal's state in place and must
be pure in (state, payload) — seeds and sample ids come from the payload, never from
global RNG or the clock — so replaying the entry reproduces the same bytes.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import Any, Callable

from .envelope import RESERVED_PREFIX
from .errors import PayloadRejectedError, UnknownOpError, VersionMismatchError

Handler = Callable[..., Any]
Validator = Callable[[dict], Any]
Upcaster = Callable[[dict], dict]


@dataclass(frozen=True)
class OpSpec:
    """One registered op: its name, current version, handler and optional payload validator."""

    name: str
    version: int
    handler: Handler
    validate: Validator | None = None
    signature: inspect.Signature | None = field(default=None, compare=False)


class Ops:
    """A registry of ops. Register with ``@ops.op`` or ``@ops.op(name=..., version=..., validate=...)``.

    Registering a name twice raises ValueError (a silent override would change what the
    log means). Names starting with ``replay.`` are reserved for the engine.
    """

    def __init__(self):
        self._specs: dict[str, OpSpec] = {}
        self._upcasters: dict[tuple[str, int], Upcaster] = {}

    def op(self, fn: Handler | None = None, *, name: str | None = None, version: int = 1,
           validate: Validator | None = None):
        """Register `fn` as the handler of op `name` (default: fn.__name__) at `version` (>= 1).

        `validate(payload)` runs before the entry is appended and must be cheap; it
        rejects a payload by raising (any exception) or returning False, and then nothing
        is appended. The payload is also bound against fn's signature before appending,
        so a missing or unexpected keyword never reaches the log. Returns fn unchanged.
        """
        def register(handler: Handler) -> Handler:
            op_name = handler.__name__ if name is None else name
            self._add(OpSpec(op_name, version, handler, validate, _signature(handler)))
            return handler

        return register if fn is None else register(fn)

    def upcaster(self, name: str, from_version: int):
        """Register ``fn(payload) -> payload`` turning a `from_version` payload of op `name` into
        a `from_version + 1` payload. Replay chains upcasters until the handler's version.
        Registering the same (name, from_version) twice raises ValueError."""
        def register(fn: Upcaster) -> Upcaster:
            key = (name, from_version)
            if key in self._upcasters:
                raise ValueError(f"an upcaster for op {name!r} from version {from_version} is already registered")
            if from_version < 1:
                raise ValueError(f"from_version must be >= 1, got {from_version}")
            self._upcasters[key] = fn
            return fn

        return register

    def __contains__(self, name: str) -> bool:
        return name in self._specs

    def names(self) -> list[str]:
        """Registered op names, in registration order."""
        return list(self._specs)

    def spec(self, name: str, index: int | None = None) -> OpSpec:
        """The OpSpec of `name`; UnknownOpError (naming `index` if given) when unregistered."""
        try:
            return self._specs[name]
        except KeyError:
            raise UnknownOpError(name, index) from None

    def check_payload(self, name: str, payload: dict) -> OpSpec:
        """Reject a payload before it is appended: unknown op, signature mismatch, validator veto.

        Returns the op's spec. Raises UnknownOpError or PayloadRejectedError; never appends.
        """
        spec = self.spec(name)
        if spec.signature is not None:
            try:
                spec.signature.bind(None, **payload)
            except TypeError as exc:
                raise PayloadRejectedError(name, str(exc)) from None
        if spec.validate is not None:
            try:
                verdict = spec.validate(payload)
            except Exception as exc:
                raise PayloadRejectedError(name, f"{type(exc).__name__}: {exc}") from exc
            if verdict is False:
                raise PayloadRejectedError(name, "the op's validator returned False")
        return spec

    def upcast(self, index: int, name: str, version: int, payload: dict) -> tuple[OpSpec, dict]:
        """(spec, payload at the handler's version) for an entry written at `version`.

        Equal versions pass through. An older version is upcast step by step;
        VersionMismatchError(index, op, ...) when a step is missing or the entry is newer
        than the handler. UnknownOpError(index) when the op is unregistered.
        """
        spec = self.spec(name, index)
        if version == spec.version:
            return spec, payload
        if version > spec.version:
            raise VersionMismatchError(index, name, version, spec.version)
        for step in range(version, spec.version):
            upcaster = self._upcasters.get((name, step))
            if upcaster is None:
                raise VersionMismatchError(index, name, step, spec.version)
            payload = upcaster(payload)
            if not isinstance(payload, dict):
                raise TypeError(f"upcaster of op {name!r} from version {step} returned {type(payload).__name__}, not a dict")
        return spec, payload

    def _add(self, spec: OpSpec) -> None:
        if not spec.name or spec.name.startswith(RESERVED_PREFIX):
            raise ValueError(f"op name {spec.name!r} is empty or reserved (the {RESERVED_PREFIX!r} prefix is the engine's)")
        if not isinstance(spec.version, int) or spec.version < 1:
            raise ValueError(f"op {spec.name!r}: version must be an int >= 1, got {spec.version!r}")
        if spec.name in self._specs:
            raise ValueError(f"op {spec.name!r} is already registered")
        self._specs[spec.name] = spec


def _signature(handler: Handler) -> inspect.Signature | None:
    # A builtin or C callable may have no introspectable signature; then only the
    # validator guards the payload.
    try:
        return inspect.signature(handler)
    except (TypeError, ValueError):
        return None
