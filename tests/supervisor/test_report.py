"""`replay report DIR --out run.html` (replay/runreport.py): a real run under `replay run` with
killed attempts and a recorded loss, checked in the pictures themselves: the inline PNGs
decode, have the expected size, are not blank, show each attempt's class colour in time
order and a loss curve that descends left to right; a journal never run under `replay run`
and one without recorded values say so; a missing matplotlib is named."""

from __future__ import annotations

import base64
import io
import re
import sys
from pathlib import Path

import pytest

from tests.warm import run_replay
import torch
from PIL import Image

import replay
from replay.__main__ import main as cli
from replay.runreport import CLASS_COLOURS, LINE_COLOUR

from .test_run import ROOT, env

pytestmark = [pytest.mark.crash, pytest.mark.timeout(240)]

LOSS_JOB = Path(__file__).with_name("loss_job.py")


def images(page: str) -> dict[str, Image.Image]:
    found = re.findall(r'<img alt="([^"]*)" src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)
    return {alt: Image.open(io.BytesIO(base64.b64decode(data))).convert("RGB") for alt, data in found}


def pixels_of(image: Image.Image, colour: str, tolerance: int = 12) -> list[tuple[int, int]]:
    """(x, y) of every pixel within `tolerance` of `colour` per channel."""
    target = tuple(int(colour[i:i + 2], 16) for i in (1, 3, 5))
    width, raw = image.width, image.tobytes()  # RGB, row by row
    return [(n % width, n // width) for n in range(len(raw) // 3)
            if all(abs(raw[3 * n + c] - target[c]) <= tolerance for c in range(3))]


def report(directory, out, *extra) -> str:
    done = run_replay(["report", directory, "--out", out, *extra], cwd=ROOT, timeout=120, env=env())
    assert done.returncode == 0, done.stderr
    return Path(out).read_text()


def test_a_supervised_run_with_killed_attempts_is_drawn(tmp_path):
    journal = tmp_path / "j"
    run = run_replay(["run", str(journal), "--backoff", "0", "--", sys.executable, str(LOSS_JOB), str(journal), "40",
                      "--kill", "1:15"], cwd=ROOT, timeout=200, env=env())
    assert run.returncode == 0, run.stderr
    page = report(journal, tmp_path / "run.html")
    assert "<script" not in page and "http" not in page.split("<body>")[1]  # self-contained
    pictures = images(page)
    assert set(pictures) == {"timeline", "metric loss"}

    curve = pictures["metric loss"]
    assert curve.size == (1000, 300)
    raw = curve.tobytes()
    assert len({raw[i:i + 3] for i in range(0, len(raw), 3)}) > 20  # not blank: axes, text, the line
    line = pixels_of(curve, LINE_COLOUR)
    assert len(line) > 500
    xs = sorted({x for x, _ in line})
    width = xs[-1] - xs[0]
    assert width > 600  # the series spans most of the plot: 40 steps
    left = [y for x, y in line if x < xs[0] + width * 0.2]
    right = [y for x, y in line if x > xs[-1] - width * 0.2]
    # Image y grows downwards: a loss that descends sits lower (larger y) on the right.
    assert sum(right) / len(right) > sum(left) / len(left) + 40

    timeline = pictures["timeline"]
    crashed = pixels_of(timeline, CLASS_COLOURS["crashed"], tolerance=4)
    finished = pixels_of(timeline, CLASS_COLOURS["finished"], tolerance=4)
    assert len(crashed) > 200 and len(finished) > 200
    # The killed attempt came first: its bar lies left of the finished one (legend swatches aside).
    bar_row = max({y for _, y in crashed}, key=lambda row: sum(1 for _, y in crashed if y == row))
    assert max(x for x, y in crashed if y == bar_row) <= min(x for x, y in finished if y == bar_row) + 2
    assert "attempt" in page and "crashed" in page and "finished" in page


def test_a_journal_never_supervised_and_without_metrics_says_so(tmp_path):
    ops = replay.Ops()

    @ops.op
    def add(state, *, v):
        state["w"].add_(v)

    with replay.Journal.open(tmp_path / "j", state={"w": torch.zeros(2)}, ops=ops, environment="ignore") as journal:
        journal.apply("add", v=1.0)
    page = report(tmp_path / "j", tmp_path / "r.html")
    assert "No attempts recorded" in page and "No recorded metrics" in page
    assert set(images(page)) == {"timeline"}  # the writer start and the snapshots still are


def test_a_missing_matplotlib_is_named(tmp_path, monkeypatch, capsys):
    ops = replay.Ops()
    ops.op(lambda state: None, name="nothing")
    replay.Journal.open(tmp_path / "j", state={"w": torch.zeros(1)}, ops=ops, environment="ignore").close()
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib raises ImportError
    status = cli(["report", str(tmp_path / "j"), "--out", str(tmp_path / "r.html")])
    assert status != 0 and not (tmp_path / "r.html").exists()
    err = capsys.readouterr().err
    assert "replay report needs matplotlib" in err and "torch-eventlog[report]" in err
