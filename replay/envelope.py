"""The on-disk envelope of a replay entry (format version 1), and the engine's own ops.

Every entry a Journal appends is an ordinary eventlog entry:

    op      = the registered op name (UTF-8, as the user registered it)
    payload = {"v": <int op version>, "p": <the op's keyword payload, a str-keyed map>}

so the fixed eventlog header (term, time, checksum, op) still answers "what happened"
without decoding payloads, and the version travels with every entry: replaying an
entry whose ``v`` differs from the registered handler's version needs an upcaster.

Op names beginning with ``replay.`` are reserved for the engine's own entries:

    replay.digest    {"v": 1, "p": {"digest": <signed int64>}}
        The state fingerprint (replay.determinism.state_digest) after every entry
        before it. Replay recomputes and compares; a mismatch is DivergenceError.
    replay.truncate  {"v": 1, "p": {"after": i, "dropped": [[index, op], ...], "reason": str}}
        An audit record left by the operator's replay.truncate(); replay skips it.
    replay.fork      {"v": 1, "p": {"source": path, "source_term": t, "at": i, "source_last_index": n,
                                    "reason": str}}
        The first entry of a journal made by replay.fork(): its history is the source's
        entries up to `at`, copied; replay skips it.

None of them changes the state, and all count as applied entries (journal.index covers them).
"""

from __future__ import annotations

from typing import Any

from .errors import EnvelopeError

RESERVED_PREFIX = "replay."
DIGEST_OP = "replay.digest"
TRUNCATE_OP = "replay.truncate"
FORK_OP = "replay.fork"
AUDIT_OPS = frozenset({TRUNCATE_OP, FORK_OP})  # operator records: no effect on the state
ENGINE_OPS = frozenset({DIGEST_OP, *AUDIT_OPS})


def wrap(version: int, payload: dict[str, Any]) -> dict[str, Any]:
    """The envelope stored as an entry's payload."""
    return {"v": version, "p": payload}


def unwrap(index: int, op: str, stored: Any) -> tuple[int, dict[str, Any]]:
    """(version, payload) of a decoded entry payload; EnvelopeError naming index and op if malformed."""
    # The well-formed case, as msgpack decodes it, checked with exact types first (replay
    # calls this once per entry); anything else takes the general checks below.
    if type(stored) is dict and len(stored) == 2:
        version, payload = stored.get("v"), stored.get("p")
        if type(version) is int and version >= 1 and type(payload) is dict:
            for key in payload:
                if type(key) is not str:
                    break
            else:
                return version, payload
    if not isinstance(stored, dict) or set(stored) != {"v", "p"}:
        raise EnvelopeError(index, op, "payload is not a {'v': version, 'p': payload} map")
    version, payload = stored["v"], stored["p"]
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise EnvelopeError(index, op, f"version {version!r} is not a positive integer")
    if not isinstance(payload, dict) or not all(isinstance(k, str) for k in payload):
        raise EnvelopeError(index, op, "op payload is not a map with str keys")
    return version, payload
