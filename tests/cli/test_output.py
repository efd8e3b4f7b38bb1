"""The output rule (`printable`, JSON lines, rich tables) and the exit-status rule, in-process."""

from __future__ import annotations

import io
import json
import struct

import lmdb
import pytest

import snapshots
from eventlog import CorruptEntryError, DamagedLogError, FormatError, LogError
from replay.cli.errors import EXIT_BAD_INPUT, EXIT_DAMAGE, EXIT_INTERNAL, CliError, exit_status
from replay.cli.output import Column, Output, json_line, printable

HOSTILE = ["\x1b[2K\r", "\x1b]0;x\x07", "\x9b", "\x7f", "a\nb\tc", "\u202e", "\u2028", "\xa0", "\U000e0041", "\udcff"]


class Terminal(io.StringIO):
    """A stream that says it is a terminal, so Output draws with rich."""

    def isatty(self) -> bool:
        return True


@pytest.mark.parametrize("text", HOSTILE)
def test_printable_escapes_every_control_and_invisible_character(text):
    shown = printable(text)
    assert shown.isprintable() and shown != text
    assert shown.encode("ascii", "backslashreplace").decode("unicode_escape") == text  # nothing lost


def test_printable_keeps_ordinary_text_as_is():
    for text in ("step", "sgd_step v2 lr=0.1", "[bold]x[/bold]", "é…日本", ":skull:", ""):
        assert printable(text) == text


@pytest.mark.parametrize("text", HOSTILE)
def test_json_lines_are_printable_and_decode_to_the_exact_value(text):
    line = json_line({"op": text, text: [text]})
    assert line.isprintable()
    assert json.loads(line) == {"op": text, text: [text]}


def test_a_terminal_never_interprets_markup_or_emoji_codes_in_data():
    stream = Terminal()
    out = Output(stream=stream)
    out.line("[bold red]x[/bold red] :skull: \x1b[2K")
    out.table([Column("op", "op")], [{"op": "[red]y[/red] :smile:"}], title="[blink]t[/blink]")
    text = stream.getvalue()
    for literal in ("[bold red]x[/bold red]", ":skull:", "[red]y[/red]", ":smile:", "[blink]t[/blink]", "\\x1b[2K"):
        assert literal in text
    assert "\x1b[2K" not in text


def test_plain_output_is_one_line_per_call_whatever_the_data():
    stream = io.StringIO()
    out = Output(stream=stream)
    out.line("one\ntwo\rthree")
    out.table([Column("op", "op")], [{"op": "x\ny"}])
    assert stream.getvalue().splitlines() == ["one\\ntwo\\rthree", "op", "x\\ny"]


@pytest.mark.parametrize("exc,status", [
    (CorruptEntryError(7, "checksum mismatch"), EXIT_DAMAGE),
    (DamagedLogError("data.mdb is 4096 bytes, needs 8192"), EXIT_DAMAGE),
    (FormatError("event log metadata is missing or damaged"), EXIT_DAMAGE),
    (snapshots.CorruptSnapshotError("10-1", "ab12", "chunk hash mismatch"), EXIT_DAMAGE),
    (lmdb.CorruptedError("MDB_CORRUPTED"), EXIT_DAMAGE),
    (struct.error("unpack requires a buffer of 8 bytes"), EXIT_DAMAGE),
    (OSError(5, "Input/output error"), EXIT_DAMAGE),
    (CliError("x is not a journal"), EXIT_BAD_INPUT),
    (CliError("damaged", status=EXIT_DAMAGE), EXIT_DAMAGE),
    (LogError("another writer holds the lock"), EXIT_BAD_INPUT),
    (FileNotFoundError(2, "No such file"), EXIT_BAD_INPUT),
    (IndexError("log index 99 is beyond last_index 35"), EXIT_BAD_INPUT),
    (RuntimeError("a bug"), EXIT_INTERNAL),
])
def test_exit_status_says_damage_bad_input_or_bug(exc, status):
    assert exit_status(exc) == status


def test_a_log_that_lmdb_cannot_open_as_damaged_is_damage():
    wrapped = LogError("cannot open /x/log: MDB_INVALID: File is not an LMDB file")
    wrapped.__cause__ = lmdb.InvalidError("MDB_INVALID")
    assert exit_status(wrapped) == EXIT_DAMAGE
