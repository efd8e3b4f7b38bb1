"""Row 12: a data.mdb cut short or structurally damaged is reported as damage.

Every probe of a damaged copy runs in its own forked child, so a SIGBUS or SIGSEGV is
observed as a failure instead of killing pytest. In each child: a readonly open,
entries(), verify(), entry(i) and term_at(i) at several indexes, then a writer open and
one append. Allowed outcomes are a result or one of the log's named errors
(DamagedLogError, CorruptEntryError, ...); never a signal, a hang, or a raw
lmdb/struct/other exception; verify() never raises.
"""

from __future__ import annotations

import os
import random
import shutil
import signal

import pytest

from eventlog import EventLog, LogError

from .checker import run_forked, send

pytestmark = [pytest.mark.crash, pytest.mark.fault_short_file]

FLIPS = 200  # bit flips, each in its own copy of data.mdb
PROBED = [1, 2, 40, 117, 118, 200, 299, 300]  # entry/term_at indexes (first is 118 after compaction)


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    """A real log: 3 terms, 300 entries (small ones and some spilling onto overflow pages),
    compacted through 117, so data.mdb has branch, leaf, overflow and free pages."""
    path = tmp_path_factory.mktemp("short") / "log"
    rng = random.Random(12)
    for term in range(3):
        with EventLog.open(path, durability="sync") as log:
            log.append_many([("step", {"n": log.last_index + k, "pad": rng.randbytes(rng.choice([8, 8, 8, 100, 9000]))})
                             for k in range(100)])
            if term == 1:
                log.compact_through(117)
    with EventLog.open(path, readonly=True) as log:
        entries = {e.index: (e.term, e.payload["n"]) for e in log.entries()}
        assert log.verify().ok
    return path, entries


def probe(path, out_fd):
    """In a child: every read path and a writer open; one frame per outcome."""

    def attempt(name, fn):
        try:
            send(out_fd, ["ok", name, fn()])
        except LogError as exc:
            send(out_fd, ["named", name, type(exc).__name__, str(exc)])
        except (IndexError, ValueError) as exc:  # documented for indexes out of range
            send(out_fd, ["named" if isinstance(exc, IndexError) else "raw", name, type(exc).__name__, str(exc)])
        except Exception as exc:  # noqa: BLE001 - exactly what this test hunts
            send(out_fd, ["raw", name, type(exc).__name__, str(exc)])

    def readonly():
        with EventLog.open(path, readonly=True) as log:
            attempt("entries", lambda: [[e.index, e.term, e.payload["n"]] for e in log.entries()])
            attempt("verify", lambda: _report(log.verify()))
            for i in PROBED:
                attempt(f"entry {i}", lambda i=i: [log.entry(i).index, log.entry(i).payload["n"]])
                attempt(f"term_at {i}", lambda i=i: log.term_at(i))
        return None

    def writer():
        with EventLog.open(path, durability="sync") as log:
            return log.append("after", {"n": -1})

    attempt("readonly", readonly)
    attempt("writer", writer)
    send(out_fd, ["done"])


def _report(report):
    return [report.ok, report.first_index, report.last_index, report.checked, [d.reason for d in report.damage]]


def check_probe(run, label, entries, *, intact=False):
    """Assert one child's outcomes; return the set of named errors seen."""
    assert not os.WIFSIGNALED(run.status), f"{label}: killed by {signal.Signals(os.WTERMSIG(run.status)).name}"
    assert run.done, f"{label}: the probe did not finish: {run.stderr_tail()}"
    raw = [m for m in run.messages if m[0] == "raw"]
    assert not raw, f"{label}: raw exceptions escaped: {raw}"
    outcomes = {m[1]: m for m in run.messages if m[0] in ("ok", "named")}
    verify = outcomes.get("verify")
    if verify is not None:
        assert verify[0] == "ok", f"{label}: verify() raised {verify}"
        ok, first, last, checked, _ = verify[2]
        listed = outcomes["entries"]
        if ok:  # "sound" must mean every listed entry is the original one
            assert listed[0] == "ok", f"{label}: verify says sound but entries() failed: {listed}"
            for index, term, n in listed[2]:
                assert entries.get(index) == (term, n), f"{label}: sound verdict on an altered entry {index}"
    if intact:  # nothing in use was touched: everything reads back
        assert outcomes["entries"][0] == "ok" and [tuple(e[1:]) for e in outcomes["entries"][2]] == list(entries.values())
        assert verify[2][0] is True
    return {m[2] for m in run.messages if m[0] == "named"}


