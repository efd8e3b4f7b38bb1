"""Fencing: after a restore elsewhere takes the replica over, the original writer ships no head again."""

from __future__ import annotations

import pytest

import replay
from replay.replica.errors import ReplicaFencedError
from replay.replica.head import read_head
from replay.replica.objects import open_store
from replay.replica.restore import restore

from .test_shipping import apply_n, assert_state, open_journal, ship

pytestmark = pytest.mark.timeout(120)


def test_the_original_is_fenced_after_a_restore_takes_over(tmp_path, replica_url):
    url, options = replica_url
    original = open_journal(tmp_path / "a")
    old = ship(original, url, options)
    try:
        apply_n(original, 10)
        original.flush()
        old.wait(10, timeout=60)
        restore(url, tmp_path / "b", options)
        with open_journal(tmp_path / "b") as moved:
            new = ship(moved, url, options)
            moved_term = moved.log.term
            try:
                apply_n(moved, 5)
                moved.flush()
                assert new.wait(15, timeout=60) == 15
                # The original goes on training (a partition, a VM thought dead) and tries to ship.
                apply_n(original, 8)
                original.flush()
                with pytest.raises(ReplicaFencedError):
                    old.wait(18, timeout=60)
                assert old.status().fenced and old.index == 10
                apply_n(original, 1)  # training is never stopped by the fence
                apply_n(moved, 2)
                moved.flush()
                assert new.wait(17, timeout=60) == 17
            finally:
                new.close(timeout=30)
        with open_store(url, options) as store:
            head, _ = read_head(store)
        assert head.index == 17 and head.term == moved_term
    finally:
        old.close(timeout=30)
        original.close()
    restore(url, tmp_path / "c", options)  # the moved journal's history, not the original's
    with open_journal(tmp_path / "c") as copy:
        assert copy.index == 17
        assert_state(copy.state, 17)


def test_an_old_writer_restarted_after_a_takeover_cannot_ship(tmp_path, replica_url):
    url, options = replica_url
    with open_journal(tmp_path / "a") as original:
        old = ship(original, url, options)
        apply_n(original, 6)
        original.flush()
        old.wait(6, timeout=60)
        old.close(timeout=30)
    restore(url, tmp_path / "b", options)
    with open_journal(tmp_path / "b") as moved:
        new = ship(moved, url, options)
        moved.flush()
        new.wait(6, timeout=60)
        new.close(timeout=30)
    with open_store(url, options) as store:
        before = read_head(store)
    with open_journal(tmp_path / "a") as original:  # the original machine comes back
        old = ship(original, url, options)
        apply_n(original, 4)
        original.flush()
        with pytest.raises(ReplicaFencedError, match="owned by"):
            old.wait(10, timeout=60)
        old.close(timeout=30)
    with open_store(url, options) as store:
        assert read_head(store) == before  # not one byte of head.json changed


def test_a_second_restore_of_the_same_head_cannot_also_take_over(tmp_path, replica_url):
    url, options = replica_url
    with open_journal(tmp_path / "a") as original:
        old = ship(original, url, options)
        apply_n(original, 4)
        original.flush()
        old.wait(4, timeout=60)
        old.close(timeout=30)
    restore(url, tmp_path / "b", options)
    restore(url, tmp_path / "c", options)
    with open_journal(tmp_path / "b") as first:
        shipper = ship(first, url, options)
        first.flush()
        shipper.wait(4, timeout=60)
        shipper.close(timeout=30)
    with open_journal(tmp_path / "c") as second:
        shipper = ship(second, url, options)
        with pytest.raises(ReplicaFencedError):
            shipper.wait(4, timeout=60)
        shipper.close(timeout=30)
