"""Benchmark the event log against its peers: ``python -m bench log [--quick] [--n N]``.

One run measures, for 256-byte and 64-KiB payloads (a dict with one bytes field):

- the physical limit: ``os.write`` + ``os.fdatasync`` of the same value on a plain file;
  it, raw lmdb, our sync append and SQLite one-row transactions run interleaved;
- raw py-lmdb: one ``put(append=True)`` + commit per value, ``sync=True, metasync=True``,
  values as large as our framed entries (so ours/raw is the cost of our framing);
- our ``sync`` append (and a tensor-payload variant: the codec's cost);
- our ``group`` append under three producer patterns:
  *burst* (one thread appends N as fast as it can, then ``flush()``: throughput),
  *paced* (one thread appends at half the burst rate, open loop: time to durable at a
  sustainable load), and *closed loop* (K threads each ``append`` + ``wait_durable``);
  plus the burst and paced patterns again with ``group_window=0``;
- SQLite WAL, ``synchronous=FULL``: one row per transaction, and rows batched per
  transaction at the batch size our burst group commit reached;
- scans of a log of 256-byte (and 64-KiB) entries: ``entries()`` (full decode),
  ``headers()`` and ``headers(verify=False)``, with a raw LMDB cursor walk beside them.

Time to durable of a group entry runs from the moment its ``append`` was called to the
moment the commit that covers it returned (when ``durable_index`` advanced). Commits
are counted by a subclass hook on the flusher's commit and cross-checked against
LMDB's transaction id; nothing in ``eventlog`` is modified.

The one-durable-write-per-call peers (ours sync, raw lmdb, plain file, SQLite one row)
run interleaved in rounds of 100 writes, in rotating order, so that drift of the disk or
load from other processes does not favour any of them. Results go to ``bench/results/log.json``
and to a table on stdout. This is a benchmark, not a test: nothing asserts time.
"""

from __future__ import annotations

import argparse
import cProfile
import inspect
import statistics
import os
import pstats
import sqlite3
import struct
import sys
import tempfile
import threading
import time
from pathlib import Path

import lmdb
import msgpack
import xxhash

from eventlog import HEADER_SIZE, EventLog, encode_payload
from eventlog.lmdbfile import last_txnid

from ._common import REPO, Workdir, finish, fmt, machine_info, ms, pct

RESULTS = Path(__file__).parent / "results" / "log.json"
KEY = struct.Struct(">Q")
OP = "put"
SIZES = (256, 64 * 1024)
SYNC_TARGET = 0.9  # ours_sync / raw_lmdb (issue 22)
GROUP_VS_SQLITE_TARGET = 1.0  # ours_group / sqlite at our batch size
GROUP_WINDOW_S = inspect.signature(EventLog.open).parameters["group_window"].default
# Paced entries wait for the window by design (it bounds time-to-durable); 10 ms covers the fsync.
TTD_P99_TARGET_MS = GROUP_WINDOW_S * 1e3 + 10.0
SCAN_TARGET = 200_000  # entries/s, full decode of 256-byte payloads

pc = time.perf_counter


# ---------------------------------------------------------------------- helpers


def lat_stats(seconds):
    return {
        "p50_us": round(pct(seconds, 50) * 1e6, 1),
        "p99_us": round(pct(seconds, 99) * 1e6, 1),
        "mean_us": round(sum(seconds) / len(seconds) * 1e6, 1),
    }


