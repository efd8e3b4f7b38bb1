"""`replay diff DIR I J --ops M:A --state M:F`: which tensors changed between two indexes, and by how much.

The state is rebuilt at min(I, J), copied, then replayed on to max(I, J): one
reconstruction, every entry in between applied once. Per tensor: how many elements
differ, the largest absolute change and the L2 norm of the change (in float64).
`--only PREFIX` (repeatable) keeps the names equal to a prefix or under it
(``model`` keeps ``model.0.weight``; dotted names as `replay state` writes them);
`--top K` lists the K largest changes: tensors with at least one dimension first, by the
norm of the change, largest first; then 0-dim scalars (an optimizer's `step` counter grows
by one per step, a larger norm than any weight's change, and is never what `--top` is
asked for); then non-tensor values.
"""

from __future__ import annotations

import argparse
from typing import Any

import torch

from replay.recovery import Replayer

from .args import index_arg
from .errors import EXIT_OK, CliError
from .output import Column, Output
from .source import open_source
from .state import add_user_code_options, base_name, rebuild, tensors_by_name
from .summary import tensor_label
from .userspec import load_ops, load_state

HELP = "list the tensors that changed between two indexes, with the size of each change"

COLUMNS = [
    Column("name", "tensor"),
    Column("status", "status"),
    Column("kind", "dtype[shape]"),
    Column("changed", "changed", lambda v: "-" if v is None else str(v), right=True),
    Column("max_abs", "max |Δ|", lambda v: "-" if v is None else f"{v:.4g}", right=True),
    Column("norm", "‖Δ‖", lambda v: "-" if v is None else f"{v:.4g}", right=True),
    Column("detail", "", lambda v: v or ""),
]


def add_parser(sub, parents) -> None:
    p = sub.add_parser("diff", parents=parents, help=HELP, description=HELP)
    p.add_argument("dir", help="journal directory")
    p.add_argument("i", type=index_arg, metavar="I", help="the state right after entry I ...")
    p.add_argument("j", type=index_arg, metavar="J", help="... compared with the state right after entry J")
    add_user_code_options(p)
    p.add_argument("--all", action="store_true", help="list unchanged tensors too")
    p.add_argument("--only", action="append", metavar="PREFIX", type=prefix_arg,
                   help="only names equal to PREFIX or under it (repeatable, or comma separated)")
    p.add_argument("--top", type=top_arg, metavar="K",
                   help="the K largest changes: tensors with at least one dimension by the norm of the change, "
                        "largest first, before 0-dim scalars (optimizer step counters), then other values")
    p.set_defaults(run=run)


def run(args, out: Output) -> int:
    ops = load_ops(args.ops, args.import_timeout)
    state, kinds = load_state(args.state, args.import_timeout)
    lo, hi = sorted((args.i, args.j))
    progress = False if out.as_json else None
    with open_source(args.dir) as src:
        rebuilt = rebuild(src, lo, ops, state, kinds, progress=progress)
        tensors, values = tensors_by_name(state)
        before = ({n: t.detach().clone() for n, t in tensors.items()}, dict(values))
        if hi > lo:
            Replayer(ops, state, kinds=kinds).run(src.log, lo + 1, hi + 1, rebuilt, progress)
        after = tensors_by_name(state)
    if args.i > args.j:
        before, after = after, before  # report the change from I to J, as asked
    prefixes = [p for group in args.only or () for p in group]
    rows = [r for r in compare(before, after) if not prefixes or under(r["name"], prefixes)]
    if prefixes and not rows:
        raise CliError(f"--only {', '.join(prefixes)}: no state entry has that name or lies under it")
    shown = rows if args.all else [r for r in rows if r["status"] != "unchanged"]
    if args.top is not None:
        shown = sorted(shown, key=top_rank)[:args.top]
    if not out.as_json:
        changed = sum(r["status"] != "unchanged" for r in rows)
        out.line(f"{changed} of {len(rows)} state entries changed between index {args.i} and {args.j} "
                 f"(base: {base_name(rebuilt) or 'factory state'})")
    if shown or out.as_json:
        out.table(COLUMNS, shown)
    return EXIT_OK


def prefix_arg(text: str) -> list[str]:
    """argparse type: one or more comma-separated dotted prefixes."""
    parts = [p.strip() for p in text.split(",")]
    if not all(parts) or any(p.startswith(".") or p.endswith(".") for p in parts):
        raise argparse.ArgumentTypeError(f"{text!r} is not a dotted name prefix (e.g. model or model.encoder)")
    return parts


def top_arg(text: str) -> int:
    """argparse type: K >= 1."""
    try:
        k = int(text)
    except ValueError:
        k = 0
    if k < 1:
        raise argparse.ArgumentTypeError(f"--top takes a count >= 1, got {text!r}")
    return k


def top_rank(row: dict[str, Any]) -> tuple[int, float]:
    """Sort key of `--top`: tensors with a dimension (by norm, largest first), then 0-dim
    scalars (by norm), then rows without a norm (values, added, removed, reshaped)."""
    if row["norm"] is None:
        return 2, 0.0
    return (1 if row["scalar"] else 0), -row["norm"]


def under(name: str, prefixes: list[str]) -> bool:
    """Whether a dotted name equals one of `prefixes` or lies under it."""
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def compare(before, after) -> list[dict[str, Any]]:
    """One record per tensor or value name in either state: status and the size of the change."""
    (t0, v0), (t1, v1) = before, after
    rows = []
    for name in sorted(set(t0) | set(t1)):
        a, b = t0.get(name), t1.get(name)
        t = b if b is not None else a
        row = {"name": name, "kind": tensor_label(t), "scalar": t.dim() == 0, "changed": None, "max_abs": None,
               "norm": None, "detail": None}
        if a is None or b is None:
            row["status"] = "added" if a is None else "removed"
        elif a.dtype != b.dtype or a.shape != b.shape:
            row.update(status="reshaped", detail=f"was {tensor_label(a)}")
        else:
            differs = a.ne(b)
            count = int(differs.sum())
            row["status"] = "changed" if count else "unchanged"
            row["changed"] = count
            if a.dtype == torch.bool:
                row["max_abs"] = float(count > 0)
                row["norm"] = float(count) ** 0.5
            else:
                delta = b.to(torch.float64) - a.to(torch.float64) if not a.is_complex() else (b - a).abs().double()
                row["max_abs"] = delta.abs().max().item() if delta.numel() else 0.0
                row["norm"] = torch.linalg.vector_norm(delta).item()
        rows.append(row)
    for name in sorted(set(v0) | set(v1)):
        a, b = v0.get(name, "<absent>"), v1.get(name, "<absent>")
        rows.append({"name": name, "kind": "value", "scalar": True, "status": "unchanged" if a == b else "changed", "changed": None,
                     "max_abs": None, "norm": None, "detail": None if a == b else f"{a!r} -> {b!r}"})
    return rows
