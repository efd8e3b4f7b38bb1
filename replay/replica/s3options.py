"""The options of an ``s3://`` replica, as users spell them, turned into obstore's settings.

What is not given here comes from the environment, exactly as the AWS tools read it
(obstore reads ``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``, ``AWS_SESSION_TOKEN``,
``AWS_ENDPOINT_URL``/``AWS_ENDPOINT_URL_S3``, ``AWS_REGION``/``AWS_DEFAULT_REGION`` and
the rest of ``AWS_*`` itself), so the standard variables alone are a complete
configuration. The one setting decided here is whether plain http is allowed: an
explicit ``allow_http`` option wins, then ``AWS_ALLOW_HTTP``, then the endpoint's scheme
(an ``http://`` endpoint, given or from the environment, is allowed: a user who names
one means it). Passing ``allow_http=False`` regardless, as this module once did,
overrode the environment and failed with reqwest's bare "builder error".

Accepted option names: ours (obstore's, with the units we document) and the spellings
users bring from s3fs and boto3, each mapped to one of ours (`ALIASES`). s3fs's nested
``client_kwargs={"endpoint_url": ..., "region_name": ...}`` is accepted as a dict or, on
the command line, as ``client_kwargs.endpoint_url=...``. An unknown name is ValueError
listing every accepted one; two spellings of one option with different values are
ValueError naming both.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Mapping

OPTIONS = ("endpoint_url", "region", "access_key_id", "secret_access_key", "session_token", "allow_http",
           "connect_timeout", "request_timeout", "max_retries", "retry_timeout")

ALIASES = {
    # s3fs (fsspec)
    "key": "access_key_id", "secret": "secret_access_key", "token": "session_token",
    "client_kwargs.endpoint_url": "endpoint_url", "client_kwargs.region_name": "region",
    # boto3 / botocore
    "aws_access_key_id": "access_key_id", "aws_secret_access_key": "secret_access_key",
    "aws_session_token": "session_token", "region_name": "region", "aws_endpoint_url": "endpoint_url",
    # obstore / object_store's own names
    "aws_region": "region", "token_id": "session_token",
}

_ENDPOINT_ENV = ("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL", "AWS_ENDPOINT")
_TRUE, _FALSE = {"true", "1", "yes", "on"}, {"false", "0", "no", "off", ""}


def accepted() -> str:
    """One line naming every accepted option and its other spellings."""
    spellings = {name: [a for a, canonical in ALIASES.items() if canonical == name] for name in OPTIONS}
    return ", ".join(name + (f" (or {', '.join(spellings[name])})" if spellings[name] else "")
                     for name in OPTIONS)


def canonical(options: Mapping | None, where: str) -> dict:
    """`options` with every spelling mapped to ours (`OPTIONS`); ValueError naming `where`
    for an unknown name, a client_kwargs that is not a dict, or two spellings disagreeing."""
    flat: list[tuple[str, object]] = []
    for name, value in dict(options or {}).items():
        if name == "client_kwargs":
            if not isinstance(value, Mapping):
                raise ValueError(f"option client_kwargs for {where} must be a dict (s3fs's "
                                 f"{{'endpoint_url': ..., 'region_name': ...}}), got {type(value).__name__}")
            flat.extend((f"client_kwargs.{k}", v) for k, v in value.items())
        else:
            flat.append((str(name), value))
    out: dict = {}
    given: dict = {}
    unknown = []
    for name, value in flat:
        target = name if name in OPTIONS else ALIASES.get(name)
        if target is None:
            unknown.append(name)
            continue
        if target in out and out[target] != value:
            raise ValueError(f"options {given[target]!r} and {name!r} for {where} both set {target}, to different "
                             "values: give one")
        out[target], given[target] = value, name
    if unknown:
        raise ValueError(f"unknown options for {where}: {sorted(unknown)}; accepted: {accepted()}")
    return out


def flag(value, name: str) -> bool:
    """A boolean option or environment value: a bool, or one of true/false, 1/0, yes/no, on/off."""
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise ValueError(f"{name} must be true or false, got {value!r}")


def allow_http(options: Mapping, environ: Mapping) -> bool | None:
    """Whether to allow plain http (see the module doc); None leaves obstore's default (https only)."""
    if "allow_http" in options:
        return flag(options["allow_http"], "option allow_http")
    if environ.get("AWS_ALLOW_HTTP") is not None:
        return flag(environ["AWS_ALLOW_HTTP"], "AWS_ALLOW_HTTP")
    endpoint = options.get("endpoint_url") or next((environ[k] for k in _ENDPOINT_ENV if environ.get(k)), None)
    if endpoint and str(endpoint).lower().startswith("http://"):
        return True
    return None


def obstore_settings(options: Mapping | None, environ: Mapping, where: str) -> tuple[dict, dict, dict]:
    """(config, client_options, retry_config) for ``obstore.store.S3Store``: only what `options`
    sets goes into config (the rest obstore reads from the environment), timeouts and retries
    with our defaults (connect 5 s, request 60 s, 3 retries within 30 s)."""
    opts = canonical(options, where)
    config = {key: opts[name] for name, key in (("endpoint_url", "endpoint"), ("region", "region"),
                                                ("access_key_id", "access_key_id"),
                                                ("secret_access_key", "secret_access_key"),
                                                ("session_token", "token")) if opts.get(name) is not None}
    client = {"connect_timeout": timedelta(seconds=float(opts.get("connect_timeout", 5.0))),
              "timeout": timedelta(seconds=float(opts.get("request_timeout", 60.0)))}
    http = allow_http(opts, environ)
    if http is not None:
        client["allow_http"] = http
    retry = {"max_retries": int(opts.get("max_retries", 3)),
             "retry_timeout": timedelta(seconds=float(opts.get("retry_timeout", 30.0))),
             "backoff": {"init_backoff": timedelta(milliseconds=100), "max_backoff": timedelta(seconds=2),
                         "base": 2}}
    return config, client, retry
