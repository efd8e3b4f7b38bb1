"""Benchmark the replica's object-store client: ``python -m bench replica_client [--quick]``.

One run starts moto's S3 server in a child process on 127.0.0.1 (so this process's CPU
time is the client's alone) and measures, for 4 KiB (latency), 1 MiB and 16 MiB objects
of random bytes:

- ``store``: ``S3ObjectStore.put_if_absent`` (obstore, a conditional PutObject with
  If-None-Match: *, key checks, error mapping): what the shipper pays per object;
- ``obstore_create``: ``obstore.put(mode="create")`` of the same bytes: the same request
  without our wrapper (store / obstore_create is the wrapper's cost);
- ``obstore``: a plain ``obstore.put`` of the same bytes (no condition): the client's floor
  (obstore_create / obstore is what the condition costs the server);
- ``boto3``: a plain ``put_object`` of the same bytes: the other client we measured when
  choosing (replay/replica/objects.py says why obstore);

and, for the directory backend, ``file_store`` (``FileObjectStore.put_if_absent``: temp
file, fsync, link, directory fsync) against ``file_plain`` (write, fsync, rename, directory
fsync: the usual durable atomic publish).

Arms alternate in rotating order for R rounds of N puts each, each put to a fresh key
(deleted after the round so the server's memory stays flat). Reported per arm: median and
p90 latency, MiB/s at the median, the client's CPU ms per put, and the ratio to the plain
put. Results go to ``bench/results/replica_client.json`` and to a table on stdout. This
is a benchmark, not a test: nothing asserts time.
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

from ._common import Workdir, finish, fmt, machine_info, ms, pct

RESULTS = Path(__file__).parent / "results" / "replica_client.json"
pc = time.perf_counter
MIB = 2**20
SIZES = {"4KiB": (4096, 100), "1MiB": (MIB, 20), "16MiB": (16 * MIB, 4)}
CREDS = {"region": "us-east-1", "access_key_id": "bench", "secret_access_key": "bench"}


def parse_args(argv):
    p = argparse.ArgumentParser(prog="python -m bench replica_client", description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=5, help="rounds per size (arms alternate within each)")
    p.add_argument("--quick", action="store_true", help="fewer puts and rounds (a smoke run)")
    p.add_argument("--dir", type=Path, default=None, help="scratch directory for the file arms")
    p.add_argument("--json", type=Path, default=RESULTS)
    return p.parse_args(argv)


def cpu() -> float:
    return time.process_time()  # this process only: moto runs in a child


class MotoProcess:
    """moto's S3 server in a child process on 127.0.0.1."""

    def __init__(self):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.5).close()
                break
            except OSError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("moto server did not start (pip install 'moto[server]')")
                time.sleep(0.1)
        self.endpoint = f"http://127.0.0.1:{self.port}"

    def close(self):
        self.proc.terminate()
        self.proc.wait(10)


def s3_arms(endpoint: str, bucket: str):
    """name -> (put(key, data), delete(key)) for the S3 arms."""
    import boto3
    import obstore
    from botocore.config import Config
    from obstore.store import S3Store

    from replay.replica import open_store

    store = open_store(f"s3://{bucket}/store", {"endpoint_url": endpoint, **CREDS})
    plain = S3Store(bucket, prefix="obstore", endpoint=endpoint, client_options={"allow_http": True}, **CREDS)
    client = boto3.client("s3", endpoint_url=endpoint, region_name=CREDS["region"],
                          aws_access_key_id=CREDS["access_key_id"], aws_secret_access_key=CREDS["secret_access_key"],
                          config=Config(retries={"max_attempts": 3}))
    client.create_bucket(Bucket=bucket)

    def store_put(key, data):
        assert store.put_if_absent(key, data)

    return {
        "store": (store_put, store.delete),
        "obstore_create": (lambda k, d: obstore.put(plain, k, d, mode="create", use_multipart=False),
                           lambda k: obstore.delete(plain, k)),
        "obstore": (lambda k, d: obstore.put(plain, k, d, use_multipart=False), lambda k: obstore.delete(plain, k)),
        "boto3": (lambda k, d: client.put_object(Bucket=bucket, Key=f"boto3/{k}", Body=d),
                  lambda k: client.delete_object(Bucket=bucket, Key=f"boto3/{k}")),
    }, store.close


def file_arms(root: Path):
    from replay.replica import FileObjectStore

    store = FileObjectStore(root / "store")
    plain = root / "plain"
    plain.mkdir()

    def plain_put(key, data):
        tmp = plain / f".{key}.tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.rename(tmp, plain / key)
        dfd = os.open(plain, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)

    def store_put(key, data):
        assert store.put_if_absent(key, data)

    return {
        "file_store": (store_put, store.delete),
        "file_plain": (plain_put, lambda k: (plain / k).unlink()),
    }, store.close


