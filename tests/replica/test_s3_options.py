"""S3 replica configuration (issue 19, item 10): the standard AWS environment variables
alone configure every replica path (ship, restore, the CLI), against moto's real HTTP
endpoint; options also take the spellings users bring from s3fs and boto3, and an unknown
one is refused with the accepted names. Before: with AWS_ENDPOINT_URL=http://...,
AWS_ALLOW_HTTP=true and no options, restore failed with reqwest's bare "builder error"
(allow_http=False was passed explicitly, overriding the environment)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from replay.replica import s3options
from replay.replica.objects import open_store
from replay.replica.restore import restore

from .test_shipping import apply_n, assert_state, open_journal, ship

pytestmark = pytest.mark.timeout(120)
ROOT = Path(__file__).resolve().parents[2]
AWS_VARS = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL",
            "AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT", "AWS_ALLOW_HTTP", "AWS_REGION", "AWS_DEFAULT_REGION",
            "AWS_PROFILE", "AWS_CONFIG_FILE", "AWS_SHARED_CREDENTIALS_FILE")


def _aws_env(endpoint_url: str, allow_http: bool = True) -> dict:
    env = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_ENDPOINT_URL": endpoint_url}
    if allow_http:
        env["AWS_ALLOW_HTTP"] = "true"
    return env


@pytest.fixture
def aws_environment(monkeypatch):
    """set(env): only these AWS_* variables in os.environ for the test."""
    pytest.importorskip("obstore")
    for name in AWS_VARS:
        monkeypatch.delenv(name, raising=False)

    def set_env(env: dict) -> None:
        for name, value in env.items():
            monkeypatch.setenv(name, value)

    return set_env


@pytest.mark.parametrize("allow_http", [True, False], ids=["AWS_ALLOW_HTTP", "http-endpoint-only"])
def test_the_aws_environment_alone_configures_ship_and_restore(tmp_path, s3_endpoint, aws_environment, allow_http):
    aws_environment(_aws_env(s3_endpoint.endpoint_url, allow_http))
    url = f"s3://{s3_endpoint.new_bucket()}/run"
    with open_journal(tmp_path / "a", replica=url, ship_interval=0.05) as journal:   # no replica_options
        apply_n(journal, 5)
        journal.flush(replica=True, timeout=60)
    report = restore(url, tmp_path / "b")                          # no options at all
    assert report.head_index == 5
    with open_journal(tmp_path / "b") as copy:
        assert copy.index == 5
        assert_state(copy.state, 5)


def test_the_cli_restores_with_the_aws_environment_alone(tmp_path, s3_endpoint):
    """`replay restore s3://...` in a fresh process whose only configuration is AWS_*."""
    pytest.importorskip("obstore")
    url = f"s3://{s3_endpoint.new_bucket()}/run"
    with open_journal(tmp_path / "a") as journal:
        shipper = ship(journal, url, s3_endpoint.options())
        apply_n(journal, 9)
        journal.flush()
        shipper.wait(9, timeout=60)
        shipper.close(timeout=30)
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update(_aws_env(s3_endpoint.endpoint_url), PYTHONPATH=str(ROOT))
    done = subprocess.run([sys.executable, "-m", "replay", "restore", url, str(tmp_path / "b")], env=env,
                          capture_output=True, text=True, timeout=90, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    assert "at index 9" in done.stdout and "builder error" not in done.stderr
    with open_journal(tmp_path / "b") as copy:
        assert_state(copy.state, 9)


def test_s3fs_and_boto3_spellings_work(tmp_path, s3_endpoint, aws_environment):
    aws_environment({})
    bucket = s3_endpoint.new_bucket()
    s3fs_style = {"key": "testing", "secret": "testing",
                  "client_kwargs": {"endpoint_url": s3_endpoint.endpoint_url, "region_name": "us-east-1"}}
    boto3_style = {"aws_access_key_id": "testing", "aws_secret_access_key": "testing",
                   "endpoint_url": s3_endpoint.endpoint_url, "region_name": "us-east-1"}
    cli_style = {"key": "testing", "secret": "testing", "client_kwargs.endpoint_url": s3_endpoint.endpoint_url}
    with open_store(f"s3://{bucket}/p", s3fs_style) as store:
        assert store.put_if_absent("a", b"1")
    for options in (boto3_style, cli_style):
        with open_store(f"s3://{bucket}/p", options) as store:
            assert store.get("a", 10)[0] == b"1"


def test_unknown_or_conflicting_options_are_refused_naming_the_accepted_ones():
    pytest.importorskip("obstore")
    with pytest.raises(ValueError) as info:
        open_store("s3://bucket/p", {"endpoint": "http://x", "key": "k"})
    message = str(info.value)
    assert "unknown options for s3://bucket/p: ['endpoint']" in message
    for name in (*s3options.OPTIONS, "key", "secret", "token", "client_kwargs.endpoint_url", "region_name"):
        assert name in message
    with pytest.raises(ValueError, match="'key' and 'access_key_id'|'access_key_id' and 'key'"):
        open_store("s3://bucket/p", {"key": "a", "access_key_id": "b"})
    with pytest.raises(ValueError, match="client_kwargs .* must be a dict"):
        open_store("s3://bucket/p", {"client_kwargs": "http://x"})
    with pytest.raises(ValueError, match="allow_http must be true or false"):
        open_store("s3://bucket/p", {"allow_http": "maybe"})


def test_allow_http_follows_the_option_then_the_environment_then_the_endpoint():
    decide = s3options.allow_http
    assert decide({}, {}) is None                                          # obstore's default: https only
    assert decide({"endpoint_url": "https://s3.example"}, {}) is None
    assert decide({"endpoint_url": "http://minio:9000"}, {}) is True
    assert decide({}, {"AWS_ENDPOINT_URL": "http://minio:9000"}) is True
    assert decide({}, {"AWS_ENDPOINT_URL": "http://minio:9000", "AWS_ALLOW_HTTP": "false"}) is False
    assert decide({"allow_http": False}, {"AWS_ENDPOINT_URL": "http://minio:9000"}) is False
    assert decide({}, {"AWS_ALLOW_HTTP": "TRUE"}) is True
