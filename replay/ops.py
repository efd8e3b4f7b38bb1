"""The op registry: which handler applies which op, at which version, with which checks.

A handler is ``fn(state, **payload)``: it mutates the journal's state in place and must
be pure in (state, payload) — seeds and sample ids come from the payload, never from
global RNG or the clock — so replaying the entry reproduces the same bytes.

Inputs. A handler may also take a keyword ``inputs``: data it needs that is *not* logged
(a prefetched DataLoader batch, a tokenised text), because it is large and can be
rebuilt. Registered with ``@ops.op(inputs=rebuild)``, ``rebuild(**payload)`` (the
decoded payload, tensors on the journal's device, exactly as replay sees it) produces
them whenever they are not handed over: on replay, and on a live ``apply`` given no
``inputs=``. A live ``apply(op, inputs=batch, ...)`` hands the handler ``batch`` instead.
A handler whose ``inputs`` parameter has a default and whose op has no rebuild is called
without ``inputs`` on replay, so it must then compute the same thing from the payload.

Design choice: the log holds only the payload, so inputs are safe only when they are a
pure function of the payload (the sample ids, the seed of the augmentation): replay
rebuilds them from it and the state comes out the same bytes. If a live batch differs
from what ``rebuild`` makes of the same payload (an unseeded augmentation, a dataset
edited in between), replay silently computes something else; digest entries
(``Journal.open(digest_every=N)``) are what catch it, as a DivergenceError at the first
digest after the mismatch. The name ``inputs`` is therefore reserved: it is never a
payload key (refused before anything is appended, and in a logged entry).
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import Any, Callable

from .envelope import RESERVED_PREFIX
from .errors import PayloadRejectedError, UnknownOpError, VersionMismatchError
from .recorded import record_names

Handler = Callable[..., Any]
Validator = Callable[[dict], Any]
Upcaster = Callable[[dict], dict]
Rebuild = Callable[..., Any]
BatchHandler = Callable[[Any, list], Any]

INPUTS = "inputs"  # the reserved keyword: handed to handlers, never logged


@dataclass(frozen=True)
class OpSpec:
    """One registered op: its name, current version, handler, optional payload validator and
    optional `rebuild` of its unlogged inputs (see the module doc)."""

    name: str
    version: int
    handler: Handler
    validate: Validator | None = None
    signature: inspect.Signature | None = field(default=None, compare=False)
    rebuild: Rebuild | None = None
    replay_batch: BatchHandler | None = None
    record: tuple[str, ...] = ()  # names of the scalars the handler returns, recorded beside the log

    @property
    def takes_inputs(self) -> bool:
        """Whether the handler accepts the ``inputs`` keyword (a parameter of that name, or **kwargs).
        Unknown (no introspectable signature) counts as yes."""
        return self.signature is None or _accepts(self.signature, INPUTS)

    def inputs_for(self, payload: dict, given: Any = None) -> Any:
        """The inputs a call with `payload` gets: `given` when not None, else ``rebuild(**payload)``
        when the op has one, else None (the handler is called without ``inputs``)."""
        if given is not None or self.rebuild is None:
            return given
        return self.rebuild(**payload)

    def call(self, state: Any, payload: dict, inputs: Any = None) -> Any:
        """Run the handler on `state`; ``inputs=`` is passed only when not None. Returns what it returns."""
        if inputs is None:
            return self.handler(state, **payload)
        return self.handler(state, **payload, inputs=inputs)


class Ops:
    """A registry of ops. Register with ``@ops.op`` or ``@ops.op(name=..., version=..., validate=...)``.

    Registering a name twice raises ValueError (a silent override would change what the
    log means). Names starting with ``replay.`` are reserved for the engine.
    """

    def __init__(self):
        self._specs: dict[str, OpSpec] = {}
        self._upcasters: dict[tuple[str, int], Upcaster] = {}
        self._keywords: dict[str, tuple[frozenset, frozenset] | None] = {}  # check_payload's fast path

    def op(self, fn: Handler | None = None, *, name: str | None = None, version: int = 1,
           validate: Validator | None = None, inputs: Rebuild | None = None,
           replay_batch: BatchHandler | None = None, record=None):
        """Register `fn` as the handler of op `name` (default: fn.__name__) at `version` (>= 1).

        `validate(payload)` runs before the entry is appended and must be cheap; it
        rejects a payload by raising (any exception) or returning False, and then nothing
        is appended. The payload is also bound against fn's signature before appending,
        so a missing or unexpected keyword never reaches the log. Returns fn unchanged.

        `inputs`: ``rebuild(**payload)`` producing the handler's unlogged ``inputs`` on
        replay and on a live apply given none; it must be a pure function of the payload
        (module doc). ValueError when fn cannot take an ``inputs`` keyword although
        `inputs` is given, or requires one (no default) although no `inputs` rebuild is
        given: replay could never call it. TypeError when `inputs` is not callable.

        `replay_batch`: ``fn(state, payloads)`` applying a run of consecutive entries of
        this op (payloads in log order, at the handler's version, tensors on the state's
        device) in one call, used on replay only (a live apply always calls fn). It must
        leave exactly the bytes the handler leaves applying them one by one
        (`replay.testing.assert_replay_batch_exact` checks it). If it raises, recovery
        puts the snapshot back and replays sequentially, so a failure is reported at the
        entry, with the state, that sequential replay gives (replay.recovery). TypeError
        when not callable; ValueError together with `inputs` (a run's unlogged inputs
        would have to be rebuilt inside it).

        `record`: a name or a tuple of names of scalars the handler returns, stored beside
        the entry (replay/recorded.py) for ``replay stats`` and ``replay report``, never
        fed back into the state. The handler returns a mapping holding every name (other
        keys ignored), or, with exactly one name, the value itself; a value is a real
        number (not bool) or a 0-d tensor, finite or NaN. Otherwise the live apply raises
        RecordedValueError naming op, index and field, and the entry is rolled back like a
        handler's exception; on replay such a value is skipped with a warning. ValueError /
        TypeError for bad names (replay.recorded.record_names).
        """
        recorded = record_names(record)
        if inputs is not None and not callable(inputs):
            raise TypeError(f"inputs= must be a callable rebuild(**payload), got {type(inputs).__name__}")
        if replay_batch is not None and not callable(replay_batch):
            raise TypeError(f"replay_batch= must be a callable fn(state, payloads), got {type(replay_batch).__name__}")
        if replay_batch is not None and inputs is not None:
            raise ValueError("replay_batch= cannot be combined with inputs=: the batched handler gets payloads only")

        def register(handler: Handler) -> Handler:
            op_name = handler.__name__ if name is None else name
            signature = _signature(handler)
            if signature is not None:
                if inputs is not None and not _accepts(signature, INPUTS):
                    raise ValueError(f"op {op_name!r}: inputs= is given but the handler has no {INPUTS!r} "
                                     "keyword parameter to receive them")
                if inputs is None and _requires(signature, INPUTS):
                    raise ValueError(f"op {op_name!r}: the handler requires {INPUTS!r} (a reserved keyword, never "
                                     "logged) but no inputs= rebuild is registered, so replay could not call it; "
                                     "register @ops.op(inputs=rebuild) or give the parameter a default")
            self._add(OpSpec(op_name, version, handler, validate, signature, inputs, replay_batch, recorded))
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

        Returns the op's spec. Raises UnknownOpError or PayloadRejectedError (also for a
        payload key named ``inputs``, which is reserved); never appends.
        """
        spec = self.spec(name)
        if INPUTS in payload:
            raise PayloadRejectedError(name, f"{INPUTS!r} is reserved for unlogged inputs and cannot be a payload key")
        keywords = self._keywords[name]
        if keywords is not None and keywords[1] <= payload.keys() <= keywords[0]:
            pass  # binds: every required keyword is there and every keyword is a parameter
        elif spec.signature is not None:
            try:
                if spec.takes_inputs and _has_parameter(spec.signature, INPUTS):
                    spec.signature.bind(None, **payload, inputs=None)
                else:
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
        self._keywords[spec.name] = _keyword_binding(spec)  # once: an op is never registered twice