def measure(arms: dict, size: int, n: int, rounds: int) -> dict:
    data = os.urandom(size)
    times = {a: [] for a in arms}
    cpus = {a: [] for a in arms}
    names = list(arms)
    for r in range(rounds):
        order = names[r % len(names):] + names[:r % len(names)]
        for arm in order:
            put, delete = arms[arm]
            keys = [f"k{uuid.uuid4().hex}" for _ in range(n)]
            c0 = cpu()
            for key in keys:
                t = pc()
                put(key, data)
                times[arm].append(pc() - t)
            cpus[arm].append((cpu() - c0) / n)
            for key in keys:
                delete(key)
    out = {}
    for arm in names:
        med = pct(times[arm], 50)
        out[arm] = {"puts": len(times[arm]), "median_ms": ms(med), "p90_ms": ms(pct(times[arm], 90)),
                    "mib_per_s": round(size / med / MIB, 1), "client_cpu_ms_per_put": ms(pct(cpus[arm], 50))}
    return out


def add_ratios(table: dict, arm: str, base: str) -> None:
    table[arm][f"median_over_{base}"] = round(table[arm]["median_ms"] / table[base]["median_ms"], 3)


def print_report(results: dict) -> None:
    print(f"\nreplica client puts (moto {results['machine'].get('moto')}, 127.0.0.1; median of all puts)")
    print(f"{'size':>6} {'arm':>14} {'puts':>5} {'median ms':>10} {'p90 ms':>8} {'MiB/s':>8} {'cpu ms':>7} {'ratio':>7}")
    for section in ("s3", "file"):
        for size, table in results[section].items():
            for arm, row in table.items():
                ratio = next((v for k, v in row.items() if k.startswith("median_over_")), None)
                print(f"{size:>6} {arm:>14} {row['puts']:>5} {fmt(row['median_ms']):>10} {fmt(row['p90_ms']):>8} "
                      f"{fmt(row['mib_per_s']):>8} {fmt(row['client_cpu_ms_per_put']):>7} {fmt(ratio):>7}")


def main(argv) -> int:
    args = parse_args(argv)
    import boto3
    import moto
    import obstore

    sizes = {k: (s, max(2, n // 4) if args.quick else n) for k, (s, n) in SIZES.items()}
    rounds = 2 if args.quick else args.rounds
    say = (lambda *a: print(*a, file=sys.stderr, flush=True))
    work = Workdir(args.dir or Path(os.environ.get("TMPDIR", "/tmp")), "bench-replica-")
    results = {
        "benchmark": "replica_client",
        "machine": machine_info(work.root, ("replay/replica",), moto=moto.__version__,
                                obstore=obstore.__version__, boto3=boto3.__version__),
        "config": {"rounds": rounds, "sizes": {k: {"bytes": s, "puts_per_round": n} for k, (s, n) in sizes.items()},
                   "server": "moto.server in a child process on 127.0.0.1 (client CPU measured alone)",
                   "arms": {"store": "S3ObjectStore.put_if_absent (obstore, If-None-Match: *)",
                            "obstore_create": "obstore.put(mode='create'), no wrapper",
                            "obstore": "plain obstore.put, no condition", "boto3": "plain boto3 put_object",
                            "file_store": "FileObjectStore.put_if_absent (temp, fsync, link, dir fsync)",
                            "file_plain": "write, fsync, rename, dir fsync"}},
        "s3": {}, "file": {},
    }
    started = pc()
    server = MotoProcess()
    closers = []
    try:
        arms, close = s3_arms(server.endpoint, f"bench-{uuid.uuid4().hex[:12]}")
        closers.append(close)
        for name, (size, n) in sizes.items():
            say(f"[s3 {name}] {n} puts x {rounds} rounds per arm")
            table = results["s3"][name] = measure(arms, size, n, rounds)
            add_ratios(table, "store", "obstore")
            add_ratios(table, "obstore_create", "obstore")
            add_ratios(table, "boto3", "obstore")
        farms, fclose = file_arms(work.new("file"))
        closers.append(fclose)
        for name, (size, n) in sizes.items():
            say(f"[file {name}] {n} puts x {rounds} rounds per arm")
            table = results["file"][name] = measure(farms, size, n, rounds)
            add_ratios(table, "file_store", "file_plain")
    finally:
        for close in closers:
            close()
        server.close()
        work.close()
    finish(results, args.json, started, pc())
    print_report(results)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
