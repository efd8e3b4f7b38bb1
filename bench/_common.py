"""What every benchmark shares: percentiles, scratch directories, the machine record,
number formatting and writing the results file. (Not a benchmark: the dispatcher skips
modules whose name starts with "_".)"""

from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import shutil
import subprocess
import tempfile
from pathlib import Path

from eventlog.locking import filesystem_type

REPO = Path(__file__).resolve().parent.parent


def pct(values, q):
    """Nearest-rank percentile of `values` (q in 0..100); None for no values."""
    if not values:
        return None
    s = sorted(values)
    k = min(len(s) - 1, max(0, int(round(q / 100 * len(s) + 0.5)) - 1))
    return s[k]


def ms(seconds):
    return round(seconds * 1e3, 3)


class Workdir:
    """A scratch directory for one benchmark run; each measurement gets a fresh path in it."""

    def __init__(self, base, prefix: str):
        Path(base).mkdir(parents=True, exist_ok=True)
        self.root = Path(tempfile.mkdtemp(prefix=prefix, dir=base))
        self._n = 0

    def new(self, name):
        self._n += 1
        return self.root / f"{self._n:03d}-{name}"

    @staticmethod
    def drop(path):
        shutil.rmtree(path, ignore_errors=True) if Path(path).is_dir() else Path(path).unlink(missing_ok=True)

    def close(self):
        shutil.rmtree(self.root, ignore_errors=True)


def machine_info(bench_dir, watched: tuple[str, ...], **versions) -> dict:
    """Where and on what a run happened; `watched` are repo paths whose uncommitted changes are listed."""
    cpu = "unknown"
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    except OSError:
        pass

    def git(*args):
        try:
            return subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True).stdout.strip()
        except OSError:
            return ""

    return {
        "loadavg_at_start": [round(x, 2) for x in os.getloadavg()],
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "cpu_count": os.cpu_count(),
        "cpu_model": cpu,
        "platform": platform.platform(),
        "python": platform.python_version(),
        **versions,
        "filesystem": filesystem_type(Path(bench_dir)) or "unknown",
        "bench_dir": str(bench_dir),
        "git_commit": git("rev-parse", "HEAD"),
        "uncommitted_changes": git("status", "--porcelain", "--", *watched).splitlines(),
    }


def fmt(v):
    """A number as a table cell: thousands separators, 3 significant digits for small values."""
    if v is None:
        return "-"
    if isinstance(v, bool):
        return "yes" if v else "NO"
    if isinstance(v, float):
        return f"{v:,.0f}" if v >= 1000 else (f"{v:.3g}" if v < 10 else f"{v:.1f}")
    if isinstance(v, int):
        return f"{v:,}"
    return str(v)


def finish(results: dict, path: Path, started: float, now: float) -> None:
    """Stamp the end of the run and write `results` as JSON to `path`."""
    results["elapsed_s"] = round(now - started, 1)
    results["machine"]["loadavg_at_end"] = [round(x, 2) for x in os.getloadavg()]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=2) + "\n")
