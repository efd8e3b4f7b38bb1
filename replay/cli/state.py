"""`replay state DIR --at INDEX --ops M:A --state M:F --out FILE.safetensors`: point-in-time export.

Rebuilds the state right after entry INDEX (the engine's own recovery, `at=INDEX`: the
newest usable snapshot at or before it, then replay) and writes every tensor to a
safetensors file under its dotted name; non-tensor leaves (counters, learning rates)
and where the state came from go into the file's metadata. The file is written to a
temporary name and renamed, so a failed export never leaves a partial file.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Mapping

import torch

from replay import components
from replay.recovery import RecoveryReport, Replayer
from replay.audit import human_bytes

from .args import index_arg
from .errors import EXIT_OK
from .output import Output
from .source import open_source
from .userspec import USER_CODE_NOTE, add_import_timeout, load_ops, load_state

HELP = "rebuild the state at an index (snapshot + replay) and export its tensors to safetensors"


def add_user_code_options(p, required: bool = True) -> None:
    """--ops, --state and --import-timeout; the user-code note goes into the command's help."""
    p.add_argument("--ops", required=required, metavar="MODULE:ATTR",
                   help="the journal's replay.Ops (or a function returning it)")
    p.add_argument("--state", required=required, metavar="MODULE:FACTORY",
                   help="a function returning a fresh state of the journal's layout")
    add_import_timeout(p)
    p.epilog = USER_CODE_NOTE


def add_parser(sub, parents) -> None:
    p = sub.add_parser("state", parents=parents, help=HELP, description=HELP)
    p.add_argument("dir", help="journal directory")
    p.add_argument("--at", required=True, type=index_arg, metavar="INDEX", help="the state right after this entry")
    add_user_code_options(p)
    p.add_argument("--out", required=True, metavar="FILE.safetensors", help="where to write the tensors")
    p.set_defaults(run=run)


def rebuild(src, index: int, ops, state, kinds, progress: bool | None) -> RecoveryReport:
    """`state` (fresh, from the factory) brought to exactly entry `index` by the engine's
    recovery: the newest sound snapshot at or before it (the journal's initial snapshot at
    index 0 at the latest), then replay. The factory's own values never reach the result
    (RecoveryError when no snapshot loads), so a factory that builds a different initial
    state (another random init) cannot give a wrong answer."""
    return Replayer(ops, state, kinds=kinds).recover(src.log, src.store, at=index, progress=progress)


def base_name(report: RecoveryReport) -> str | None:
    """The manifest id of the snapshot a rebuild started from; None for the factory's state."""
    return report.snapshot.manifest_id if report.snapshot is not None else None


def tensors_by_name(state: Mapping[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """({dotted name: tensor}, {dotted name: other leaf}) of a state; state_dict objects expanded.

    Names join the key path with dots ("model.0.weight", "optim.state.0.exp_avg").
    ValueError if two paths flatten to the same name (a key that itself contains a dot).
    """
    tensors: dict[str, torch.Tensor] = {}
    values: dict[str, Any] = {}
    for path, leaf in components.leaves(state):
        name = ".".join(str(part) for part in path)
        if name in tensors or name in values:
            raise ValueError(f"two state entries flatten to the same name {name!r}")
        (tensors if isinstance(leaf, torch.Tensor) else values)[name] = leaf
    return tensors, values


def write_safetensors(path, tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> int:
    """Write `tensors` (CPU copies are made) to `path` through a temporary name and a
    rename, so a failure leaves no partial file; returns the tensor bytes written."""
    from safetensors.torch import save_file

    export = {name: t.detach().to("cpu").contiguous().clone() for name, t in tensors.items()}
    target = Path(path)
    temp = target.with_name(f".{target.name}.partial-{os.getpid()}")
    try:
        save_file(export, str(temp), metadata=metadata)
        os.replace(temp, target)
    finally:
        temp.unlink(missing_ok=True)
    return sum(t.numel() * t.element_size() for t in export.values())


def run(args, out: Output) -> int:
    ops = load_ops(args.ops, args.import_timeout)
    state, kinds = load_state(args.state, args.import_timeout)
    with open_source(args.dir) as src:
        rebuilt = rebuild(src, args.at, ops, state, kinds, progress=False if out.as_json else None)
        term = src.log.term_at(args.at)
    tensors, values = tensors_by_name(state)
    metadata = {
        "replay.index": str(args.at), "replay.term": str(term),
        "replay.snapshot": base_name(rebuilt) or "",
        "replay.values": json.dumps(values, default=repr, sort_keys=True),
    }
    size = write_safetensors(args.out, tensors, metadata)
    skipped = [f"{sid} ({reason})" for sid, reason in rebuilt.damaged_snapshots]
    if out.as_json:
        out.record({"index": args.at, "term": term, "snapshot": metadata["replay.snapshot"] or None,
                    "replayed": [rebuilt.replayed.start, rebuilt.replayed.stop] if len(rebuilt.replayed) else [],
                    "skipped_snapshots": skipped, "tensors": len(tensors), "bytes": size, "out": str(args.out)})
    else:
        source = f"snapshot {base_name(rebuilt)}" if rebuilt.snapshot is not None else "the --state factory's initial state"
        out.line(f"state at index {args.at}: from {source}, replayed {len(rebuilt.replayed)} entries"
                 + (f"; skipped damaged snapshot(s) {', '.join(skipped)}" if skipped else ""))
        out.line(f"wrote {len(tensors)} tensors ({human_bytes(size)}) to {args.out}")
    return EXIT_OK
