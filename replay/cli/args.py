"""Argument types and checks shared by subcommands: indexes against the log's range, times, specs."""

from __future__ import annotations

import argparse
import datetime as dt
import re

from eventlog import EventLog

from .errors import CliError

_RELATIVE = re.compile(r"^(\d+(?:\.\d+)?)\s*(s|m|h|d|w)$")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def index_arg(text: str) -> int:
    """argparse type: a log index, an int >= 0."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a log index (an integer)") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"log index {value} is negative")
    return value


def time_arg(text: str) -> int:
    """argparse type: '2h', '30m', '90s', '3d' ago, or an ISO date/time (local unless it has an offset).

    Returns nanoseconds since the Unix epoch.
    """
    match = _RELATIVE.match(text.strip())
    if match:
        seconds = float(match.group(1)) * _UNIT_SECONDS[match.group(2)]
        return int((dt.datetime.now().timestamp() - seconds) * 1e9)
    try:
        when = dt.datetime.fromisoformat(text.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a time: use an ISO date/time (2024-05-01T12:00) or an age (90s, 30m, 2h, 3d)"
        ) from None
    return int(when.timestamp() * 1e9)


def check_entry_index(log: EventLog, index: int) -> None:
    """CliError unless `index` names a retained entry: compacted, past the end and 0 are named."""
    first, last = log.first_index, log.last_index
    if index < first:
        if index == 0:
            raise CliError("index 0 names no entry (indexes start at 1)")
        raise CliError(f"log index {index} is compacted: the first retained entry is {first}")
    if index > last:
        raise CliError(f"log index {index} is past the end: the last entry is {last}")

