"""Journal.open(replica=...) decides the claim on the replica before it returns (FORMAT.md, "Fencing").

Two journals share one replica (file:// and S3 via moto). Every interleaving is forced
by the order of calls in this one thread (a restore, then the other writer's
`flush(replica=True)`, then the claim), never by sleeping:

- a stale machine whose replica moved on elsewhere is refused at open, naming both sides;
- a restore whose head moved on before its claim is refused at open (it would be a fork);
- a restore that wins its claim fences the original, whose next `apply` raises
  ReplicaFencedError before appending anything;
- an unreachable replica at the open of an existing journal warns and opens, and a claim
  that turns out lost later stops `apply` the same way.
"""

from __future__ import annotations

import pytest

from replay.replica import link as replication
from replay.replica.errors import ReplicaFencedError
from replay.replica.head import read_head
from replay.replica.objects import open_store

from .test_shipping import apply_n, assert_state, open_journal

pytestmark = pytest.mark.timeout(180)


def replicated(path, url, options, **kw):
    return open_journal(path, replica=url, replica_options=options, ship_interval=0.05, **kw)


def head_of(url, options):
    with open_store(url, options) as store:
        return read_head(store)


def test_a_stale_machine_is_refused_at_open_naming_the_newer_replica(tmp_path, replica_url):
    url, options = replica_url
    with replicated(tmp_path / "a", url, options) as a:      # machine A trains to 30 and ships it
        apply_n(a, 30)
        a.flush(replica=True, timeout=60)
    with replicated(tmp_path / "b", url, options) as b:      # machine B restores and trains to 50
        assert b.recovery.restored is not None and b.index == 30
        apply_n(b, 20)
        b.flush(replica=True, timeout=60)
    head, _ = head_of(url, options)
    assert head.index == 50

    # Machine A comes back with its old local copy at 30: refused, naming both sides and the way out.
    with pytest.raises(ReplicaFencedError) as refused:
        replicated(tmp_path / "a", url, options)
    message = str(refused.value)
    assert f"owned by {head.owner}" in message and "index 50" in message, message
    assert "last index 30" in message and "new directory" in message, message
    assert (refused.value.owner, refused.value.index) == (head.owner, 50)
    assert head_of(url, options)[0] == head                  # not one byte of head.json changed

    with open_journal(tmp_path / "a") as local:               # its local history is intact and usable alone
        assert local.index == 30
        assert_state(local.state, 30)
    # The remedy the message names works: a restore into a new directory goes on from 50.
    with replicated(tmp_path / "a2", url, options) as again:
        assert again.index == 50
        assert_state(again.state, 50)


def test_a_restore_whose_head_moved_on_before_its_claim_is_refused_at_open(tmp_path, replica_url, monkeypatch):
    url, options = replica_url
    original = replicated(tmp_path / "a", url, options)
    try:
        apply_n(original, 10)
        original.flush(replica=True, timeout=60)

        restore_if_empty = replication.restore_if_empty

        def restore_then_the_original_ships(root, store):
            report = restore_if_empty(root, store)          # B restores the head at 10 ...
            apply_n(original, 5)                            # ... and A, still alive, ships 15 before B claims
            original.flush(replica=True, timeout=60)
            return report

        monkeypatch.setattr(replication, "restore_if_empty", restore_then_the_original_ships)
        with pytest.raises(ReplicaFencedError) as refused:
            replicated(tmp_path / "b", url, options)
        head, _ = head_of(url, options)
        assert head.index == 15 and f"owned by {head.owner}" in str(refused.value), str(refused.value)
        assert "index 15" in str(refused.value) and "restored" in str(refused.value), str(refused.value)
        monkeypatch.undo()

        # The original was not fenced by the newcomer that lost: it trains and ships on.
        apply_n(original, 3)
        assert original.flush(replica=True, timeout=60) == 18 and not original.replica_status.fenced
    finally:
        original.close()


def test_a_restore_that_wins_its_claim_fences_the_original_whose_apply_then_raises(tmp_path, replica_url):
    url, options = replica_url
    original = replicated(tmp_path / "a", url, options)
    try:
        apply_n(original, 10)
        original.flush(replica=True, timeout=60)
        with replicated(tmp_path / "b", url, options) as moved:
            # Opening decided the claim: head.json names B before open returned.
            head, _ = head_of(url, options)
            assert moved.index == 10 and head.term == moved.log.term
            apply_n(original, 1)                # A's shipper has not tried to write since: this appends
            with pytest.raises(ReplicaFencedError):
                original.flush(replica=True, timeout=60)
            last = original.log.last_index
            with pytest.raises(ReplicaFencedError, match="nothing appended"):
                original.apply("add", value=1.0)  # never a silent fork
            assert original.log.last_index == last and original.index == 11
            apply_n(moved, 4)
            assert moved.flush(replica=True, timeout=60) == 14
    finally:
        original.close()
    with replicated(tmp_path / "c", url, options) as copy:    # the replica holds B's history
        assert copy.index == 14
        assert_state(copy.state, 14)


def test_an_unreachable_replica_at_open_warns_and_training_goes_on(tmp_path, dead_s3_options):
    open_journal(tmp_path / "a").close()
    with pytest.warns(RuntimeWarning, match="claim"):
        journal = replicated(tmp_path / "a", "s3://nowhere/run", dead_s3_options)
    with journal:
        apply_n(journal, 5)
        assert journal.flush() == journal.index == 5      # the local journal is the source of truth
        assert not journal.replica_status.fenced


