"""replay.fork of a journal whose snapshot store holds packed chunks (the default since
packs) or only loose chunk files (a store written before packs, or with packs=False): the
fork reaches the store only through snapshots' public transfer API, which hard-links whole
packs or loose chunk files (both immutable) or copies the chunks where links are refused."""

from __future__ import annotations

import os
import shutil

import pytest

import replay
import snapshots

from .models import assert_same, make_ops, make_state
from .test_fork import reference, run  # noqa: F401 - `reference` is a fixture


def _rewrite(store_dir, packs: bool) -> None:
    """Rewrite every snapshot of the store in one form: same names, meta and state; with
    packs no loose chunk is left, without (a store written before packs) no pack."""
    with snapshots.SnapshotStore(store_dir) as store:
        saved = [(info, store.load(info)) for info in store.list()]
    shutil.rmtree(store_dir)
    with snapshots.SnapshotStore(store_dir, packs=packs) as store:
        for info, state in saved:
            store.save(state, index=info.index, term=info.term, meta=info.meta)


@pytest.fixture(scope="module", params=["packed", "loose"])
def form_source(tmp_path_factory, request):
    """(journal directory, the store's chunk-holding subdirectory: packs or chunks)."""
    path = tmp_path_factory.mktemp(f"fork-{request.param}") / "src"
    run(path, 20)
    _rewrite(path / "snapshots", packs=request.param == "packed")
    held, other = ("packs", "chunks") if request.param == "packed" else ("chunks", "packs")
    assert not (path / "snapshots" / other).exists() and os.listdir(path / "snapshots" / held)
    return path, held


def test_a_store_forks_by_linking_its_files_and_recovers_bit_exactly(form_source, tmp_path, reference, monkeypatch):
    packed_source, held = form_source
    report = replay.fork(packed_source, at=13, dest=tmp_path / "linked")
    assert report.snapshots == ["0-0", "8-1"] and report.linked > 0 and report.copied == 0
    files = sorted(p for p in (tmp_path / "linked" / "snapshots" / held).rglob("*") if p.is_file())
    assert files and all(p.stat().st_ino == (packed_source / "snapshots" / p.relative_to(
        tmp_path / "linked" / "snapshots")).stat().st_ino for p in files)
    state = make_state()
    with replay.Journal.open(tmp_path / "linked", state=state, ops=make_ops(), snapshot_on_close=False) as journal:
        assert journal.index == 14
    assert_same(state, reference(tmp_path, 13))

    links_tried = []

    def no_links(*args, **kwargs):
        links_tried.append(args)
        raise OSError(18, "Invalid cross-device link")  # EXDEV: another filesystem

    monkeypatch.setattr(os, "link", no_links)
    report = replay.fork(packed_source, at=13, dest=tmp_path / "copied")
    assert report.linked == 0 and report.copied > 0
    # Refused for another filesystem once, snapshot files are not tried (nor checked) for links again
    snapshot_links = [a for a in links_tried if "snapshots" in str(a[1])]
    assert len(snapshot_links) == 1 < report.copied, (links_tried, report.copied)
    state = make_state()
    with replay.Journal.open(tmp_path / "copied", state=state, ops=make_ops(), snapshot_on_close=False):
        pass
    assert_same(state, reference(tmp_path, 13))
