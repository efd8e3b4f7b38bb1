"""A run's history on one self-contained HTML page: `gather` reads it, `render` draws it.

What the page shows, and where each fact comes from:

- the attempts of ``replay run`` on a wall-clock axis, one bar each, coloured by class
  (DIR/supervisor/attempts.jsonl, replay/supervisor/records.py); a new attempt is a
  restart, drawn as a dashed line;
- recoveries: each writer start (a term of the log, first entry's time), a triangle;
- snapshot points: each committed snapshot's creation time, a tick;
- each recorded metric by log index (DIR/recorded.jsonl, replay/recorded.py), with the
  index where each later term began (a recovery) and the snapshots' indexes marked.

Images are PNGs drawn with matplotlib's Agg backend (no display needed) and inlined as
base64 ``data:`` URIs, so the file opens anywhere, offline. matplotlib is an optional
dependency (the ``report`` extra): `render` raises ReportDependencyError naming it when
it is missing. A multi-rank journal's metrics are one rank's (rank 0 unless asked);
its attempts are the group's.
"""

from __future__ import annotations

import base64
import html
import io
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

from eventlog import EventLog

from . import layout
from .errors import ReplayError
from .recorded import Recorded, RecordedFileError, read_recorded
from .supervisor import layout as supervisor_layout
from .supervisor.records import read_attempts
from .supervisor.vocabulary import CLASSES

LINE_COLOUR = "#1f77b4"  # every metric's line: nothing else on a metric's image uses it
CLASS_COLOURS = {"finished": "#2ca02c", "preempted": "#9467bd", "crashed": "#d62728", "oom": "#ff7f0e",
                 "hang": "#8c564b", "user-error": "#e377c2", "recovery-error": "#7f7f7f",
                 "startup-error": "#bcbd22"}
MARK_COLOUR = "#555555"
MAX_METRICS = 32
assert set(CLASS_COLOURS) == set(CLASSES)


class ReportDependencyError(ReplayError):
    """Drawing the report needs a package that is not installed (matplotlib: the report extra)."""


@dataclass
class RunHistory:
    """Everything the page shows. terms: [(term, first index, wall seconds)]; snapshots:
    [(index, term, wall seconds created)]; attempts: the attempt records, oldest first;
    recorded: the values ops recorded that the log still holds; notes: what could not be read."""

    journal: str
    rank: int | None
    first_index: int
    last_index: int
    terms: list[tuple[int, int, float]] = field(default_factory=list)
    snapshots: list[tuple[int, int, float]] = field(default_factory=list)
    attempts: list[dict] = field(default_factory=list)
    recorded: Recorded = field(default_factory=Recorded)
    notes: list[str] = field(default_factory=list)


def gather(journal_dir: str | Path, rank: int | None = None) -> RunHistory:
    """Read the history of the journal at `journal_dir` without disturbing a live writer.

    A multi-rank `journal_dir` shows rank `rank` (0 when None) for the log, snapshots and
    metrics, and the group's attempts. The log is opened readonly (eventlog's errors for a
    directory that holds none); unreadable attempts or recorded files become notes."""
    import snapshots

    root = Path(journal_dir)
    ranks = layout.ranks_on_disk(root)
    journal = layout.rank_dir(root, 0 if rank is None else rank) if ranks else root
    with EventLog.open(layout.log_dir(journal), readonly=True) as log:
        history = RunHistory(str(root), (0 if rank is None else rank) if ranks else None, log.first_index,
                             log.last_index)
        last_term = None
        for header in log.headers(verify=False):
            if header.term != last_term:
                history.terms.append((header.term, header.index, header.time_ns / 1e9))
                last_term = header.term
        try:
            history.recorded = read_recorded(journal, log)
        except RecordedFileError as exc:
            history.notes.append(str(exc))
    store = snapshots.SnapshotStore(layout.snapshots_dir(journal))
    try:
        history.snapshots = [(info.index, info.term, info.created) for info in store.list()]
    finally:
        store.close()
    try:
        history.attempts, skipped = read_attempts(supervisor_layout.records_dir(root))
        if skipped:
            history.notes.append(f"{skipped} unreadable line(s) of {supervisor_layout.ATTEMPTS} skipped")
    except ValueError as exc:  # JsonFileError
        history.notes.append(f"{supervisor_layout.ATTEMPTS}: {exc}")
    return history


