"""replay.fork of a journal whose snapshot store holds packed chunks (snapshots' packs=True):
the fork reaches the store only through snapshots' public transfer API, which hard-links
whole packs (immutable files) or copies the chunks where links are refused."""

from __future__ import annotations

import os
import shutil

import pytest

import replay
import snapshots

from .models import assert_same, make_ops, make_state
from .test_fork import reference, run  # noqa: F401 - `reference` is a fixture


def _repack(store_dir) -> None:
    """Rewrite every snapshot of the store with packs: same names, meta and state; no loose chunk left."""
    with snapshots.SnapshotStore(store_dir) as store:
        saved = [(info, store.load(info)) for info in store.list()]
    shutil.rmtree(store_dir)
    with snapshots.SnapshotStore(store_dir, packs=True) as store:
        for info, state in saved:
            store.save(state, index=info.index, term=info.term, meta=info.meta)


@pytest.fixture(scope="module")
def packed_source(tmp_path_factory):
    path = tmp_path_factory.mktemp("fork-packs") / "src"
    run(path, 20)
    _repack(path / "snapshots")
    assert not (path / "snapshots" / "chunks").exists() and os.listdir(path / "snapshots" / "packs")
    return path


def test_a_packed_store_forks_by_linking_its_packs_and_recovers_bit_exactly(packed_source, tmp_path, reference,
                                                                           monkeypatch):
    report = replay.fork(packed_source, at=13, dest=tmp_path / "linked")
    assert report.snapshots == ["0-0", "8-1"] and report.linked > 0 and report.copied == 0
    packs = sorted((tmp_path / "linked" / "snapshots" / "packs").iterdir())
    assert packs and all(p.stat().st_ino == (packed_source / "snapshots" / "packs" / p.name).stat().st_ino
                         for p in packs)
    state = make_state()
    with replay.Journal.open(tmp_path / "linked", state=state, ops=make_ops(), snapshot_on_close=False) as journal:
        assert journal.index == 14
    assert_same(state, reference(tmp_path, 13))

    def no_links(*args, **kwargs):
        raise OSError(18, "Invalid cross-device link")  # EXDEV: another filesystem

    monkeypatch.setattr(os, "link", no_links)
    report = replay.fork(packed_source, at=13, dest=tmp_path / "copied")
    assert report.linked == 0 and report.copied > 0
    state = make_state()
    with replay.Journal.open(tmp_path / "copied", state=state, ops=make_ops(), snapshot_on_close=False):
        pass
    assert_same(state, reference(tmp_path, 13))
