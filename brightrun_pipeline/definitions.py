"""The Dagster code location: assets, checks, jobs, sensors and resources wired together."""

from __future__ import annotations

import dagster as dg

from assets.catalog import enriched_conversations
from assets.training_files import (
    training_file_membership,
    training_file_objects,
    training_file_version,
)
from brightrun_pipeline.config import Settings, load_settings
from jobs import catalog_job, training_file_job
from resources import BrightRunResource, DatabaseResource, ObjectStoreResource
from sensors import (
    build_rematerialize_schedule,
    request_canceled_sensor,
    request_failure_sensor,
    request_success_sensor,
    selection_request_sensor,
)


def _database_url(settings: Settings) -> str:
    # An EnvVar keeps a password out of the resource config the Dagster UI and run records
    # show; the embedded default (a SQLite path) has none.
    if settings.database_url_env:
        return dg.EnvVar(settings.database_url_env)
    return settings.database_url


def build_resources(settings: Settings) -> dict[str, object]:
    """Resources configured from the environment settings."""
    storage = ObjectStoreResource(
        backend=settings.storage_backend,
        root=str(settings.storage_root),
        endpoint_url=settings.s3_endpoint_url,
        region_name=settings.s3_region,
        max_pool_connections=settings.fetch_concurrency,
    )
    return {
        "brightrun": BrightRunResource(
            database=DatabaseResource(url=_database_url(settings)),
            storage=storage,
            source_bucket=settings.source_bucket,
            training_bucket=settings.training_bucket,
            fetch_concurrency=settings.fetch_concurrency,
            fetch_attempts=settings.retry.attempts,
            fetch_base_delay=settings.retry.base_delay,
            fetch_max_delay=settings.retry.max_delay,
            heartbeat_seconds=settings.lifecycle.heartbeat_seconds,
            stale_after_seconds=settings.lifecycle.stale_after_seconds,
            request_attempts=settings.lifecycle.request_attempts,
            build_wait_seconds=settings.lifecycle.build_wait_seconds,
            context_tokens=settings.readiness.context_tokens,
            long_response_tokens=settings.readiness.long_response_tokens,
        ),
    }


def build_definitions(settings: Settings | None = None) -> dg.Definitions:
    """The code location's definitions for the given (or the environment's) settings."""
    settings = settings or load_settings()
    return dg.Definitions(
        assets=[enriched_conversations, training_file_membership, training_file_objects,
                training_file_version],
        jobs=[training_file_job, catalog_job],
        sensors=[selection_request_sensor, request_failure_sensor, request_canceled_sensor,
                 request_success_sensor],
        schedules=[build_rematerialize_schedule(settings.rematerialize_cron)],
        resources=build_resources(settings),
    )


defs = build_definitions()