def _keyword_binding(spec: OpSpec) -> tuple[frozenset, frozenset] | None:
    """(accepted, required) keyword names such that check_payload's signature bind of a
    payload succeeds exactly when required <= payload keys <= accepted; None when the
    signature is not that simple (no signature, **kwargs, positional-only parameters
    after the state), and then every payload is bound. Binding costs microseconds on
    every apply; a subset test is one C call."""
    signature = spec.signature
    parameters = list(signature.parameters.values()) if signature is not None else []
    if not parameters or parameters[0].kind not in (inspect.Parameter.POSITIONAL_ONLY,
                                                    inspect.Parameter.POSITIONAL_OR_KEYWORD):
        return None
    accepted, required = set(), set()
    for parameter in parameters[1:]:
        if parameter.kind is inspect.Parameter.VAR_POSITIONAL:
            continue  # nothing positional is passed after the state
        if parameter.kind not in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY):
            return None
        accepted.add(parameter.name)
        if parameter.default is inspect.Parameter.empty:
            required.add(parameter.name)
    if spec.takes_inputs and _has_parameter(signature, INPUTS):
        required.discard(INPUTS)  # the bind passes inputs=None itself
    return frozenset(accepted), frozenset(required)


def _has_parameter(signature: inspect.Signature, name: str) -> bool:
    parameter = signature.parameters.get(name)
    return parameter is not None and parameter.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD,
                                                        inspect.Parameter.KEYWORD_ONLY)


def _accepts(signature: inspect.Signature, name: str) -> bool:
    """Whether a call may pass keyword `name` (a parameter of that name, or **kwargs)."""
    return _has_parameter(signature, name) or any(
        p.kind is inspect.Parameter.VAR_KEYWORD for p in signature.parameters.values())


def _requires(signature: inspect.Signature, name: str) -> bool:
    return _has_parameter(signature, name) and signature.parameters[name].default is inspect.Parameter.empty


def _signature(handler: Handler) -> inspect.Signature | None:
    # A builtin or C callable may have no introspectable signature; then only the
    # validator guards the payload.
    try:
        return inspect.signature(handler)
    except (TypeError, ValueError):
        return None
