"""`replay export DIR [--at I] [--only NAME] --out FILE.safetensors`: plain weights for other tools.

Writes the chosen components' tensors to a safetensors file that `safetensors` and
`transformers` load directly. Names are dotted key paths ("model.0.weight"), less the
selected prefix, so the file loads with ``strict=True`` into the module that was chosen
(`--keep-prefix` keeps full names):

- `--only model.encoder` writes "0.weight", which
  ``model.encoder.load_state_dict(load_file(FILE), strict=True)`` and
  ``AutoModel.from_pretrained`` take as they are; the prefix dropped is the longest
  dotted prefix the selectors share (`--only model.weight,model.bias` drops "model.").
- A selector that names one tensor keeps its last part (`--only model.bias` writes "bias").
- Without `--only`, when every tensor lies in one component, that component's name is
  dropped ("model.0.weight" becomes "0.weight").
- Nothing is dropped when that would leave no name (a bare tensor component such as
  "table") or when the selectors share no prefix.
Non-tensor leaves (an optimizer's lr, counters) and where the state came from go into
the file's metadata (``replay.*`` keys, and ``format: pt`` as transformers expects).

Which state:

- `--at I` defaults to the index of the newest snapshot whose chosen part loads (damaged
  newer ones are named on stderr and passed over).
- At a snapshot's index only the snapshot is read (only the chunks of the chosen
  components), and no user code is imported: `--ops/--state` are not even resolved.
- At any other index the state is rebuilt as `replay state` does (newest usable snapshot
  at or before I, then replay), which needs `--ops` and `--state`.

`--only` takes component names or dotted prefixes (`model`, `model.encoder`),
repeatable or comma separated; without it every component is written. The file is
written to a temporary name and renamed, so a failed export leaves no partial file.
"""

from __future__ import annotations

import json
import sys

import snapshots

from replay.audit import human_bytes
from replay.loadstate import refusal, snapshots_at

from .args import index_arg
from .diff import prefix_arg, under
from .errors import EXIT_OK, CliError
from .output import Output
from .source import open_source
from .state import add_user_code_options, base_name, rebuild, tensors_by_name, write_safetensors
from .userspec import load_ops, load_state

HELP = "write chosen components at an index (default: the newest snapshot) as plain safetensors"
DESCRIPTION = (HELP + ". The selected prefix is dropped from the tensor names: --only model.encoder writes "
               "0.weight, not model.encoder.0.weight, so model.encoder.load_state_dict(load_file(FILE), strict=True) "
               "and from_pretrained-style loaders take the file as it is; several selectors drop the prefix they "
               "share; without --only, a single component's name is dropped. --keep-prefix keeps full names.")


def add_parser(sub, parents) -> None:
    p = sub.add_parser("export", parents=parents, help=HELP, description=DESCRIPTION)
    p.add_argument("dir", help="journal directory")
    p.add_argument("--at", type=index_arg, metavar="INDEX",
                   help="the state right after this entry (default: the newest snapshot's index)")
    p.add_argument("--only", action="append", type=prefix_arg, metavar="NAME",
                   help="a component or dotted prefix to export (repeatable, or comma separated; default: all)")
    p.add_argument("--keep-prefix", action="store_true",
                   help="keep full dotted names (by default the selected prefix, e.g. model.encoder., is dropped)")
    p.add_argument("--out", required=True, metavar="FILE.safetensors", help="where to write the tensors")
    add_user_code_options(p, required=False)
    p.epilog = ("At a snapshot's index nothing is imported. At another index, --ops and --state are needed: "
                + p.epilog)
    p.set_defaults(run=run)