def test_a_claim_retried_after_open_that_turns_out_lost_stops_apply(tmp_path, stoppable_s3):
    url, options = f"s3://{stoppable_s3.new_bucket()}/run", stoppable_s3.options()
    with replicated(tmp_path / "a", url, options) as a:
        apply_n(a, 6)
        a.flush(replica=True, timeout=60)
    with replicated(tmp_path / "b", url, options) as b:      # B takes the replica over
        apply_n(b, 2)
        b.flush(replica=True, timeout=60)
    stoppable_s3.stop()
    with pytest.warns(RuntimeWarning, match="claim"):
        stale = replicated(tmp_path / "a", url, options)      # A comes back while the store is down
    try:
        apply_n(stale, 1)                                     # the local journal goes on meanwhile
        stoppable_s3.start()
        with pytest.raises(ReplicaFencedError, match="owned by"):
            stale.flush(replica=True, timeout=60)            # the retried claim finds B's head
        last = stale.log.last_index
        with pytest.raises(ReplicaFencedError):
            stale.apply("add", value=1.0)
        assert stale.log.last_index == last
    finally:
        stale.close()


def test_a_directory_gone_back_in_time_warns_that_the_replica_moves_back(tmp_path, replica_url):
    import shutil

    url, options = replica_url
    with replicated(tmp_path / "a", url, options) as a:
        apply_n(a, 10)
        a.flush(replica=True, timeout=60)
    shutil.copytree(tmp_path / "a", tmp_path / "backup")     # a copy of the disk at 10 (same writer)
    with replicated(tmp_path / "a", url, options) as a:
        apply_n(a, 10)
        a.flush(replica=True, timeout=60)
    shutil.rmtree(tmp_path / "a")
    shutil.move(tmp_path / "backup", tmp_path / "a")         # the disk goes back to 10
    with pytest.warns(RuntimeWarning, match=r"abandons entries 11\.\.20"):
        a = replicated(tmp_path / "a", url, options)
    with a:
        assert a.index == 10
        apply_n(a, 2)
        assert a.flush(replica=True, timeout=60) == 12     # the replica follows this copy's history
    assert head_of(url, options)[0].index == 12


class AnswerLost:
    """A store whose conditional writes land and then answer "precondition failed", as a client
    retry of a write whose first answer was lost does (ObjectStore.put_if_match)."""

    def __init__(self, store):
        self._store = store
        self.url = store.url

    def put_if_match(self, key, data, etag):
        from replay.replica.errors import PreconditionFailedError

        self._store.put_if_match(key, data, etag)
        raise PreconditionFailedError(key, self.url, "the retry found the first attempt's write")

    def __getattr__(self, name):
        return getattr(self._store, name)


@pytest.mark.parametrize("restored", [False, True], ids=["own-head", "takeover"])
def test_a_claim_whose_write_landed_but_answered_refused_is_won(tmp_path, restored):
    from replay.replica.claim import claim
    from replay.replica.head import Head, Record, write_record

    url = (tmp_path / "replica").as_uri()
    with open_store(url) as store:
        etag = store.put_if_match("head.json", Head(3, "a" * 32, 0, 0, 1.0).encode(), None)
        write_record(tmp_path / "dir", Record(url, None, etag) if restored else Record(url, "a" * 32, None))
        claimed = claim(AnswerLost(store), tmp_path / "dir", 4, lambda: 0)
        head, now = read_head(store)
    assert claimed.etag == now and head.term == 4 and head.owner == claimed.owner
    assert (head.owner == "a" * 32) is not restored


WRITER = """
import json, sys
sys.path[:0] = json.loads(sys.argv[3])
from tests.replica.test_shipping import apply_n, open_journal

journal = open_journal(sys.argv[1], replica=sys.argv[2], ship_interval=0.05)
try:
    while True:  # the issue's machine A: ships with flush(replica=True) every 5 steps
        apply_n(journal, 5)
        print("shipped", journal.flush(replica=True, timeout=60), flush=True)
except Exception as exc:
    print("stopped", type(exc).__name__, flush=True)
    journal.close()
"""


def test_a_newcomer_beside_a_shipping_process_is_refused_or_holds_the_replica_never_opens_fenced(tmp_path):
    """The issue's reproducer, two processes: whichever way the race goes, `Journal.open` of
    the newcomer either raises ReplicaFencedError or returns holding head.json, and then
    the writer it displaced stops with ReplicaFencedError."""
    import json
    import subprocess
    import sys

    from replay.replica.head import read_record

    script = tmp_path / "writer.py"
    script.write_text(WRITER)
    for round_ in range(2):
        url = (tmp_path / f"replica{round_}").as_uri()
        writer = subprocess.Popen([sys.executable, str(script), str(tmp_path / f"a{round_}"), url,
                                   json.dumps(sys.path)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            assert writer.stdout.readline().startswith("shipped"), writer.stderr.read()  # A is shipping now
            try:
                newcomer = replicated(tmp_path / f"b{round_}", url, {})
            except ReplicaFencedError as exc:
                assert f"owned by {head_of(url, {})[0].owner}" in str(exc) or "changed" in str(exc), str(exc)
                continue
            with newcomer:
                head, _ = head_of(url, {})
                assert head.owner == read_record(newcomer.path, url).owner and not newcomer.replica_status.fenced
                for line in writer.stdout:  # A learns it at its next head write, and stops
                    if not line.startswith("shipped"):
                        assert line.split() == ["stopped", "ReplicaFencedError"], line
                        break
                else:
                    pytest.fail(f"the displaced writer never stopped: {writer.stderr.read()}")
                apply_n(newcomer, 5)
                assert newcomer.flush(replica=True, timeout=60) == newcomer.index
        finally:
            writer.kill()
            writer.wait()
