"""Fixtures for the multi-rank tests: a launcher per test and the uninterrupted reference runs.

Every test here runs real rank processes (gloo over 127.0.0.1) from tests/distributed/harness.py.
"""

from __future__ import annotations

import pytest

from . import workload
from .checks import load_states
from .harness import Launcher


def pytest_configure(config):
    # Row 19 of the fault matrix (tests/crash/conftest.py registers every row; this keeps
    # `pytest tests/distributed` alone free of unknown-marker warnings).
    config.addinivalue_line("markers", "fault_ranks: row 19: multi-rank journals under SIGKILL and failpoints")


class References:
    """Uninterrupted plain runs (no journal), one per (world_size, steps, workload options), computed once per session."""

    def __init__(self, root):
        self.root = root
        self.cache: dict[tuple, list] = {}

    def get(self, world_size: int, steps: int, **options) -> list:
        key = (world_size, steps, tuple(sorted(options.items())))
        if key not in self.cache:
            out = self.root / f"ref-{world_size}-{steps}-{len(self.cache)}"
            out.mkdir()
            with Launcher(world_size, out / "logs") as launcher:
                gen = launcher.run(workload.train, (str(out / "unused"), {"steps": steps, "out": str(out),
                                                                          "journal": False, **options}))
            assert gen.clean, gen.describe()
            self.cache[key] = load_states(out, world_size)
        return self.cache[key]


@pytest.fixture(scope="session")
def references(tmp_path_factory):
    return References(tmp_path_factory.mktemp("references"))
