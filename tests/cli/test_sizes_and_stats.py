"""One size vocabulary across `snapshots`, `stats` and `verify`; `stats` estimates from the newest
sound snapshot; `diff --only/--top`."""

from __future__ import annotations

import json
import os

import pytest

import snapshots
from replay.audit import human_bytes
from snapshots.manifest import Manifest
from tests.chunkcopies import region
from tests.cli.conftest import OPS

SIZES = ("bytes_logical", "bytes_stored", "bytes_written")


@pytest.fixture
def cli(cli_here):
    return cli_here  # these tests run many commands


def records(stdout: str) -> list[dict]:
    return [json.loads(line) for line in stdout.splitlines()]


def damage_newest_own_chunk(journal) -> None:
    """Flip a byte of a chunk that only the newest snapshot uses."""
    manifests = journal / "snapshots" / "manifests"
    names = sorted(os.listdir(manifests), key=lambda n: tuple(map(int, n.split("-"))))
    decoded = {n: Manifest.decode(n, (manifests / n).read_bytes()) for n in names}
    older = {c.id for n in names[:-1] for c in decoded[n].chunks}
    cid = next(c.id for c in decoded[names[-1]].chunks if c.id not in older)
    chunk = region(journal / "snapshots", cid)  # its loose file, or its range in a pack
    chunk.flip(chunk.size // 2)


def infos(journal) -> dict:
    with snapshots.SnapshotStore(journal / "snapshots") as store:
        return {info.manifest_id: info for info in store.list()}


def test_snapshots_stats_and_verify_give_the_same_sizes_in_the_same_words(journal_master, cli):
    expected = {sid: tuple(getattr(info, k) for k in SIZES) for sid, info in infos(journal_master).items()}
    listed = {r["id"]: tuple(r[k] for k in SIZES) for r in records(cli("snapshots", journal_master, "--json")[1])}
    stats = {r["id"]: tuple(r[k] for k in SIZES) for r in records(cli("stats", journal_master, "--json")[1])
             if r["section"] == "snapshot"}
    verified = {r["id"]: tuple(r[k] for k in SIZES) for r in records(cli("verify", journal_master, "--json")[1])
                if r.get("check") == "snapshot"}
    assert listed == stats == verified == expected and len(expected) >= 3

    texts = {command: cli(command, journal_master)[1] for command in ("snapshots", "stats", "verify")}
    for sid, info in infos(journal_master).items():
        figures = [human_bytes(n) for n in (info.bytes_logical, info.bytes_stored, info.bytes_written)]
        for command, text in texts.items():
            (line,) = [line for line in text.splitlines() if line.startswith(sid) or line.startswith(f"snapshot {sid}:")]
            positions = [line.index(f) for f in figures]
            assert positions == sorted(positions), (command, line)  # logical, stored, written, in that order
        assert f"logical {figures[0]}, stored {figures[1]}, written {figures[2]}" in texts["verify"]
    for command in ("snapshots", "stats"):
        header = next(line for line in texts[command].splitlines() if line.startswith("snapshot "))
        assert header.index("logical") < header.index("stored") < header.index("written"), header


def test_stats_estimates_from_the_newest_sound_snapshot_and_names_the_damaged_one(journal, cli):
    ids = sorted(infos(journal), key=lambda s: tuple(map(int, s.split("-"))))
    newest, sound = ids[-1], ids[-2]
    damage_newest_own_chunk(journal)

    status, out, err = cli("stats", journal, "--json")
    assert status == 0, err
    (estimate,) = [r for r in records(out) if r["section"] == "estimate"]
    assert estimate["from_snapshot"] == sound and estimate["damaged_snapshots"] == [newest]
    assert estimate["from_index"] == int(sound.split("-")[0]) and estimate["entries"] == 35 - estimate["from_index"]
    text = cli("stats", journal)[1]
    assert f"snapshot {sound} (index {estimate['from_index']}), passing over damaged snapshot(s) {newest}" in text


def test_diff_only_keeps_the_prefixes_and_top_sorts_by_norm(journal_master, cli):
    status, out, err = cli("diff", journal_master, 20, 26, *OPS, "--json", "--all", "--only", "model")
    assert status == 0, err
    assert sorted(r["name"] for r in records(out)) == ["model.bias", "model.weight"]

    everything = records(cli("diff", journal_master, 20, 26, *OPS, "--json")[1])
    norms = sorted((r["norm"] for r in everything if r["norm"] is not None), reverse=True)
    top = records(cli("diff", journal_master, 20, 26, *OPS, "--json", "--top", 2,
                      "--only", "model,table", "--only", "counters")[1])
    assert [r["norm"] for r in top] == norms[:2] and len(top) == 2

    status, _, err = cli("diff", journal_master, 20, 26, *OPS, "--only", "modle")
    assert status == 2 and "--only modle" in err
    with pytest.raises(SystemExit) as usage:  # argparse refuses before anything runs
        cli("diff", journal_master, 20, 26, *OPS, "--top", 0)
    assert usage.value.code == 2
