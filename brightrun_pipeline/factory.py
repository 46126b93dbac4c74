"""The one place that turns `Settings` into the database, the object store and the service.

The CLI, the Dagster resources and the web console all open what they need here, so that a
setting means the same thing behind every front door.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from brightrun_pipeline.config import Settings
from brightrun_pipeline.db.repository import Database
from brightrun_pipeline.service import Pipeline
from brightrun_pipeline.storage import LocalObjectStore, ObjectStore


def s3_client(*, endpoint_url: str | None, region_name: str | None,
              max_pool_connections: int, connect_timeout: float | None = None,
              read_timeout: float | None = None, **session: Any) -> Any:
    """A boto3 S3 client that makes one attempt per call (brightrun_pipeline.retry retries) and
    keeps `max_pool_connections` connections (botocore's 10 would cap fetches in flight).

    `session` holds what boto3 accepts for credentials (aws_access_key_id, profile_name, …);
    anything left out comes from the environment as boto3 reads it.
    """
    import boto3
    from botocore.config import Config

    timeouts = {name: value for name, value in (("connect_timeout", connect_timeout),
                                                ("read_timeout", read_timeout))
                if value is not None}
    config = Config(retries={"max_attempts": 0, "mode": "standard"},
                    max_pool_connections=max_pool_connections, **timeouts)
    profile = session.pop("profile_name", None)
    return boto3.session.Session(profile_name=profile).client(
        "s3", region_name=region_name, endpoint_url=endpoint_url, config=config,
        **{key: value for key, value in session.items() if value is not None})


def open_store(settings: Settings, **credentials: Any) -> ObjectStore:
    """The configured object store: a local directory, or S3 (credentials from the arguments or
    boto3's usual chain)."""
    if settings.storage_backend == "local":
        return LocalObjectStore(settings.storage_root)
    if settings.storage_backend == "s3":
        from brightrun_pipeline.s3_store import S3ObjectStore

        return S3ObjectStore(s3_client(endpoint_url=settings.s3_endpoint_url,
                                       region_name=settings.s3_region,
                                       max_pool_connections=settings.fetch_concurrency,
                                       **credentials))
    raise ValueError(f"unknown storage backend {settings.storage_backend!r} "
                     "(expected 'local' or 's3')")


def open_database(settings: Settings) -> Database:
    """The pipeline's database (connections open lazily, on first use)."""
    return Database(settings.database_url)


@dataclass
class Services:
    """What a front door works with: its settings, the database, the store and the service."""

    settings: Settings
    pipeline: Pipeline

    @property
    def db(self) -> Database:
        return self.pipeline.db

    @property
    def store(self) -> ObjectStore:
        return self.pipeline.store

    def close(self) -> None:
        """Release pooled database connections."""
        self.pipeline.db.dispose()


def open_services(settings: Settings) -> Services:
    """Everything a front door needs, from one `Settings`."""
    return Services(settings, Pipeline.from_settings(settings, open_database(settings),
                                                     open_store(settings)))