def _structural_pages(path, page=4096):
    """Offsets of the pages LMDB itself interprets: every page but overflow (value) pages."""
    raw = open(path / "data.mdb", "rb").read()
    offsets, at = [], 0
    while at < len(raw):
        flags = int.from_bytes(raw[at + 10:at + 12], "little")
        if flags & 0x04:  # P_OVERFLOW: a run of mp_pages pages holding one value
            at += page * max(1, int.from_bytes(raw[at + 12:at + 16], "little"))
            continue
        offsets.append(at)
        at += page
    return offsets


def _used_bytes(path):
    from eventlog.lmdbfile import _TAIL, _PAGE_HEADER
    raw = open(path / "data.mdb", "rb").read(8192)
    page = int.from_bytes(raw[16 + 24:16 + 28], "little")
    metas = [_TAIL.unpack_from(raw, off + _PAGE_HEADER + 120) for off in (0, page)]
    last_page = max(metas, key=lambda m: m[1])[0]
    return (last_page + 1) * page


@pytest.mark.timeout(240)
def test_cut_short_data_file_is_damage_never_a_signal(tmp_path, source):
    """~100 cuts of a real data.mdb (every page boundary and points inside pages): a cut
    into used pages is DamagedLogError naming the file and both sizes in every probe; a cut
    that removes only unused pages reads back every entry and verifies sound."""
    path, entries = source
    size = os.path.getsize(path / "data.mdb")
    used = _used_bytes(path)
    rng = random.Random(9)
    cuts = sorted({1, 100, 4095, 4096, 4097, 8191, 8192, 8193, used - 1, used, size - 1}
                  | set(range(4096 * 3, size, 4096 * max(1, size // 4096 // 60)))
                  | {rng.randrange(8192, size) for _ in range(30)})
    damaged = intact = 0
    for cut in cuts:
        image = tmp_path / f"cut{cut}"
        shutil.copytree(path, image)
        os.truncate(image / "data.mdb", cut)
        run = run_forked(probe, image, timeout=60)
        named = check_probe(run, f"cut at {cut} of {size}", entries, intact=cut >= used)
        if cut < used:
            assert named == {"DamagedLogError"}, f"cut at {cut}: {named}"
            message = next(m[3] for m in run.messages if m[0] == "named")
            assert "data.mdb" in message and str(cut) in message, message
            damaged += 1
        else:
            intact += 1
        shutil.rmtree(image)
    print(f"row 12 cut short: {len(cuts)} cuts of a {size}-byte data.mdb ({used} used): "
          f"{damaged} reported as damage, {intact} read back intact")
    assert damaged > 50 and len(cuts) == damaged + intact


@pytest.mark.timeout(280)
def test_random_bit_flips_are_reported_never_raw_or_a_signal(tmp_path, source):
    """200 seeded single-bit flips in a real data.mdb, each in its own copy, each probed
    in its own child; half anywhere in the file (mostly payload bytes), half in LMDB's
    own pages (meta, branch, leaf, free-list: the page structure). Never a raw lmdb/struct exception, never a signal, verify() never
    raises, and a sound verdict only when every entry read is the original."""
    path, entries = source
    size = os.path.getsize(path / "data.mdb")
    rng = random.Random(10)
    structural = _structural_pages(path)
    shutil.copytree(path, tmp_path / "baseline")
    baseline = run_forked(probe, tmp_path / "baseline", timeout=60).messages
    counts = {"no visible effect": 0}
    for n in range(FLIPS):
        image = tmp_path / f"flip{n}"
        shutil.copytree(path, image)
        at = rng.randrange(size) if n % 2 else rng.choice(structural) + rng.randrange(4096)
        bit = rng.randrange(8)
        with open(image / "data.mdb", "r+b") as f:
            f.seek(at)
            byte = f.read(1)[0]
            f.seek(at)
            f.write(bytes([byte ^ (1 << bit)]))
        run = run_forked(probe, image, timeout=60)
        check_probe(run, f"flip {n} (byte {at}, bit {bit})", entries)
        changed = [m for m in run.messages if m not in baseline and m[0] != "done" and m[1] != "writer"]
        outcome = "no visible effect"
        if changed:
            verify = next((m for m in run.messages if m[0] == "ok" and m[1] == "verify"), None)
            named = sorted({m[2] for m in changed if m[0] == "named"})
            outcome = ("verify reports damage; " if verify and not verify[2][0] else "") + ",".join(named)
        counts[outcome] = counts.get(outcome, 0) + 1
        shutil.rmtree(image)
    print(f"row 12 bit flips: {FLIPS} flips in a {size}-byte data.mdb: {counts}")
    assert sum(counts.values()) == FLIPS and counts["no visible effect"] < FLIPS