def _pyplot():
    try:
        import matplotlib
    except ImportError:
        raise ReportDependencyError("replay report needs matplotlib, which is not installed: "
                                    "pip install 'torch-eventlog[report]' (or pip install matplotlib)") from None
    matplotlib.use("Agg", force=True)
    from matplotlib import pyplot

    return pyplot


def render(history: RunHistory) -> str:
    """The HTML page of `history` (a str; images inline). ReportDependencyError without matplotlib."""
    plt = _pyplot()
    parts = [_head(history)]
    for note in history.notes:
        parts.append(f"<p class=note>{html.escape(note)}</p>")
    parts.append("<h2>Attempts, recoveries and snapshots</h2>")
    if history.attempts:
        parts.append(_attempt_table(history.attempts))
    else:
        parts.append("<p>No attempts recorded: this journal was never run under <code>replay run</code>, "
                     "so there is no attempts panel. Recoveries and snapshots are shown alone.</p>")
    if history.terms or history.snapshots or history.attempts:
        parts.append(_img(plt, _timeline(plt, history), "timeline"))
    parts.append("<h2>Recorded metrics by step (log index)</h2>")
    series = history.recorded.series
    if not series:
        parts.append("<p>No recorded metrics: no op of this journal records values "
                     "(<code>@ops.op(record=(\"loss\",))</code>; see the README).</p>")
    for name in sorted(series)[:MAX_METRICS]:
        parts.append(_img(plt, _metric(plt, history, name), f"metric {name}"))
    if len(series) > MAX_METRICS:
        parts.append(f"<p>{len(series) - MAX_METRICS} more metric(s) not drawn (`replay stats` lists all).</p>")
    if history.recorded.stale:
        parts.append(f"<p>{history.recorded.stale} recorded value row(s) of entries no longer in the log "
                     "(truncated or another history) are not shown.</p>")
    parts.append("</body></html>\n")
    return "\n".join(parts)


def _head(history: RunHistory) -> str:
    rank = f" (rank {history.rank})" if history.rank is not None else ""
    title = html.escape(f"replay report: {history.journal}{rank}")
    return (f"<!DOCTYPE html><html><head><meta charset=utf-8><title>{title}</title>"
            "<style>body{font-family:sans-serif;margin:2em}img{max-width:100%}td,th{padding:2px 8px;"
            "text-align:left}.note{color:#a00}</style></head><body>"
            f"<h1>{title}</h1><p>log entries {history.first_index}..{history.last_index}, "
            f"{len(history.terms)} writer start(s) (terms), {len(history.snapshots)} snapshot(s), "
            f"{len(history.attempts)} attempt(s) of <code>replay run</code>; generated "
            f"{html.escape(time.strftime('%Y-%m-%d %H:%M:%S'))}</p>")


def _attempt_table(attempts: list[dict]) -> str:
    rows = []
    for a in attempts:
        how = f"exit {a['exit']}" if a["exit"] is not None else f"signal {a['signal']}"
        colour = CLASS_COLOURS.get(str(a["class"]), MARK_COLOUR)
        rows.append(f"<tr><td>{html.escape(str(a['attempt']))}</td>"
                    f"<td style='color:{colour}'>{html.escape(str(a['class']))}</td><td>{html.escape(how)}</td>"
                    f"<td>{html.escape(str(a['index_start']))} &rarr; {html.escape(str(a['index_end']))}</td>"
                    f"<td>{html.escape(str(a['decision']))}</td>"
                    f"<td>{html.escape(str(a['message'] or '').splitlines()[0][:200] if a['message'] else '')}</td></tr>")
    return ("<table><tr><th>attempt</th><th>class</th><th>end</th><th>durable index</th><th>decision</th>"
            "<th>message</th></tr>" + "".join(rows) + "</table>")


def _seconds(value) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(
        value) else None