def run(args, out: Output) -> int:
    selectors = [s for group in args.only or () for s in group] or None
    with open_source(args.dir) as src:
        if src.store is None:
            raise CliError(f"{args.dir} is a bare event log; export needs a journal")
        found = _from_snapshot(src, args.at, selectors)
        if found is not None:
            index, info, tensors, values = found
            term, source, replayed = info.term, info.manifest_id, 0
        else:
            if args.ops is None or args.state is None:
                _, _, nearest = snapshots_at(src.log, src.store, args.at)
                before = f"the nearest snapshot before it is at index {nearest}" if nearest is not None else \
                    "no snapshot precedes it"
                raise CliError(f"no sound snapshot at index {args.at} ({before}); exporting another index replays "
                               "the log: pass --ops MODULE:ATTR and --state MODULE:FACTORY, or --at a snapshot's index")
            index = args.at
            ops = load_ops(args.ops, args.import_timeout)
            state, kinds = load_state(args.state, args.import_timeout)
            rebuilt = rebuild(src, index, ops, state, kinds, progress=False if out.as_json else None)
            term, source, replayed = src.log.term_at(index), base_name(rebuilt) or "", len(rebuilt.replayed)
            tensors, values = tensors_by_name(state)
            if selectors:
                for s in selectors:
                    if not any(under(name, [s]) for name in (*tensors, *values)):
                        raise snapshots.ComponentNotFoundError(s, sorted(state))
                tensors = {n: t for n, t in tensors.items() if under(n, selectors)}
                values = {n: v for n, v in values.items() if under(n, selectors)}
    tensors, values, prefix = _strip(tensors, values, None if args.keep_prefix else selected_prefix(selectors, tensors))
    if not tensors:
        raise CliError(f"nothing to export: {', '.join(selectors or ['the state'])} holds no tensor")
    metadata = {"format": "pt", "replay.index": str(index), "replay.term": str(term), "replay.snapshot": source,
                "replay.component": prefix or "", "replay.values": json.dumps(values, default=repr, sort_keys=True)}
    size = write_safetensors(args.out, tensors, metadata)
    if out.as_json:
        out.record({"index": index, "term": term, "snapshot": source or None, "replayed": replayed,
                    "component": prefix, "tensors": len(tensors), "bytes": size, "out": str(args.out)})
    else:
        origin = f"snapshot {source}" if replayed == 0 and source else \
            f"{'snapshot ' + source if source else 'the --state factory'} + {replayed} replayed entries"
        names = f" (names without the '{prefix}.' prefix)" if prefix else ""
        out.line(f"state at index {index} from {origin}: wrote {len(tensors)} tensors "
                 f"({human_bytes(size)}) to {args.out}{names}")
    return EXIT_OK


def _from_snapshot(src, at: int | None, selectors):
    """(index, info, tensors, values) read from a snapshot exactly at `at` (default: the
    newest whose chosen part loads); None when `at` has no sound snapshot."""
    if at is not None:
        last = src.log.last_index
        if at > last:
            raise CliError(f"log index {at} is past the end: the last entry is {last}")
        candidates, _, _ = snapshots_at(src.log, src.store, at)
    else:
        candidates = [info for info in src.store.list()[::-1] if refusal(src.log, info) is None]
    for info in candidates:
        try:
            tree = src.store.load(info, only=selectors)
        except snapshots.CorruptSnapshotError as exc:
            print(f"replay export: passed over damaged snapshot {info.manifest_id}: {exc}", file=sys.stderr)
            continue
        tensors, values = tensors_by_name(tree)
        return info.index, info, tensors, values
    if at is None:
        raise CliError("no snapshot of the chosen components loads; pass --at INDEX with --ops and --state to replay")
    return None


def selected_prefix(selectors: list[str] | None, tensors: dict) -> str | None:
    """The dotted prefix an export drops from its tensor names (None: none).

    With selectors: the longest dotted prefix they all share; when that names a tensor
    itself (`--only model.bias`), its parent. Without: the one component every tensor
    lies in. None when that prefix is empty or would leave some name empty.
    """
    if selectors:
        parts = [s.split(".") for s in selectors]
        shared = []
        for level in zip(*parts):
            if len(set(level)) != 1:
                break
            shared.append(level[0])
        if ".".join(shared) in tensors:
            shared = shared[:-1]
        prefix = ".".join(shared)
    else:
        components = {name.split(".", 1)[0] for name in tensors}
        prefix = components.pop() if len(components) == 1 else ""
    if not prefix or not all(name.startswith(prefix + ".") for name in tensors):
        return None
    return prefix


def _strip(tensors: dict, values: dict, prefix: str | None) -> tuple[dict, dict, str | None]:
    """Drop `prefix` and its dot from every tensor name (and from the values under it)."""
    if prefix is None:
        return tensors, values, None
    cut = len(prefix) + 1
    return ({n[cut:]: t for n, t in tensors.items()},
            {(n[cut:] if n.startswith(prefix + ".") else n): v for n, v in values.items()}, prefix)
