"""Shared fixtures: a moto S3 server over HTTP and clients for it."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable, Iterator

import pytest
from botocore.client import BaseClient


@pytest.fixture(scope="session")
def s3_endpoint_url() -> Iterator[str]:
    """A moto S3 server on a free local port, shared by the whole session."""
    from moto.server import ThreadedMotoServer

    # The server logs every request at INFO; failures stay readable without them.
    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


@pytest.fixture(scope="session")
def make_s3_client(s3_endpoint_url: str) -> Callable[..., BaseClient]:
    """Build S3 clients for the moto server through dagster-aws, as production does."""
    from dagster_aws.s3 import S3Resource

    def make(**options: object) -> BaseClient:
        return S3Resource(
            endpoint_url=s3_endpoint_url,
            region_name="us-east-1",
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
            **options,
        ).get_client()

    return make


@pytest.fixture(scope="session")
def s3_client(make_s3_client: Callable[..., BaseClient]) -> BaseClient:
    """One S3 client for the moto server, shared by the session."""
    return make_s3_client()


@pytest.fixture
def bucket_name() -> str:
    """A bucket name no other test uses (the moto server outlives each test)."""
    return f"test-{uuid.uuid4().hex[:16]}"
