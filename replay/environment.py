"""The environment a journal was created in, and how the current one differs.

Bit-exact replay holds for the same kernels on the same inputs: a torch upgrade, another
GPU model, another CUDA/cuDNN, another CPU instruction set, determinism flags switched
off, or a different thread count can change the low bits of a float result, and a
replay across such a change may diverge (digests catch it where they are on). So a
journal records, when it is created, a small fingerprint in ``DIR/environment.json``::

    {"format": 1, "replay": "0.1.0", "torch": "2.3.1", "python": "3.11.9",
     "device_type": "cuda", "device_name": "NVIDIA H100 80GB HBM3", "cpu_capability": "AVX512",
     "cuda": "12.1", "cudnn": 8902, "deterministic_algorithms": true,
     "deterministic_warn_only": false, "cudnn_deterministic": true, "cudnn_benchmark": false,
     "cublas_workspace_config": ":4096:8", "threads": 8}

(a flat JSON object of strings, numbers, booleans and nulls; readers ignore keys they do
not know). It is written durably (temp file, fsync, rename, directory fsync) before the
journal's first entry, and read back defensively: at most `MAX_BYTES`, a regular file,
strict UTF-8 JSON (no NaN, no duplicate keys), one flat object; anything else is
`EnvironmentFileError` naming the path, never a traceback from deep inside a parser.

On recovery, ``Journal.open(environment=...)`` compares it with the current fingerprint:
"warn" (default) lists the differences in ``journal.recovery.environment`` and warns;
"strict" refuses with EnvironmentMismatchError before anything is written (like the
preflight of invariant 7); "ignore" reads nothing. A journal created before this file
existed has none, and nothing is compared.

Two kinds of field: the *machine's* (library versions, device, CPU instruction set,
CUDA/cuDNN), which any process on a machine shares, and the *training process's own
settings* (`PROCESS_SETTINGS`: the thread count and determinism flags its script set).
`Journal.open` runs in the training process and compares both. A separate tool on the
machine (`replay stats`) knows only the machine's: its own thread count and flags are
its defaults, not the training run's, so it compares with `machine_differences`.
"""

from __future__ import annotations

import os
import platform
from pathlib import Path
from typing import Any

import torch

from . import jsonfile, layout
from .errors import DamageError, ReplayError

FILE = layout.ENVIRONMENT_FILE
FORMAT = 1
MAX_BYTES = 64 * 1024  # a fingerprint is a few hundred bytes; a bigger file is not one
MAX_STRING = 512
POLICIES = ("warn", "strict", "ignore")
_ORDER = ("replay", "torch", "python", "device_type", "device_name", "cpu_capability", "cuda", "cudnn",
          "deterministic_algorithms", "deterministic_warn_only", "cudnn_deterministic", "cudnn_benchmark",
          "cublas_workspace_config", "threads")
# Set by the training script (or its launcher), not by the machine: another process's values say nothing.
PROCESS_SETTINGS = frozenset({"threads", "deterministic_algorithms", "deterministic_warn_only", "cudnn_deterministic",
                              "cudnn_benchmark", "cublas_workspace_config"})


class EnvironmentFileError(ReplayError, DamageError):
    """A journal's environment.json is unreadable or is not a fingerprint (damaged or hostile); names the path."""


