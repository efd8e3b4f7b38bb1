"""`replay restore URL DIR`, and reading a replica URL directly with `log`, `stats` and `verify`.

A replica (replay/replica/FORMAT.md) is read by restoring it: `restore` writes the
journal directory a new machine would open (the newest snapshot on the replica's chain
and the log segments after it, every object verified). `log`, `stats` and `verify`
given a URL (``s3://bucket/prefix``, ``file:///dir``) restore it into a temporary
directory, run there, and remove it: what they show is exactly what a restore would
give. Store options (S3 endpoint, region, credentials) come from ``--replica-option
KEY=VALUE``, repeated, and otherwise from the standard AWS_* environment variables
(`replay.replica.s3options`). Reading a replica creates nothing at its URL, and a restore
target is checked before anything is downloaded (`replay.replica.restore`).
"""

from __future__ import annotations

import contextlib
import re
import shutil
import sys
import tempfile
from pathlib import Path

from .errors import CliError, EXIT_OK
from .output import Output, printable

HELP = "restore a journal directory from its replica (a new machine): the state at the replica index"
URL = re.compile(r"^(s3|file)://", re.I)


def add_parser(sub, parents) -> None:
    p = sub.add_parser("restore", parents=parents, help=HELP, description=HELP)
    p.add_argument("url", help="the replica: s3://bucket/prefix or file:///dir")
    p.add_argument("dir", help="a new journal directory (missing or empty)")
    p.set_defaults(run=run)


def add_option_argument(parser) -> None:
    """The ``--replica-option KEY=VALUE`` option every command that may read a replica takes."""
    parser.add_argument("--replica-option", action="append", default=[], metavar="KEY=VALUE",
                        help="a replica store option (e.g. endpoint_url=http://127.0.0.1:9000, region=us-east-1; "
                             "s3fs/boto3 spellings such as key=, secret=, client_kwargs.endpoint_url= work too); "
                             "repeatable. What is not given comes from the AWS_* environment variables")


def options(args) -> dict:
    """The store options of ``--replica-option KEY=VALUE`` (CliError for one without '=')."""
    out = {}
    for item in getattr(args, "replica_option", None) or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise CliError(f"--replica-option {item!r} is not KEY=VALUE")
        out[key] = {"true": True, "false": False}.get(value.lower(), value)
    return out


def is_url(text: str) -> bool:
    return bool(URL.match(str(text)))


def run(args, out: Output) -> int:
    from replay.replica.restore import restore

    report = restore(args.url, Path(args.dir), options(args))
    if out.as_json:
        out.record({"restored": args.url, "dir": str(args.dir), "index": report.head_index, "term": report.head_term,
                    "snapshot": report.snapshot, "segments": report.segments, "bytes": report.bytes,
                    "skipped": report.skipped, "seconds": round(report.seconds, 3)})
    else:
        out.line(f"{report} into {args.dir}")
        for reason in report.skipped:
            out.line(f"  skipped: {reason}")
    return EXIT_OK


@contextlib.contextmanager
def local_copy(args):
    """While open, ``args.dir`` is a local journal directory: a replica URL is restored into
    a temporary directory (said on stderr), removed afterwards; a path is left as is."""
    if not is_url(args.dir):
        yield
        return
    from replay.replica.restore import restore

    url, scratch = args.dir, Path(tempfile.mkdtemp(prefix="replay-replica-"))
    try:
        report = restore(url, scratch / "journal", options(args))
        print(printable(f"replay {args.command}: {report}; reading that copy"), file=sys.stderr)
        args.dir = str(scratch / "journal")
        yield
    finally:
        args.dir = url
        shutil.rmtree(scratch, ignore_errors=True)
