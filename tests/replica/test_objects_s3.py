"""What only the S3 backend has: the server's own conditional writes, a dead or restarted
endpoint, prefixes sharing a bucket, objects a foreign writer put in the bucket. All of it
against moto's real HTTP server on 127.0.0.1 (tests/replica/conftest.py)."""

from __future__ import annotations

import re

import pytest

from replay.replica import (
    ObjectNotFoundError,
    PreconditionFailedError,
    ReplicaDamageError,
    ReplicaUnavailableError,
    S3ObjectStore,
    open_store,
)

pytestmark = pytest.mark.timeout(60)
pytest.importorskip("obstore", reason="obstore is not installed (pip install 'torch-eventlog[s3]')")


def test_moto_server_enforces_conditional_puts(s3_endpoint, s3_bucket):
    """The endpoint itself refuses a second create and a stale etag (a plain boto3 client, not
    our code): otherwise every fencing test against it would pass vacuously."""
    from botocore.exceptions import ClientError

    client = s3_endpoint.client()
    first = client.put_object(Bucket=s3_bucket, Key="k", Body=b"1", IfNoneMatch="*")["ETag"]
    with pytest.raises(ClientError) as info:
        client.put_object(Bucket=s3_bucket, Key="k", Body=b"2", IfNoneMatch="*")
    assert info.value.response["ResponseMetadata"]["HTTPStatusCode"] == 412
    second = client.put_object(Bucket=s3_bucket, Key="k", Body=b"3", IfMatch=first)["ETag"]
    with pytest.raises(ClientError) as info:
        client.put_object(Bucket=s3_bucket, Key="k", Body=b"4", IfMatch=first)
    assert info.value.response["ResponseMetadata"]["HTTPStatusCode"] == 412
    assert client.get_object(Bucket=s3_bucket, Key="k")["Body"].read() == b"3"
    assert client.head_object(Bucket=s3_bucket, Key="k")["ETag"] == second


def test_store_etag_is_the_servers(s3_endpoint, s3_bucket):
    """The etag put_if_match returns and get reports is the one a plain client sees."""
    with open_store(f"s3://{s3_bucket}/p", s3_endpoint.options()) as store:
        etag = store.put_if_match("head.json", b"{}", None)
        assert store.get("head.json", 10) == (b"{}", etag)
    assert s3_endpoint.client().head_object(Bucket=s3_bucket, Key="p/head.json")["ETag"] == etag


@pytest.mark.timeout(10)
def test_unreachable_endpoint_is_unavailable_fast(dead_s3_options):
    store = open_store("s3://bucket/prefix", dead_s3_options)      # opening does no I/O
    for call in (lambda: store.put_if_absent("k", b"x"), lambda: store.put_if_match("k", b"x", None),
                 lambda: store.get("k", 10), lambda: store.list(""), lambda: store.delete("k")):
        with pytest.raises(ReplicaUnavailableError, match="s3://bucket/prefix") as info:
            call()
        assert "127.0.0.1" in info.value.reason or "connect" in info.value.reason.lower()
    store.close()


def test_endpoint_stops_and_comes_back(stoppable_s3):
    bucket = stoppable_s3.new_bucket()
    store = open_store(f"s3://{bucket}/run", stoppable_s3.options())
    assert store.put_if_absent("chunks/a", b"a")
    stoppable_s3.stop()
    with pytest.raises(ReplicaUnavailableError):
        store.put_if_absent("chunks/b", b"b")
    with pytest.raises(ReplicaUnavailableError):
        store.get("chunks/a", 10)
    stoppable_s3.start()                                           # same port, same objects
    assert store.get("chunks/a", 10)[0] == b"a"
    assert store.put_if_absent("chunks/b", b"b") is True
    assert store.list("") == ["chunks/a", "chunks/b"]
    store.close()


def test_prefixes_share_a_bucket_without_seeing_each_other(s3_endpoint, s3_bucket):
    opts = s3_endpoint.options()
    with open_store(f"s3://{s3_bucket}/run1", opts) as a, open_store(f"s3://{s3_bucket}/run10", opts) as b, \
            open_store(f"s3://{s3_bucket}", opts) as root:
        a.put_if_absent("head.json", b"a")
        b.put_if_absent("head.json", b"b")
        assert a.list("") == ["head.json"] and b.list("") == ["head.json"]
        assert a.get("head.json", 1)[0] == b"a"
        assert root.list("") == ["run1/head.json", "run10/head.json"]
        assert root.list("run1/") == ["run1/head.json"]
        a.delete("head.json")
        assert b.get("head.json", 1)[0] == b"b"
        with pytest.raises(ObjectNotFoundError):
            a.get("head.json", 1)


def test_foreign_keys_in_the_bucket_are_not_listed(s3_endpoint, s3_bucket):
    """A key no writer of ours could make (a space, a hidden name, %) is not listed."""
    client = s3_endpoint.client()
    for key in ("p/ok", "p/sp ace", "p/.hidden", "p/a%2Fb"):
        client.put_object(Bucket=s3_bucket, Key=key, Body=b"x")
    with open_store(f"s3://{s3_bucket}/p", s3_endpoint.options()) as store:
        assert store.list("") == ["ok"]


@pytest.mark.parametrize("foreign", ["p/a/../b", "p/./c", "p/x//y"])
def test_unlistable_foreign_key_is_damage_naming_it(s3_endpoint, s3_bucket, foreign):
    """obstore cannot list past a key with a '..', '.' or empty part: the listing is refused
    as damage naming that key (never reported as an unreachable store, never a traceback)."""
    client = s3_endpoint.client()
    client.put_object(Bucket=s3_bucket, Key="p/ok", Body=b"x")
    client.put_object(Bucket=s3_bucket, Key=foreign, Body=b"x")
    with open_store(f"s3://{s3_bucket}/p", s3_endpoint.options()) as store:
        with pytest.raises(ReplicaDamageError, match=re.escape(foreign)):
            store.list("")
        assert store.get("ok", 1)[0] == b"x"                       # the rest stays readable


def test_stale_etag_from_another_client_is_refused(s3_endpoint, s3_bucket):
    opts = s3_endpoint.options()
    with open_store(f"s3://{s3_bucket}/p", opts) as mine, open_store(f"s3://{s3_bucket}/p", opts) as theirs:
        e1 = mine.put_if_match("head.json", b"term 1", None)
        theirs.put_if_match("head.json", b"term 2", e1)            # the other writer took over
        with pytest.raises(PreconditionFailedError, match="head.json"):
            mine.put_if_match("head.json", b"term 1 again", e1)
        assert mine.get("head.json", 100)[0] == b"term 2"


def test_s3_url_and_options_checked():
    with pytest.raises(ValueError, match="unknown options"):
        open_store("s3://bucket/p", {"endpoint": "http://x"})
    with pytest.raises(ValueError, match="s3://bucket/prefix"):
        open_store("s3:///nobucket")
    with pytest.raises(ValueError, match="invalid object key"):
        open_store("s3://bucket/a/../b", {})
    store = open_store("s3://bucket/run/1/", {"endpoint_url": "http://127.0.0.1:1"})
    assert isinstance(store, S3ObjectStore) and store.url == "s3://bucket/run/1"
    store.close()
