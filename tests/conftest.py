"""Shared fixtures: a moto S3 server, SQLite and PostgreSQL databases, and pipelines on them."""

from __future__ import annotations

import logging
import secrets
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import psycopg
import pytest
from botocore.client import BaseClient
from psycopg import sql

from brightrun_pipeline.config import RetrySettings
from brightrun_pipeline.db.repository import Database
from brightrun_pipeline.service import Pipeline
from brightrun_pipeline.storage import LocalObjectStore, ObjectStore


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
    from resources import PooledS3Resource

    def make(**options: object) -> BaseClient:
        return PooledS3Resource(
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


# --- Databases: SQLite files and a throwaway PostgreSQL database ---------------------------

POSTGRES_ADMIN = "host=127.0.0.1 port=5432 user=postgres dbname=postgres connect_timeout=5"


def _postgres_admin() -> psycopg.Connection:
    try:
        return psycopg.connect(POSTGRES_ADMIN, autocommit=True)
    except psycopg.OperationalError as exc:
        pytest.fail(
            "PostgreSQL must be running on 127.0.0.1:5432 (user postgres, trust auth) for the "
            f"database tests; connecting failed: {exc}",
            pytrace=False,
        )


@pytest.fixture(scope="session")
def postgres_database() -> Iterator[str]:
    """A PostgreSQL database created for this session and dropped at its end."""
    name = f"brightrun_test_{secrets.token_hex(6)}"
    with _postgres_admin() as admin:
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    yield f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}"
    with _postgres_admin() as admin:
        admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(
            sql.Identifier(name)))


@pytest.fixture
def postgres_url(postgres_database: str) -> str:
    """The session's PostgreSQL database with an empty public schema."""
    dsn = postgres_database.replace("postgresql+psycopg://", "postgresql://", 1)
    with psycopg.connect(dsn, autocommit=True) as connection:
        # A connection left inside a transaction by an earlier test would block the drop forever.
        connection.execute("SET lock_timeout = '10s'")
        connection.execute("DROP SCHEMA public CASCADE")
        connection.execute("CREATE SCHEMA public")
    return postgres_database


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    """A SQLite database file of this test's own."""
    return f"sqlite:///{tmp_path / 'brightrun.db'}"


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest) -> str:
    """An empty database, once on SQLite and once on PostgreSQL."""
    fixture = {"sqlite": "sqlite_url", "postgresql": "postgres_url"}[request.param]
    return request.getfixturevalue(fixture)


@pytest.fixture
def make_database() -> Iterator[Callable[[str], Database]]:
    """Open Databases that are disposed of when the test ends."""
    opened: list[Database] = []

    def make(url: str) -> Database:
        database = Database(url)
        opened.append(database)
        return database

    yield make
    for database in opened:
        database.dispose()


# --- Pipelines --------------------------------------------------------------------------------

SOURCE_BUCKET = "conversation-files"
TRAINING_BUCKET = "training-files"


@pytest.fixture
def make_pipeline(
    database_url: str, tmp_path: Path, make_database: Callable[[str], Database],
) -> Callable[..., Pipeline]:
    """Pipelines on the test's database; each gets the given store or a local one under tmp_path."""

    def make(store: ObjectStore | None = None, *, attempts: int = 3,
             source_bucket: str = SOURCE_BUCKET,
             training_bucket: str = TRAINING_BUCKET) -> Pipeline:
        database = make_database(database_url)
        database.upgrade()
        store = store if store is not None else LocalObjectStore(tmp_path / "storage")
        store.ensure_bucket(source_bucket)
        store.ensure_bucket(training_bucket)
        return Pipeline(database, store, source_bucket=source_bucket,
                        training_bucket=training_bucket, fetch_concurrency=4,
                        retry=RetrySettings(attempts=attempts, base_delay=0.0, max_delay=0.0))

    return make


@pytest.fixture
def pipeline(make_pipeline: Callable[..., Pipeline]) -> Pipeline:
    """A pipeline on an upgraded, empty database and an empty local store."""
    return make_pipeline()