def _timeline(plt, history: RunHistory):
    times = [t for _, _, t in history.terms] + [t for _, _, t in history.snapshots]
    for a in history.attempts:
        times += [s for s in (_seconds(a["started"]), _seconds(a["ended"])) if s is not None]
    origin = min(times) if times else 0.0
    span = (max(times) - origin) if times else 1.0
    scale, unit = (3600.0, "hours") if span > 3 * 3600 else (60.0, "minutes") if span > 600 else (1.0, "seconds")
    rows = ["snapshots", "recoveries"] + (["attempts"] if history.attempts else [])
    fig, ax = plt.subplots(figsize=(10, 1.0 + 0.6 * len(rows)), dpi=100)
    y = {name: i for i, name in enumerate(rows)}
    seen_classes = []
    for a in history.attempts:
        start, end = _seconds(a["started"]), _seconds(a["ended"])
        if start is None or end is None:
            continue
        cls = str(a["class"])
        colour = CLASS_COLOURS.get(cls, MARK_COLOUR)
        width = max((end - start) / scale, span / scale / 500)
        ax.broken_barh([((start - origin) / scale, width)], (y["attempts"] - 0.35, 0.7), facecolors=colour,
                       edgecolors="white", label=cls if cls not in seen_classes else None)
        ax.text((start - origin) / scale + width / 2, y["attempts"], str(a["attempt"]), ha="center",
                va="center", fontsize=8, color="white")
        seen_classes.append(cls)
        if a is not history.attempts[0]:
            ax.axvline((start - origin) / scale, color=MARK_COLOUR, linestyle="--", linewidth=0.8)
    xs = [(t - origin) / scale for _, _, t in history.terms]
    ax.scatter(xs, [y["recoveries"]] * len(xs), marker="v", color=MARK_COLOUR, zorder=3)
    for (term, index, _), x in zip(history.terms, xs):
        ax.annotate(f"term {term} @ {index}", (x, y["recoveries"]), textcoords="offset points", xytext=(3, 6),
                    fontsize=7)
    snaps = [(t - origin) / scale for _, _, t in history.snapshots]
    ax.scatter(snaps, [y["snapshots"]] * len(snaps), marker="|", s=200, color=MARK_COLOUR, zorder=3)
    ax.set_yticks(range(len(rows)), rows)
    ax.set_ylim(-0.6, len(rows) - 0.4)
    ax.set_xlabel(f"{unit} since {time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(origin))}")
    if seen_classes:
        ax.legend(loc="upper left", fontsize=7, ncol=4, bbox_to_anchor=(0, -0.35))
    fig.tight_layout()
    return fig


def _metric(plt, history: RunHistory, name: str):
    points = history.recorded.series[name]
    fig, ax = plt.subplots(figsize=(10, 3), dpi=100)
    xs = [i for i, _ in points]
    ys = [v for _, v in points]
    for _, index, _ in history.terms[1:]:  # each later term began after a recovery
        ax.axvline(index, color=MARK_COLOUR, linestyle="--", linewidth=0.8)
    ax.plot(xs, ys, color=LINE_COLOUR, linewidth=1.5, marker="." if len(xs) < 200 else None)
    snaps = [i for i, _, _ in history.snapshots if xs and xs[0] <= i <= xs[-1]]
    if snaps:
        ax.plot(snaps, [0] * len(snaps), linestyle="none", marker="|", markersize=10, color=MARK_COLOUR,
                transform=ax.get_xaxis_transform(), clip_on=False)
    ops = ", ".join(sorted(history.recorded.ops.get(name, ())))
    ax.set_title(f"{name} (op {ops}); dashed: a recovery began there; ticks: snapshots", fontsize=9)
    ax.set_xlabel("log index")
    ax.grid(True, alpha=0.3)
    fig.tight_layout()
    return fig


def _img(plt, fig, alt: str) -> str:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    plt.close(fig)
    data = base64.b64encode(buffer.getvalue()).decode("ascii")
    return f'<p><img alt="{html.escape(alt)}" src="data:image/png;base64,{data}"></p>'
