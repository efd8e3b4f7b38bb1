"""Benchmarks: ``python -m bench NAME [options]``.

Each benchmark is a module ``bench/NAME.py`` exposing ``main(argv) -> int``. They run
the peer baselines in the same process run and report ratios; results are written as
JSON under ``bench/results/``. Benchmarks are not tests: nothing here asserts time.
"""

import importlib
import pkgutil
import sys
from pathlib import Path


def _available() -> list[str]:
    here = Path(__file__).parent
    return sorted(m.name for m in pkgutil.iter_modules([str(here)]) if not m.name.startswith("_"))


def main(argv: list[str]) -> int:
    names = _available()
    if not argv or argv[0] in ("-h", "--help"):
        print("usage: python -m bench NAME [options]\navailable: " + ", ".join(names))
        return 0 if argv else 2
    name = argv[0]
    if name not in names:
        print(f"bench: unknown benchmark {name!r}; available: {', '.join(names)}", file=sys.stderr)
        return 2
    module = importlib.import_module(f"bench.{name}")
    return int(module.main(argv[1:]) or 0)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