def fingerprint(device: torch.device | str | None = None) -> dict[str, Any]:
    """The current environment (module doc), for computations on `device` (default: CPU)."""
    device = torch.device(device if device is not None else "cpu")
    cudnn = torch.backends.cudnn
    if device.type == "cuda" and torch.cuda.is_available():
        name = torch.cuda.get_device_name(device)
    else:
        name = platform.machine() or None
    return {
        "format": FORMAT,
        "replay": _library_version(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "device_type": device.type,
        "device_name": name,
        "cpu_capability": _cpu_capability(),
        "cuda": torch.version.cuda,
        "cudnn": cudnn.version() if cudnn.is_available() else None,
        "deterministic_algorithms": torch.are_deterministic_algorithms_enabled(),
        "deterministic_warn_only": torch.is_deterministic_algorithms_warn_only_enabled(),
        "cudnn_deterministic": bool(cudnn.deterministic),
        "cudnn_benchmark": bool(cudnn.benchmark),
        "cublas_workspace_config": os.environ.get("CUBLAS_WORKSPACE_CONFIG"),
        "threads": torch.get_num_threads(),
    }


def recorded(root: str | os.PathLike) -> dict[str, Any] | None:
    """The fingerprint the journal at `root` recorded when it was created; None when it has none.

    EnvironmentFileError (naming the file) when the file is not a regular file, is larger
    than MAX_BYTES, is not strict UTF-8 JSON, or is not one flat object of scalars with a
    supported ``format``.
    """
    path = layout.environment_file(root)
    try:
        doc = jsonfile.read_small(path, MAX_BYTES)
    except jsonfile.JsonFileError as exc:
        if str(exc).startswith("not JSON"):
            raise EnvironmentFileError(f"{path}: not a JSON environment fingerprint ({str(exc)[10:-1]})") from None
        if str(exc).startswith("larger than"):
            raise EnvironmentFileError(f"{path}: {exc}, not an environment fingerprint") from None
        raise EnvironmentFileError(f"{path}: {exc}") from None
    return None if doc is None else _check(path, doc)


def differences(recorded: dict[str, Any] | None, current: dict[str, Any]) -> list[str]:
    """One line per field whose value differs ("torch: 2.3.1 when created, 2.4.0 now"),
    known fields first in a fixed order; [] when `recorded` is None (nothing to compare)."""
    if recorded is None:
        return []
    keys = [k for k in _ORDER if k in recorded or k in current]
    keys += sorted((recorded.keys() | current.keys()) - set(_ORDER) - {"format"})
    return [f"{key}: {_show(recorded.get(key))} when created, {_show(current.get(key))} now"
            for key in keys if recorded.get(key) != current.get(key)]


def machine_differences(recorded: dict[str, Any] | None, current: dict[str, Any]) -> list[str]:
    """`differences` less the training process's own settings (`PROCESS_SETTINGS`): what a
    process other than the training run (a CLI) can say about replaying on this machine."""
    return [line for line in differences(recorded, current) if line.split(":", 1)[0] not in PROCESS_SETTINGS]


def record(root: str | os.PathLike, current: dict[str, Any]) -> None:
    """Write `current` as the journal's fingerprint durably: temp file, fsync, rename, directory fsync."""
    jsonfile.write_durably(layout.environment_file(root), current)


def _check(path: Path, doc: Any) -> dict[str, Any]:
    if not isinstance(doc, dict):
        raise EnvironmentFileError(f"{path}: not a JSON object but {type(doc).__name__}")
    for key, value in doc.items():
        if isinstance(value, str) and len(value) > MAX_STRING:
            raise EnvironmentFileError(f"{path}: field {key[:40]!r} is longer than {MAX_STRING} characters")
        if not (value is None or isinstance(value, (str, bool, int, float))):
            raise EnvironmentFileError(f"{path}: field {key[:40]!r} is a {type(value).__name__}, not a scalar")
    if doc.get("format") != FORMAT or isinstance(doc.get("format"), bool):
        raise EnvironmentFileError(f"{path}: field 'format' is {str(doc.get('format'))[:40]!r}, not {FORMAT}")
    return doc


def _show(value: Any) -> str:
    return "unset" if value is None else str(value)


def _library_version() -> str | None:
    from importlib import metadata

    try:
        return metadata.version("torch-eventlog")
    except metadata.PackageNotFoundError:
        return None


def _cpu_capability() -> str | None:
    # The CPU kernels torch dispatches to (AVX2, AVX512...): different ones can round differently.
    try:
        return torch.backends.cpu.get_cpu_capability()
    except (AttributeError, RuntimeError):
        return None