def make_payload(size, kind="bytes"):
    if kind == "tensor":
        import torch

        g = torch.Generator().manual_seed(size)
        return {"t": torch.randn(size // 4, generator=g)}  # float32: `size` bytes of data
    return {"data": os.urandom(size)}


def framed_value_size(payload):
    """Bytes our log stores for one entry of `payload` (header + op + msgpack)."""
    return HEADER_SIZE + len(OP) + len(encode_payload(payload))


class CountingLog:
    """A group-mode EventLog plus the record of every advance of durable_index: (first
    index, last index, done time), taken through the log's `on_commit` hook (since the
    one-sync commit, a commit makes the batch before it durable, and a trailing sync the
    last one: advances, not LMDB transactions; `lmdb_txns` counts those). Everything else
    is the log's own.
    """

    def __init__(self, path, **kwargs):
        self.bench_commits = []
        self._log = EventLog.open(path, durability="group", on_commit=self._committed, **kwargs)

    def _committed(self, indexes):
        self.bench_commits.append((indexes.start, indexes.stop - 1, pc()))

    def __getattr__(self, name):
        return getattr(self._log, name)


def _txnid(log):
    """LMDB's last committed transaction id, read from the file: a cross-check of the commit count."""
    return last_txnid(log.path)


# ---------------------------------------------------------------------- peers


class RawLmdb:
    """py-lmdb with our environment flags: one put(append=True) + commit per value."""

    def __init__(self, path, value_size):
        self.env = lmdb.open(
            str(path), subdir=True, max_dbs=2, map_size=256 * 2**20, sync=True, metasync=True,
            lock=True, readahead=False, meminit=False, max_spare_txns=2,
        )
        self.db = self.env.open_db(b"entries")
        self.value = os.urandom(value_size)
        self.index = 0

    def run(self, n, lat):
        env, db, value = self.env, self.db, self.value
        t0 = pc()
        for _ in range(n):
            t = pc()
            self.index += 1
            while True:
                try:
                    with env.begin(write=True, db=db) as txn:
                        txn.put(KEY.pack(self.index), value, append=True)
                    break
                except lmdb.MapFullError:
                    env.set_mapsize(env.info()["map_size"] * 2)
            lat.append(pc() - t)
        return pc() - t0


class OursSync:
    def __init__(self, path, payload):
        self.log = EventLog.open(path, durability="sync")
        self.payload = payload

    def run(self, n, lat):
        append, payload = self.log.append, self.payload
        t0 = pc()
        for _ in range(n):
            t = pc()
            append(OP, payload)
            lat.append(pc() - t)
        return pc() - t0


class PlainFile:
    """The physical limit: os.write + os.fdatasync of one value on an O_APPEND file."""

    def __init__(self, path, value_size):
        self.fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        self.value = os.urandom(value_size)

    def run(self, n, lat):
        fd, value = self.fd, self.value
        t0 = pc()
        for _ in range(n):
            t = pc()
            os.write(fd, value)
            os.fdatasync(fd)
            lat.append(pc() - t)
        return pc() - t0

    def close(self):
        os.close(self.fd)


class SqliteOneRow:
    """SQLite WAL, synchronous=FULL, one row per transaction (autocommit INSERT)."""

    def __init__(self, path, value_size):
        path.mkdir()
        self.con = sqlite3.connect(path / "log.sqlite", isolation_level=None)
        self.con.execute("PRAGMA journal_mode=WAL")
        self.con.execute("PRAGMA synchronous=FULL")
        self.con.execute("CREATE TABLE log (id INTEGER PRIMARY KEY, v BLOB NOT NULL)")
        self.value = os.urandom(value_size)
        self.index = 0

    def run(self, n, lat):
        execute, value = self.con.execute, self.value
        t0 = pc()
        for _ in range(n):
            t = pc()
            self.index += 1
            execute("INSERT INTO log (id, v) VALUES (?, ?)", (self.index, value))
            lat.append(pc() - t)
        return pc() - t0

    def close(self):
        self.con.close()


def bench_one_durable_write(work, size, n, rounds):
    """One durable write per call, four peers interleaved in `rounds` rounds.

    ours sync append, raw lmdb put+commit, plain write+fdatasync and SQLite one row per
    transaction each do n writes; each round runs every peer for n/rounds writes, in an
    order rotated per round, so disk or CPU contention from other processes hits every
    peer alike and the ratios stay meaningful on a shared machine.
    """
    payload = make_payload(size)
    vsize = framed_value_size(payload)
    paths = {name: work.new(name) for name in ("ours-sync", "raw-lmdb", "plain-file", "sqlite-1")}
    peers = {}
    try:
        peers["ours_sync"] = OursSync(paths["ours-sync"], payload)
        peers["raw_lmdb"] = RawLmdb(paths["raw-lmdb"], vsize)
        peers["physical"] = PlainFile(paths["plain-file"], vsize)
        peers["sqlite_1"] = SqliteOneRow(paths["sqlite-1"], vsize)
        names = list(peers)
        lat = {name: [] for name in names}
        spent = dict.fromkeys(names, 0.0)
        for name in names:
            peers[name].run(min(50, n), [])  # warm-up
        chunk = max(1, n // rounds)
        for r in range(rounds):
            k = chunk if r < rounds - 1 else n - chunk * (rounds - 1)
            order = names[r % len(names):] + names[:r % len(names)]
            for name in order:
                spent[name] += peers[name].run(k, lat[name])
    finally:
        for name, peer in peers.items():
            peer.log.close() if name == "ours_sync" else (peer.env.close() if name == "raw_lmdb" else peer.close())
        for path in paths.values():
            work.drop(path)
    out = {name: {"n": n, "per_s": round(n / spent[name], 1), **lat_stats(lat[name])} for name in names}
    return vsize, out


def bench_sync_tensor(work, size, n):
    payload = make_payload(size, "tensor")
    path = work.new("ours-sync-tensor")
    ours = OursSync(path, payload)
    lat = []
    try:
        ours.run(min(50, n), [])
        elapsed = ours.run(n, lat)
    finally:
        ours.log.close()
        work.drop(path)
    return {"n": n, "per_s": round(n / elapsed, 1), **lat_stats(lat)}


# ---------------------------------------------------------------------- group commit


def _group_summary(log, starts, elapsed, txn0, first_index):
    """Throughput, batch sizes and time-to-durable from the commit hook's records."""
    commits = [c for c in log.bench_commits if c[1] >= first_index]
    n = len(starts)
    ttd = []
    ci = 0
    for k, t_start in enumerate(starts):
        index = first_index + k
        while commits[ci][1] < index:
            ci += 1
        ttd.append(commits[ci][2] - t_start)
    sizes = [c[1] - max(c[0], first_index) + 1 for c in commits]
    txn1 = _txnid(log)
    txns = None if txn1 is None or txn0 is None else txn1 - txn0
    return {
        "n": n,
        "per_s": round(n / elapsed, 1),
        "commits": len(commits),
        "lmdb_txns": txns,
        "avg_batch": round(n / len(commits), 2),
        "max_batch": max(sizes),
        "ttd_p50_ms": ms(pct(ttd, 50)),
        "ttd_p99_ms": ms(pct(ttd, 99)),
        "ttd_max_ms": ms(max(ttd)),
    }


def median_run(fn, repeat):
    """Run `fn` `repeat` times; the run with the median throughput, with all throughputs."""
    runs = sorted((fn() for _ in range(max(1, repeat))), key=lambda r: r["per_s"])
    out = dict(runs[len(runs) // 2])
    out["runs_per_s"] = [r["per_s"] for r in runs]
    return out


def _open_group(path, window):
    kwargs = {} if window is None else {"group_window": window}
    return CountingLog(path, **kwargs)


def bench_group_burst(work, size, n, window=None):
    payload = make_payload(size)
    path = work.new("ours-group-burst")
    log = _open_group(path, window)
    try:
        for _ in range(min(50, n)):
            log.append(OP, payload)
        log.flush()
        first, txn0 = log.last_index + 1, _txnid(log)
        starts = [0.0] * n
        append = log.append
        t0 = pc()
        for k in range(n):
            starts[k] = pc()
            append(OP, payload)
        t_appended = pc()
        log.flush()
        elapsed = pc() - t0
        out = _group_summary(log, starts, elapsed, txn0, first)
        out["append_only_per_s"] = round(n / (t_appended - t0), 1)
    finally:
        log.close()
        work.drop(path)
    return out


def bench_group_paced(work, size, n, rate, window=None):
    """One producer appending open-loop at `rate` per second (sleeping between appends)."""
    payload = make_payload(size)
    path = work.new("ours-group-paced")
    log = _open_group(path, window)
    try:
        for _ in range(min(50, n)):
            log.append(OP, payload)
        log.flush()
        first, txn0 = log.last_index + 1, _txnid(log)
        starts = [0.0] * n
        dt = 1.0 / rate
        append = log.append
        t0 = pc()
        for k in range(n):
            wait = t0 + k * dt - pc()
            if wait > 0:
                time.sleep(wait)
            starts[k] = pc()
            append(OP, payload)
        log.flush()
        elapsed = pc() - t0
        out = _group_summary(log, starts, elapsed, txn0, first)
        out["offered_per_s"] = round(rate, 1)
    finally:
        log.close()
        work.drop(path)
    return out


def bench_group_closed(work, size, n_total, threads, window=None):
    """`threads` producers, each looping append + wait_durable (client-observed latency)."""
    payload = make_payload(size)
    path = work.new(f"ours-group-closed{threads}")
    log = _open_group(path, window)
    per = max(1, n_total // threads)
    lats = [[] for _ in range(threads)]
    barrier = threading.Barrier(threads + 1)

    def producer(lat):
        append, wait = log.append, log.wait_durable
        barrier.wait()
        for _ in range(per):
            t = pc()
            wait(append(OP, payload))
            lat.append(pc() - t)

    try:
        log.flush()
        first, txn0 = log.last_index + 1, _txnid(log)
        ts = [threading.Thread(target=producer, args=(lats[i],)) for i in range(threads)]
        for t in ts:
            t.start()
        barrier.wait()
        t0 = pc()
        for t in ts:
            t.join()
        elapsed = pc() - t0
        n = per * threads
        commits = [c for c in log.bench_commits if c[1] >= first]
        all_lat = [x for lat in lats for x in lat]
        out = {
            "threads": threads,
            "n": n,
            "per_s": round(n / elapsed, 1),
            "commits": len(commits),
            "lmdb_txns": None if txn0 is None else _txnid(log) - txn0,
            "avg_batch": round(n / len(commits), 2),
            "ttd_p50_ms": ms(pct(all_lat, 50)),
            "ttd_p99_ms": ms(pct(all_lat, 99)),
            "ttd_max_ms": ms(max(all_lat)),
        }
    finally:
        log.close()
        work.drop(path)
    return out


# ---------------------------------------------------------------------- SQLite


def bench_sqlite(work, value_size, n, batch, rowwise=False):
    """SQLite WAL, synchronous=FULL; `batch` rows per transaction (1 = one per commit).

    rowwise=False inserts a batch with one executemany (SQLite's best case);
    rowwise=True calls execute once per row, as an application appending entries one at
    a time inside a transaction would.
    """
    path = work.new(f"sqlite-b{batch}")
    path.mkdir()
    db = path / "log.sqlite"
    con = sqlite3.connect(db, isolation_level=None)
    value = os.urandom(value_size)
    try:
        con.execute("PRAGMA journal_mode=WAL")
        con.execute("PRAGMA synchronous=FULL")
        con.execute("CREATE TABLE log (id INTEGER PRIMARY KEY, v BLOB NOT NULL)")
        i = 0

        def commit_rows(k):
            nonlocal i
            rows = [(i + j + 1, value) for j in range(k)]
            i += k
            con.execute("BEGIN")
            if rowwise:
                for row in rows:
                    con.execute("INSERT INTO log (id, v) VALUES (?, ?)", row)
            else:
                con.executemany("INSERT INTO log (id, v) VALUES (?, ?)", rows)
            con.execute("COMMIT")

        for _ in range(max(1, 50 // batch)):
            commit_rows(batch)
        txns = max(1, n // batch)
        lat = []
        t0 = pc()
        for _ in range(txns):
            t = pc()
            commit_rows(batch)
            lat.append(pc() - t)
        elapsed = pc() - t0
        mode = con.execute("PRAGMA journal_mode").fetchone()[0]
        sync = con.execute("PRAGMA synchronous").fetchone()[0]
    finally:
        con.close()
        work.drop(path)
    rows = txns * batch
    return {
        "batch": batch, "rowwise": rowwise, "rows": rows, "per_s": round(rows / elapsed, 1),
        "commits_per_s": round(txns / elapsed, 1), "journal_mode": mode, "synchronous": sync,
        "commit_" + "p50_us": lat_stats(lat)["p50_us"], "commit_p99_us": lat_stats(lat)["p99_us"],
    }


# ---------------------------------------------------------------------- scans


def bench_scan(work, size, n, kind="bytes", passes=3):
    payload = make_payload(size, kind)
    path = work.new(f"scan-{kind}")
    out = {"n": n, "payload": kind}
    try:
        with EventLog.open(path, durability="os") as log:
            chunk = 1000 if size <= 4096 else 50
            left = n
            while left:
                k = min(chunk, left)
                log.append_many([(OP, payload)] * k)
                left -= k
            log.flush()
        with EventLog.open(path, readonly=True) as log:
            for name, scan in (
                ("entries", lambda: log.entries()),
                ("headers", lambda: log.headers()),
                ("headers_noverify", lambda: log.headers(verify=False)),
            ):
                best = None
                for _ in range(passes):
                    t0 = pc()
                    count = 0
                    for _e in scan():
                        count += 1
                    el = pc() - t0
                    assert count == n, (name, count, n)
                    best = el if best is None else min(best, el)
                out[name + "_per_s"] = round(n / best, 1)
                out[name + "_MBps"] = round(n * size / best / 2**20, 1)
        # Reference: the same walk with py-lmdb alone, and that walk plus the same
        # xxh3 + msgpack work per entry (what our framing checks cost at minimum).
        env = lmdb.open(str(path), subdir=True, max_dbs=2, readonly=True, lock=False)
        db = env.open_db(b"entries", create=False)
        best_raw = best_min = None
        for _ in range(passes):
            t0 = pc()
            with env.begin(buffers=True) as txn:
                for _k, v in txn.cursor(db=db):
                    bytes(v)
            el = pc() - t0
            best_raw = el if best_raw is None else min(best_raw, el)
            if kind == "bytes":
                t0 = pc()
                with env.begin() as txn:
                    seed = 0
                    for k, v in txn.cursor(db=db):
                        # the checksum covers the value without its checksum field (bytes 24..32)
                        seed = xxhash.xxh3_64_intdigest(k + v[:24] + v[HEADER_SIZE:], seed)
                        msgpack.unpackb(v[HEADER_SIZE + len(OP):], raw=False)
                el = pc() - t0
                best_min = el if best_min is None else min(best_min, el)
        env.close()
        out["raw_cursor_per_s"] = round(n / best_raw, 1)
        if best_min is not None:
            out["raw_hash_decode_per_s"] = round(n / best_min, 1)
    finally:
        work.drop(path)
    return out


# ---------------------------------------------------------------------- profiling


def profile_sync(work, size, n):
    """cProfile of our sync append: where the time over raw lmdb goes."""
    payload = make_payload(size)
    path = work.new("profile-sync")
    log = EventLog.open(path, durability="sync")
    prof = cProfile.Profile()
    try:
        for _ in range(50):
            log.append(OP, payload)
        prof.enable()
        for _ in range(n):
            log.append(OP, payload)
        prof.disable()
    finally:
        log.close()
        work.drop(path)
    stats = pstats.Stats(prof)
    total = stats.total_tt
    rows = []
    for (file, line, func), (cc, nc, tt, ct, _callers) in stats.stats.items():
        rows.append({
            "function": f"{Path(file).name}:{line}({func})",
            "calls_per_append": round(nc / n, 2),
            "self_us_per_append": round(tt / n * 1e6, 2),
            "cum_us_per_append": round(ct / n * 1e6, 2),
        })
    rows.sort(key=lambda r: -r["self_us_per_append"])
    return {"n": n, "total_us_per_append": round(total / n * 1e6, 1), "top_self": rows[:15]}


# ---------------------------------------------------------------------- machine


# ---------------------------------------------------------------------- report


def evaluate(results):
    """The issue's targets as (name, value, target, ratio, met) rows."""
    rows = []
    for key, r in results["sizes"].items():
        label = r["label"]
        sync_ratio = r["ours_sync"]["per_s"] / r["raw_lmdb"]["per_s"]
        rows.append((f"sync append / raw lmdb ({label})", round(sync_ratio, 3), f">= {SYNC_TARGET}",
                     round(sync_ratio / SYNC_TARGET, 3), sync_ratio >= SYNC_TARGET))
        g = r["group_burst"]["per_s"] / r["sqlite_batched"]["per_s"]
        rows.append((f"group burst / SQLite WAL FULL @ batch {r['sqlite_batched']['batch']} ({label})",
                     round(g, 3), f">= {GROUP_VS_SQLITE_TARGET}", round(g / GROUP_VS_SQLITE_TARGET, 3),
                     g >= GROUP_VS_SQLITE_TARGET))
        for pattern in ("group_paced", "group_burst"):
            p99 = r[pattern]["ttd_p99_ms"]
            what = "paced at half the burst rate" if pattern == "group_paced" else "open-loop burst, overload"
            rows.append((f"group p99 time-to-durable ms, {what} ({label})", p99, f"< {TTD_P99_TARGET_MS}",
                         round(TTD_P99_TARGET_MS / p99, 3) if p99 else None, p99 < TTD_P99_TARGET_MS))
        for c in r["group_closed"]:
            p99 = c["ttd_p99_ms"]
            rows.append((f"group closed-loop x{c['threads']} p99 append->wait_durable ms ({label})", p99,
                         f"< {TTD_P99_TARGET_MS}", round(TTD_P99_TARGET_MS / p99, 3) if p99 else None,
                         p99 < TTD_P99_TARGET_MS))
        scan = r.get("scan")
        if scan and key == "256":
            v = scan["entries_per_s"]
            rows.append((f"entries() full-decode scan/s ({label})", v, f">= {SCAN_TARGET}",
                         round(v / SCAN_TARGET, 3), v >= SCAN_TARGET))
    return [{"name": n, "value": v, "target": t, "ratio_to_target": q, "met": m} for n, v, t, q, m in rows]


def table_rows(results):
    sizes = list(results["sizes"].values())
    header = ["measurement"] + [s["label"] for s in sizes]

    def row(name, getter):
        vals = []
        for s in sizes:
            try:
                vals.append(fmt(getter(s)))
            except (KeyError, TypeError, IndexError, ZeroDivisionError):
                vals.append("-")
        return [name] + vals

    rows = [
        row("framed value bytes", lambda s: s["value_bytes"]),
        row("plain file write+fdatasync /s", lambda s: s["physical"]["per_s"]),
        row("  p50 / p99 us", lambda s: f"{s['physical']['p50_us']:.0f} / {s['physical']['p99_us']:.0f}"),
        row("raw lmdb put+commit /s", lambda s: s["raw_lmdb"]["per_s"]),
        row("  p50 / p99 us", lambda s: f"{s['raw_lmdb']['p50_us']:.0f} / {s['raw_lmdb']['p99_us']:.0f}"),
        row("ours sync append /s", lambda s: s["ours_sync"]["per_s"]),
        row("  p50 / p99 us", lambda s: f"{s['ours_sync']['p50_us']:.0f} / {s['ours_sync']['p99_us']:.0f}"),
        row(f"  ours sync / raw lmdb (>= {SYNC_TARGET})", lambda s: round(s["ours_sync"]["per_s"] / s["raw_lmdb"]["per_s"], 3)),
        row("  p50 ratio raw/ours (outlier-robust)", lambda s: round(s["raw_lmdb"]["p50_us"] / s["ours_sync"]["p50_us"], 3)),
        row("  ours sync / plain file", lambda s: round(s["ours_sync"]["per_s"] / s["physical"]["per_s"], 3)),
        row("ours sync append, tensor payload /s", lambda s: s["ours_sync_tensor"]["per_s"]),
        row("ours group burst /s (append N, flush)", lambda s: s["group_burst"]["per_s"]),
        row("  append-only rate /s (producer side)", lambda s: s["group_burst"]["append_only_per_s"]),
        row("  avg / max batch", lambda s: f"{s['group_burst']['avg_batch']:.1f} / {s['group_burst']['max_batch']}"),
        row("  time-to-durable p50 / p99 ms", lambda s: f"{s['group_burst']['ttd_p50_ms']:.2f} / {s['group_burst']['ttd_p99_ms']:.2f}"),
        row("ours group paced /s (offered)", lambda s: f"{s['group_paced']['per_s']:,.0f} ({s['group_paced']['offered_per_s']:,.0f})"),
        row("  avg batch", lambda s: s["group_paced"]["avg_batch"]),
        row("  time-to-durable p50 / p99 ms", lambda s: f"{s['group_paced']['ttd_p50_ms']:.2f} / {s['group_paced']['ttd_p99_ms']:.2f}"),
    ]
    nclosed = max(len(s.get("group_closed", [])) for s in sizes)
    for k in range(nclosed):
        th = sizes[0]["group_closed"][k]["threads"]
        rows += [
            row(f"ours group closed-loop x{th} /s", lambda s, k=k: s["group_closed"][k]["per_s"]),
            row("  avg batch", lambda s, k=k: s["group_closed"][k]["avg_batch"]),
            row("  append->wait_durable p50 / p99 ms",
                lambda s, k=k: f"{s['group_closed'][k]['ttd_p50_ms']:.2f} / {s['group_closed'][k]['ttd_p99_ms']:.2f}"),
            row("  with group_window=0: /s; batch; p99 ms",
                lambda s, k=k: (f"{s['group_closed'][k]['window0']['per_s']:,.0f}; {s['group_closed'][k]['window0']['avg_batch']:.1f}; "
                                f"{s['group_closed'][k]['window0']['ttd_p99_ms']:.2f}")),
            row("  SQLite WAL FULL @ that batch, 1 thread /s",
                lambda s, k=k: f"{s['group_closed'][k]['sqlite_at_batch']['per_s']:,.0f} (b={s['group_closed'][k]['sqlite_at_batch']['batch']})"),
        ]
    rows += [
        row("ours group window=0 burst /s", lambda s: s["group_w0_burst"]["per_s"]),
        row("  avg batch; ttd p99 ms", lambda s: f"{s['group_w0_burst']['avg_batch']:.1f}; {s['group_w0_burst']['ttd_p99_ms']:.2f}"),
        row("ours group window=0 paced ttd p50 / p99 ms",
            lambda s: f"{s['group_w0_paced']['ttd_p50_ms']:.2f} / {s['group_w0_paced']['ttd_p99_ms']:.2f}"),
        row("SQLite WAL FULL, 1 row/txn /s", lambda s: s["sqlite_1"]["per_s"]),
        row("  p50 / p99 us", lambda s: f"{s['sqlite_1']['p50_us']:.0f} / {s['sqlite_1']['p99_us']:.0f}"),
        row("SQLite WAL FULL @ our batch /s", lambda s: f"{s['sqlite_batched']['per_s']:,.0f} (b={s['sqlite_batched']['batch']})"),
        row("SQLite @ our batch, execute per row /s", lambda s: s["sqlite_batched_rowwise"]["per_s"]),
        row("  ours group burst / SQLite @ batch (>= 1)",
            lambda s: round(s["group_burst"]["per_s"] / s["sqlite_batched"]["per_s"], 3)),
        row("  ours sync / SQLite 1 row", lambda s: round(s["ours_sync"]["per_s"] / s["sqlite_1"]["per_s"], 3)),
        row("scan entries() /s (>= 200k @256B)", lambda s: s["scan"]["entries_per_s"]),
        row("scan headers() /s", lambda s: s["scan"]["headers_per_s"]),
        row("scan headers(verify=False) /s", lambda s: s["scan"]["headers_noverify_per_s"]),
        row("scan raw lmdb cursor /s", lambda s: s["scan"]["raw_cursor_per_s"]),
        row("scan raw cursor+xxh3+msgpack /s", lambda s: s["scan"].get("raw_hash_decode_per_s")),
        row("scan entries(), tensor payload /s", lambda s: s["scan_tensor"]["entries_per_s"]),
    ]
    return header, rows


def print_report(results):
    header, rows = table_rows(results)
    targets = results["targets"]
    if sys.stdout.isatty():
        from rich.console import Console
        from rich.table import Table

        console = Console()
        t = Table(title="eventlog benchmark (one run)")
        for h in header:
            t.add_column(h, justify="left" if h == "measurement" else "right")
        for r in rows:
            t.add_row(*r)
        console.print(t)
        tt = Table(title="targets")
        for h in ("target", "value", "wanted", "value/target", "met"):
            tt.add_column(h)
        for x in targets:
            tt.add_row(x["name"], fmt(x["value"]), x["target"], fmt(x["ratio_to_target"]),
                       "[green]yes[/]" if x["met"] else "[red]NO[/]")
        console.print(tt)
    else:
        widths = [max(len(r[i]) for r in [header] + rows) for i in range(len(header))]
        line = lambda r: "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths)))
        print(line(header))
        print("  ".join("-" * w for w in widths))
        for r in rows:
            print(line(r))
        print()
        nw = max(len(x["name"]) for x in targets)
        print(f"{'target'.ljust(nw)}  {'value':>10}  {'wanted':>8}  {'v/target':>8}  met")
        for x in targets:
            print(f"{x['name'].ljust(nw)}  {fmt(x['value']):>10}  {x['target']:>8}  {fmt(x['ratio_to_target']):>8}  "
                  f"{'yes' if x['met'] else 'NO'}")
    m = results["machine"]
    print(f"\nload average at start/end: {m['loadavg_at_start'][0]} / {m.get('loadavg_at_end', ['?'])[0]} "
          "(other processes on this machine share its 2 cores and its disk)")
    print(f"{m['cpu_count']} CPUs ({m['cpu_model']}), Python {m['python']}, {m['lmdb']}, SQLite {m['sqlite']}, "
          f"{m['filesystem']}, {m['date']}")


# ---------------------------------------------------------------------- main


def default_dir():
    """A temp dir on the same filesystem as the repository (falls back to the repo)."""
    tmp = Path(tempfile.gettempdir())
    try:
        if os.stat(tmp).st_dev == os.stat(REPO).st_dev:
            return tmp
    except OSError:
        pass
    d = REPO / ".bench-tmp"
    d.mkdir(exist_ok=True)
    return d


# ---------------------------------------------------------------------- issue 22: the commit rows


def _spread(ratios):
    q = statistics.quantiles(ratios, n=4) if len(ratios) > 1 else [ratios[0]] * 3
    return {"median": round(statistics.median(ratios), 3), "q1": round(q[0], 3), "q3": round(q[2], 3),
            "min": round(min(ratios), 3), "max": round(max(ratios), 3), "rounds": len(ratios),
            "per_round": [round(r, 3) for r in ratios]}


def commit_rows(work, size, sync_n, sync_rounds, burst_n, burst_rounds):
    """The three commit figures of issue 22, each a median of per-round ratios:

    - sync append / raw py-lmdb put+commit (sync=True, metasync=True both): rounds of
      sync_n writes, the two peers alternating which goes first;
    - group burst (burst_n appends, then flush) / SQLite WAL FULL executemany at the
      batch that burst reached (same rows), per round;
    - the same burst's commits and fdatasyncs per commit are recorded (one sync each).
    """
    payload = make_payload(size)
    vsize = framed_value_size(payload)
    out = {"payload_bytes": size, "value_bytes": vsize}
    paths = [work.new("c-ours-sync"), work.new("c-raw")]
    ours, raw = OursSync(paths[0], payload), RawLmdb(paths[1], vsize)
    ratios, load = [], []
    try:
        ours.run(50, []), raw.run(50, [])
        for r in range(sync_rounds):
            load.append(round(os.getloadavg()[0], 2))
            if r % 2:
                a, b = ours.run(sync_n, []), raw.run(sync_n, [])
            else:
                b, a = raw.run(sync_n, []), ours.run(sync_n, [])
            ratios.append(b / a)  # throughput ours / raw
    finally:
        ours.log.close()
        raw.env.close()
        for path in paths:
            work.drop(path)
    out["sync_vs_raw_lmdb"] = {**_spread(ratios), "writes_per_round": sync_n, "loadavg_1min": load}
    ratios, load, bursts, sqls = [], [], [], []
    for r in range(burst_rounds):
        load.append(round(os.getloadavg()[0], 2))
        burst = bench_group_burst(work, size, burst_n)
        batch = max(1, round(burst["avg_batch"]))
        sql = bench_sqlite(work, vsize, max(burst_n, batch * 20), batch)
        bursts.append(burst)
        sqls.append(sql)
        ratios.append(burst["per_s"] / sql["per_s"])
    out["group_burst_vs_sqlite"] = {
        **_spread(ratios), "appends_per_round": burst_n, "loadavg_1min": load,
        "ours_per_s": [b["per_s"] for b in bursts], "sqlite_per_s": [q["per_s"] for q in sqls],
        "avg_batch": [b["avg_batch"] for b in bursts], "commits": [b["commits"] for b in bursts],
        "lmdb_txns": [b["lmdb_txns"] for b in bursts]}
    return out


def paced_cpu(work, steps, gap, rounds):
    """A training loop's view of group commit: one append every `gap` seconds (a sleep stands
    in for the compute step), against the same loop without the log. Per round and arm: the
    process's CPU time per step (every thread: the flusher's commits and fsyncs included;
    the figure a loaded machine disturbs least) and the LMDB transactions it took."""
    payload = {"seed": 0, "lr": 0.1}
    cpu = {"bare": [], "group": []}
    txns = []
    for r in range(rounds):
        for arm in (("bare", "group") if r % 2 == 0 else ("group", "bare")):
            path = work.new(f"paced-{arm}")
            log = EventLog.open(path, durability="group")
            try:
                log.append(OP, payload)
                log.flush()
                t0 = last_txnid(path)
                c = time.process_time()
                for k in range(steps):
                    if arm == "group":
                        log.append(OP, payload)
                    time.sleep(gap)
                while log.durable_index < log.last_index:  # idle until the window made them durable
                    time.sleep(0.005)
                cpu[arm].append((time.process_time() - c) / steps * 1e6)
                if arm == "group":
                    txns.append(last_txnid(path) - t0)
            finally:
                log.close()
                work.drop(path)
    extra = [g - b for g, b in zip(cpu["group"], cpu["bare"])]
    return {"steps": steps, "gap_ms": gap * 1e3, "rounds": rounds,
            "bare_cpu_us_per_step": round(statistics.median(cpu["bare"]), 1),
            "group_cpu_us_per_step": round(statistics.median(cpu["group"]), 1),
            "group_extra_cpu_us_per_step": _spread(extra), "lmdb_txns_per_round": txns}


def main_commit(argv) -> int:
    """``python -m bench log --commit``: only the issue-22 commit rows (bench/results/log_commit.json)."""
    p = argparse.ArgumentParser(prog="python -m bench log --commit")
    p.add_argument("--commit", action="store_true")
    p.add_argument("--sizes", default="256")
    p.add_argument("--sync-n", type=int, default=100, help="writes per peer per round")
    p.add_argument("--sync-rounds", type=int, default=20)
    p.add_argument("--burst-n", type=int, default=30000)
    p.add_argument("--burst-rounds", type=int, default=5)
    p.add_argument("--paced-steps", type=int, default=300, help="appends per paced round (0: skip)")
    p.add_argument("--paced-rounds", type=int, default=4)
    p.add_argument("--dir", type=Path, default=None)
    p.add_argument("--json", type=Path, default=RESULTS.with_name("log_commit.json"))
    args = p.parse_args(argv)
    work = Workdir(args.dir or default_dir(), "bench-log-commit-")
    results = {"benchmark": "log --commit",
               "machine": machine_info(work.root, ("eventlog",), lmdb=f"py-lmdb {lmdb.__version__}",
                                       sqlite=sqlite3.sqlite_version),
               "config": {"group_window_s": GROUP_WINDOW_S, "sync_flags": "sync=True, metasync=True (both peers)"},
               "sizes": {}}
    t_start = pc()
    try:
        for size in (int(x) for x in args.sizes.split(",") if args.sync_rounds and args.burst_rounds):
            r = commit_rows(work, size, args.sync_n, args.sync_rounds, args.burst_n, args.burst_rounds)
            results["sizes"][str(size)] = r
            s, g = r["sync_vs_raw_lmdb"], r["group_burst_vs_sqlite"]
            print(f"[{size} B] sync append / raw lmdb: median {s['median']} (q1 {s['q1']}, q3 {s['q3']}, "
                  f"{s['rounds']} rounds; target >= {SYNC_TARGET}; load {s['loadavg_1min']})")
            print(f"[{size} B] group burst / SQLite WAL FULL @ batch: median {g['median']} (q1 {g['q1']}, q3 {g['q3']}, "
                  f"{g['rounds']} rounds; ours {g['ours_per_s']}/s, sqlite {g['sqlite_per_s']}/s, batches "
                  f"{g['avg_batch']}; load {g['loadavg_1min']})")
        if args.paced_steps:
            paced = results["paced_5ms"] = paced_cpu(work, args.paced_steps, 0.005, args.paced_rounds)
            e = paced["group_extra_cpu_us_per_step"]
            print(f"paced 5 ms: group append costs {e['median']} us CPU per step over the bare loop (q1 {e['q1']}, "
                  f"q3 {e['q3']}; bare {paced['bare_cpu_us_per_step']} us); LMDB txns per {args.paced_steps} steps: "
                  f"{paced['lmdb_txns_per_round']}; load {os.getloadavg()[0]:.2f}")
    finally:
        work.close()
    finish(results, args.json, t_start, pc())
    return 0


def parse_args(argv):
    p = argparse.ArgumentParser(prog="python -m bench log", description=__doc__.split("\n\n")[0])
    p.add_argument("--n", type=int, default=6000, help="durable writes per peer for 256-byte payloads (64 KiB: n/2)")
    p.add_argument("--group-n", type=int, default=30000, help="group burst appends for 256 B (64 KiB: n/10)")
    p.add_argument("--scan-n", type=int, default=100000, help="entries in the 256-byte scan log (64 KiB: n/100)")
    p.add_argument("--threads", default="1,4,16", help="closed-loop group producer thread counts, comma-separated")
    p.add_argument("--repeat", type=int, default=3, help="group burst runs per size (the median is reported)")
    p.add_argument("--rounds", type=int, default=0,
                   help="interleaved rounds of ours/raw lmdb sync appends (default: rounds of 100 appends each)")
    p.add_argument("--sizes", default=",".join(map(str, SIZES)), help="payload sizes in bytes")
    p.add_argument("--quick", action="store_true", help="about 10x fewer operations (smoke run)")
    p.add_argument("--no-profile", action="store_true", help="skip the cProfile of the sync append path")
    p.add_argument("--dir", type=Path, default=None, help="where temp logs go (same filesystem as the repo by default)")
    p.add_argument("--json", type=Path, default=RESULTS, help="results file (default bench/results/log.json)")
    return p.parse_args(argv)


def main(argv) -> int:
    if "--commit" in argv:
        return main_commit(argv)
    args = parse_args(argv)
    if args.quick:
        args.n, args.group_n, args.scan_n = max(200, args.n // 10), max(2000, args.group_n // 10), max(10000, args.scan_n // 10)
    root = args.dir or default_dir()
    sizes = [int(s) for s in args.sizes.split(",") if s]
    threads = [int(t) for t in args.threads.split(",") if t]
    work = Workdir(root, "bench-log-")
    say = (lambda *a: print(*a, file=sys.stderr, flush=True))
    results = {
        "benchmark": "log",
        "machine": machine_info(
            work.root, ("eventlog",), lmdb=f"py-lmdb {lmdb.__version__}, liblmdb {'.'.join(map(str, lmdb.version()))}",
            sqlite=sqlite3.sqlite_version, msgpack=".".join(map(str, msgpack.version)), xxhash=xxhash.VERSION),
        "config": {
            "n_sync": args.n, "n_group": args.group_n, "n_scan": args.scan_n, "threads": threads,
            "rounds": args.rounds or "n/100", "quick": args.quick, "op": OP,
            "payload": "{'data': <random bytes of the size>} (tensor variant: {'t': float32 tensor of the size})",
            "group_window_s": GROUP_WINDOW_S, "group_max_batch": 8192,
        },
        "sizes": {},
    }
    t_start = pc()
    try:
        for size in sizes:
            big = size > 4096
            label = f"{size // 1024} KiB" if size >= 1024 else f"{size} B"
            n = args.n // 2 if big else args.n
            gn = max(200, args.group_n // 10) if big else args.group_n
            r = {"label": label, "payload_bytes": size}
            rounds = args.rounds or max(1, n // 100)
            say(f"[{label}] one durable write per call: ours sync, raw lmdb, plain file, SQLite 1 row/txn "
                f"({n} each, {rounds} interleaved rounds)")
            r["value_bytes"], peers = bench_one_durable_write(work, size, n, rounds)
            r.update(peers)
            say(f"[{label}] sync, tensor payload")
            r["ours_sync_tensor"] = bench_sync_tensor(work, size, max(100, n // 4))
            say(f"[{label}] group burst ({gn}, median of {args.repeat})")
            r["group_burst"] = median_run(lambda: bench_group_burst(work, size, gn), args.repeat)
            rate = 0.5 * r["group_burst"]["per_s"]
            paced_n = max(200, min(gn // 2, int(rate * 3)))  # at most ~3 s
            say(f"[{label}] group paced at {rate:,.0f}/s ({paced_n})")
            r["group_paced"] = bench_group_paced(work, size, paced_n, rate)
            r["group_closed"] = []
            for th in threads:
                cn = max(th * 20, min(gn // 4, n * th // 2, 1000 * th))
                say(f"[{label}] group closed loop x{th} ({cn}), default window and window=0")
                c = bench_group_closed(work, size, cn, th)
                c["window0"] = bench_group_closed(work, size, cn, th, window=0.0)
                r["group_closed"].append(c)
            say(f"[{label}] group window=0 burst and paced")
            r["group_w0_burst"] = median_run(lambda: bench_group_burst(work, size, gn, window=0.0), args.repeat)
            r["group_w0_paced"] = bench_group_paced(work, size, paced_n, rate, window=0.0)
            batch = max(1, round(r["group_burst"]["avg_batch"]))
            say(f"[{label}] SQLite WAL FULL: {batch} rows/txn")
            r["sqlite_batched"] = bench_sqlite(work, r["value_bytes"], max(gn, batch * 20), batch)
            r["sqlite_batched_rowwise"] = bench_sqlite(work, r["value_bytes"], max(gn, batch * 20), batch, rowwise=True)
            for c in r["group_closed"]:
                cb = max(1, round(c["avg_batch"]))
                c["sqlite_at_batch"] = bench_sqlite(work, r["value_bytes"], max(n, cb * 20), cb)
            scan_n = max(200, args.scan_n // 100) if big else args.scan_n
            say(f"[{label}] scans ({scan_n} entries)")
            r["scan"] = bench_scan(work, size, scan_n)
            r["scan_tensor"] = bench_scan(work, size, max(100, scan_n // 4), kind="tensor", passes=2)
            results["sizes"][str(size)] = r
        if not args.no_profile:
            say("profiling the sync append path (cProfile, 256 B)")
            results["profile_sync_256"] = profile_sync(work, 256, max(200, args.n // 4))
    finally:
        work.close()
    results["targets"] = evaluate(results)
    finish(results, args.json, t_start, pc())
    print_report(results)
    say(f"wrote {args.json} ({results['elapsed_s']} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
