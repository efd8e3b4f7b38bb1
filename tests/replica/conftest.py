"""Fixtures for replica tests: a real S3 HTTP endpoint (moto's server on 127.0.0.1) and a
file:// replica, so every test talks to a store over its real protocol; no mocked client.

- `s3_endpoint`: one moto server for the session (port chosen by the kernel); `.options()`
  gives the store options (endpoint, dummy credentials: never put in os.environ) and
  `.new_bucket()` creates a fresh bucket.
- `replica_url`: parametrized over "file" and "s3": (url, options) of an empty replica,
  a fresh directory or a fresh bucket per test.
- `stoppable_s3`: a moto server of the test's own on a fixed port, with `.stop()` (the
  port then refuses connections) and `.start()` (same port, same objects: moto keeps its
  state in the process), for "the endpoint stops mid-upload and comes back".
- `dead_s3_options`: options naming a port nothing listens on, with short timeouts.

The s3 params skip with a reason where moto[server] or obstore is not installed; CI
installs both (the `test` and `s3` extras).
"""

from __future__ import annotations

import logging
import os
import socket
import uuid

import pytest

try:
    from moto.server import ThreadedMotoServer
except ImportError:  # pragma: no cover - CI installs moto[server]
    ThreadedMotoServer = None

class _AtomicWrites:
    """WSGI middleware: one mutating request (PUT, POST, DELETE) at a time.

    S3 applies a conditional write (If-None-Match, If-Match) atomically; moto checks the
    condition and then writes, so two racing creators can both win under load (seen in
    tests/replica/test_objects.py::test_concurrent_creators_exactly_one_wins on a loaded
    2-core machine). Serialising mutations gives the test server S3's semantics; reads
    stay concurrent. Our code sends each conditional write as one request, so this hides
    nothing of ours."""

    def __init__(self, app):
        import threading

        self.app = app
        self.lock = threading.Lock()

    def __call__(self, environ, start_response):
        if environ.get("REQUEST_METHOD") in ("PUT", "POST", "DELETE"):
            with self.lock:
                return list(self.app(environ, start_response))
        return self.app(environ, start_response)


if ThreadedMotoServer is not None:
    class _AtomicMotoServer(ThreadedMotoServer):
        """ThreadedMotoServer whose app is wrapped in _AtomicWrites (same server otherwise)."""

        def _server_entry(self) -> None:
            from moto.server import DomainDispatcherApplication, create_backend_app
            from moto.moto_server.werkzeug_app import MotoRequestHandler
            from werkzeug.serving import make_server

            app = _AtomicWrites(DomainDispatcherApplication(create_backend_app))
            self._server = make_server(self._ip_address, self._port, app, True, request_handler=MotoRequestHandler)
            self._server_ready_event.set()
            self._server.serve_forever()

NO_MOTO = "moto[server] is not installed (pip install 'moto[server]'): no local S3 endpoint"
if os.environ.get("CI"):
    # CI installs the test extras: a replica test must never skip there silently.
    if ThreadedMotoServer is None:
        raise RuntimeError(f"CI: {NO_MOTO}")
    import obstore  # noqa: F401 - an ImportError here, not a skip
REGION = "us-east-1"

# Timeouts short enough that a dead endpoint fails a test in well under 2 s, long enough
# for moto on a loaded 2-core machine.
FAST_OPTIONS = {"connect_timeout": 0.5, "request_timeout": 5.0, "max_retries": 1}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class MotoEndpoint:
    """A moto S3 server on 127.0.0.1 that can be stopped (port closed) and started again."""

    def __init__(self, port: int = 0):
        self.port = port
        self._server = None

    @property
    def endpoint_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> "MotoEndpoint":
        assert self._server is None, "already running"
        server = _AtomicMotoServer(ip_address="127.0.0.1", port=self.port, verbose=False)
        server.start()
        self.port = server.get_host_and_port()[1]
        self._server = server
        return self

    def stop(self) -> None:
        """Shut the server down and close its listening socket: connections are refused after."""
        server, self._server = self._server, None
        if server is not None:
            server.stop()
            # ThreadedMotoServer.stop() leaves the socket bound and listening (connections
            # would hang in the backlog instead of being refused).
            server._server.server_close()

    def options(self, **extra) -> dict:
        return {"endpoint_url": self.endpoint_url, "region": REGION, "access_key_id": "testing",
                "secret_access_key": "testing", **FAST_OPTIONS, **extra}

    def client(self):
        """A plain boto3 client on this endpoint (test set-up only: buckets, raw checks)."""
        import boto3
        from botocore.config import Config
        return boto3.client("s3", endpoint_url=self.endpoint_url, region_name=REGION,
                            aws_access_key_id="testing", aws_secret_access_key="testing",
                            config=Config(retries={"max_attempts": 1}, connect_timeout=2, read_timeout=10))

    def new_bucket(self) -> str:
        name = f"replica-{uuid.uuid4().hex[:16]}"
        self.client().create_bucket(Bucket=name)
        return name


@pytest.fixture(scope="session")
def s3_endpoint():
    if ThreadedMotoServer is None:
        pytest.skip(NO_MOTO)
    # werkzeug logs every request at INFO; keep test output readable.
    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    endpoint = MotoEndpoint().start()
    yield endpoint
    endpoint.stop()


@pytest.fixture
def s3_bucket(s3_endpoint):
    """A fresh, empty bucket on the session's endpoint."""
    return s3_endpoint.new_bucket()


@pytest.fixture(params=["file", "s3"])
def replica_url(request, tmp_path):
    """(url, options) of an empty replica: a fresh directory, or a fresh bucket with a prefix."""
    if request.param == "file":
        return (tmp_path / "replica").as_uri(), {}
    pytest.importorskip("obstore", reason="obstore is not installed (pip install 'torch-eventlog[s3]')")
    endpoint = request.getfixturevalue("s3_endpoint")
    return f"s3://{endpoint.new_bucket()}/run1", endpoint.options()


@pytest.fixture
def stoppable_s3():
    if ThreadedMotoServer is None:
        pytest.skip(NO_MOTO)
    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    endpoint = MotoEndpoint(free_port()).start()
    yield endpoint
    endpoint.stop()


@pytest.fixture
def dead_s3_options():
    """Options for an endpoint on 127.0.0.1 where nothing listens (connection refused)."""
    return {"endpoint_url": f"http://127.0.0.1:{free_port()}", "region": REGION,
            "access_key_id": "testing", "secret_access_key": "testing", **FAST_OPTIONS}
