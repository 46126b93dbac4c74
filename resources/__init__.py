"""Dagster resources that hand the domain layer its database, object stores and settings."""


import contextlib
from dataclasses import replace
from pathlib import Path
from typing import Any

import dagster as dg
from botocore.handlers import disable_signing
from dagster_aws.s3 import S3Resource
from pydantic import Field, PrivateAttr

from assets.partitions import REQUEST_TAG, TRAINING_FILE_TAG
from brightrun_pipeline.config import (
    LifecycleSettings,
    ReadinessSettings,
    RetrySettings,
    load_settings,
)
from brightrun_pipeline.db.repository import Database
from brightrun_pipeline.factory import open_database, open_store, s3_client
from brightrun_pipeline.liveness import Heartbeat
from brightrun_pipeline.service import Pipeline
from brightrun_pipeline.storage import ObjectStore


class DatabaseResource(dg.ConfigurableResource):
    """Our tables (SQLite or PostgreSQL) behind `brightrun_pipeline.db.Database`."""

    url: str
    _database: Database | None = PrivateAttr(default=None)

    def database(self) -> Database:
        """The database, connected lazily once per process."""
        if self._database is None:
            # Outside a run (e.g. the CLI after an in-process run) an EnvVar is not resolved yet.
            url = self.url.get_value() if isinstance(self.url, dg.EnvVar) else self.url
            if not url:
                raise ValueError("the database URL's environment variable is not set")
            self._database = open_database(replace(load_settings({}), database_url=url))
        return self._database


class PooledS3Resource(S3Resource):
    """dagster-aws's S3Resource whose client keeps `max_pool_connections` connections and makes
    one attempt per call.

    botocore's default pool of 10 would cap the source fetches in flight at 10. Storage calls
    are retried by the pipeline (brightrun_pipeline.retry, RetrySettings); botocore's retries
    underneath would multiply the attempts of every call, so they stay off. Everything else
    (credentials, endpoint) is configured as on S3Resource.
    """

    max_pool_connections: int = Field(default=32, ge=1,
                                      description="HTTP connections the client keeps open.")
    max_attempts: int = Field(
        default=0, ge=0, le=0,
        description="botocore's own retries per call: always 0, the pipeline retries instead.")
    connect_timeout: float | None = Field(
        default=None, gt=0, description="Seconds to connect; None keeps botocore's default.")
    read_timeout: float | None = Field(
        default=None, gt=0,
        description="Seconds to wait for a response's bytes; None keeps botocore's default.")

    def get_client(self) -> Any:
        client = s3_client(
            endpoint_url=self.endpoint_url, region_name=self.region_name,
            max_pool_connections=self.max_pool_connections,
            connect_timeout=self.connect_timeout, read_timeout=self.read_timeout,
            profile_name=self.profile_name, use_ssl=self.use_ssl, verify=self.verify,
            aws_access_key_id=self.aws_access_key_id,
            aws_secret_access_key=self.aws_secret_access_key,
            aws_session_token=self.aws_session_token)
        if self.use_unsigned_session:
            client.meta.events.register("choose-signer.s3.*", disable_signing)
        return client


class ObjectStoreResource(dg.ConfigurableResource):
    """Object storage: a local directory (one subdirectory per bucket) or S3 via dagster-aws."""

    backend: str = "local"
    root: str = ".brightrun/storage"
    endpoint_url: str | None = None
    region_name: str | None = None
    aws_access_key_id: str | None = None
    aws_secret_access_key: str | None = None
    max_pool_connections: int = 32

    def store(self) -> ObjectStore:
        """The configured object store."""
        settings = replace(load_settings({}), storage_backend=self.backend,
                           storage_root=Path(self.root), s3_endpoint_url=self.endpoint_url,
                           s3_region=self.region_name,
                           fetch_concurrency=self.max_pool_connections)
        return open_store(settings, aws_access_key_id=self.aws_access_key_id,
                          aws_secret_access_key=self.aws_secret_access_key)


class BrightRunResource(dg.ConfigurableResource):
    """The training-file service (`Pipeline`): rules, builder and publication."""

    database: dg.ResourceDependency[DatabaseResource]
    storage: dg.ResourceDependency[ObjectStoreResource]
    source_bucket: str = "conversation-files"
    training_bucket: str = "training-files"
    fetch_concurrency: int = 32
    fetch_attempts: int = RetrySettings.attempts
    fetch_base_delay: float = RetrySettings.base_delay
    fetch_max_delay: float = RetrySettings.max_delay
    heartbeat_seconds: float = LifecycleSettings.heartbeat_seconds
    stale_after_seconds: float = LifecycleSettings.stale_after_seconds
    request_attempts: int = LifecycleSettings.request_attempts
    build_wait_seconds: float = LifecycleSettings.build_wait_seconds
    context_tokens: int = ReadinessSettings.context_tokens
    long_response_tokens: int = ReadinessSettings.long_response_tokens

    _pipeline: Pipeline | None = PrivateAttr(default=None)
    _heartbeat: Heartbeat | None = PrivateAttr(default=None)

    def setup_for_execution(self, context: dg.InitResourceContext) -> None:
        """In a run, beat the run's heartbeat (and its request's) until the run ends: a run whose
        process dies stops beating, and the sensor fails it so that nothing waits on it."""
        run = context.run
        if run is None:
            return
        self._heartbeat = self.pipeline().keep_alive(
            run_id=run.run_id, training_file_id=run.tags.get(TRAINING_FILE_TAG),
            request_id=run.tags.get(REQUEST_TAG))
        self._heartbeat.__enter__()

    def teardown_after_execution(self, context: dg.InitResourceContext) -> None:
        """Stop the run's heartbeat and forget it (the run is over)."""
        if self._heartbeat is None or context.run is None:
            return
        self._heartbeat.close()
        self._heartbeat = None
        with contextlib.suppress(Exception):
            self.pipeline().db.end_beats(context.run.run_id)

    def pipeline(self) -> Pipeline:
        """The service the assets and sensors call."""
        if self._pipeline is None:
            settings = replace(
                load_settings({}), source_bucket=self.source_bucket,
                training_bucket=self.training_bucket, fetch_concurrency=self.fetch_concurrency,
                retry=RetrySettings(self.fetch_attempts, self.fetch_base_delay,
                                    self.fetch_max_delay),
                lifecycle=LifecycleSettings(self.heartbeat_seconds, self.stale_after_seconds,
                                            self.request_attempts, self.build_wait_seconds),
                readiness=ReadinessSettings(self.context_tokens, self.long_response_tokens))
            self._pipeline = Pipeline.from_settings(settings, self.database.database(),
                                                    self.storage.store())
        return self._pipeline
