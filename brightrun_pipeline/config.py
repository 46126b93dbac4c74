"""The one place that reads configuration from the environment."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

DEFAULT_HOME = Path(".brightrun")
DATABASE_URL_VAR = "BRIGHTRUN_DATABASE_URL"
# Estimated Jaccard similarity (word 5-shingles of the target responses) from which a conversation
# is a near-duplicate of another (brightrun_pipeline.near_duplicates; docs/near_duplicates.md).
DEFAULT_NEAR_DUPLICATE_THRESHOLD = 0.65


@dataclass(frozen=True)
class RetrySettings:
    """Retry policy for transient storage errors: attempts of each storage call of a build
    (brightrun_pipeline.retry; the S3 client makes one attempt per call)."""

    attempts: int = 5
    base_delay: float = 0.2
    max_delay: float = 5.0


@dataclass(frozen=True)
class LifecycleSettings:
    """How claimed requests and builds show they are alive, and how failures are retried."""

    # A run, a build lease or a `--wait` claim beats this often while its process is alive ...
    heartbeat_seconds: float = 5.0
    # ... and is taken as abandoned (its process died) when no beat came for this long.
    stale_after_seconds: float = 30.0
    # Claims of one request in all (the first run and its automatic retries of transient
    # failures); permanent failures are never retried.
    request_attempts: int = 3
    # How long a build waits for another build of the same file to finish before it gives up
    # (a transient failure, retried like any other).
    build_wait_seconds: float = 900.0


@dataclass(frozen=True)
class ReadinessSettings:
    """The limits a version's readiness report warns against (brightrun_pipeline.readiness)."""

    # The context length of the model the file will train: an example whose tokens (prompt,
    # target and the chat format's framing) exceed it would be truncated.
    context_tokens: int = 4096
    # A target response with more tokens than this is listed as very long.
    long_response_tokens: int = 1024


@dataclass(frozen=True)
class Settings:
    """Everything the pipeline needs to know about where things live."""

    database_url: str
    storage_root: Path
    dagster_home: Path
    source_bucket: str = "conversation-files"
    training_bucket: str = "training-files"
    storage_backend: str = "local"
    s3_endpoint_url: str | None = None
    s3_region: str | None = None
    # The environment variable `database_url` came from, when it came from this process's
    # environment: the URL may hold a password, so Dagster resolves it from the variable itself.
    database_url_env: str | None = None
    fetch_concurrency: int = 32
    rematerialize_cron: str = "0 3 * * *"
    retry: RetrySettings = field(default_factory=RetrySettings)
    lifecycle: LifecycleSettings = field(default_factory=LifecycleSettings)
    near_duplicate_threshold: float = DEFAULT_NEAR_DUPLICATE_THRESHOLD
    readiness: ReadinessSettings = field(default_factory=ReadinessSettings)


def _int(env: dict[str, str], name: str, default: int) -> int:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError as exc:
        raise ValueError(f"{name} must be an integer, got {raw!r}") from exc
    if value < 1:
        raise ValueError(f"{name} must be at least 1, got {value}")
    return value


def _float(env: dict[str, str], name: str, default: float) -> float:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        return float(raw)
    except ValueError as exc:
        raise ValueError(f"{name} must be a number, got {raw!r}") from exc


def _choice(env: dict[str, str], name: str, choices: tuple[str, ...], default: str) -> str:
    value = env.get(name) or default
    if value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(choices)}, got {value!r}")
    return value


def load_settings(env: dict[str, str] | None = None) -> Settings:
    """Read BRIGHTRUN_* and DAGSTER_HOME, falling back to embedded defaults under ./.brightrun."""
    from_process = env is None
    env = dict(os.environ if env is None else env)
    home = Path(env.get("BRIGHTRUN_HOME") or DEFAULT_HOME)
    database_url = env.get(DATABASE_URL_VAR) or f"sqlite:///{home / 'brightrun.db'}"
    return Settings(
        database_url=database_url,
        database_url_env=DATABASE_URL_VAR if from_process and env.get(DATABASE_URL_VAR) else None,
        storage_root=Path(env.get("BRIGHTRUN_STORAGE_ROOT") or home / "storage"),
        dagster_home=Path(env.get("DAGSTER_HOME") or home / "dagster"),
        source_bucket=env.get("BRIGHTRUN_SOURCE_BUCKET") or "conversation-files",
        training_bucket=env.get("BRIGHTRUN_TRAINING_BUCKET") or "training-files",
        storage_backend=_choice(env, "BRIGHTRUN_STORAGE_BACKEND", ("local", "s3"), "local"),
        s3_endpoint_url=env.get("BRIGHTRUN_S3_ENDPOINT_URL") or None,
        s3_region=env.get("BRIGHTRUN_S3_REGION") or None,
        fetch_concurrency=_int(env, "BRIGHTRUN_FETCH_CONCURRENCY", 32),
        rematerialize_cron=env.get("BRIGHTRUN_REMATERIALIZE_CRON") or "0 3 * * *",
        retry=RetrySettings(
            attempts=_int(env, "BRIGHTRUN_FETCH_ATTEMPTS", 5),
            base_delay=_float(env, "BRIGHTRUN_FETCH_BASE_DELAY", 0.2),
            max_delay=_float(env, "BRIGHTRUN_FETCH_MAX_DELAY", 5.0),
        ),
        lifecycle=_lifecycle(env),
        near_duplicate_threshold=_threshold(env),
        readiness=ReadinessSettings(
            context_tokens=_int(env, "BRIGHTRUN_CONTEXT_TOKENS", ReadinessSettings.context_tokens),
            long_response_tokens=_int(env, "BRIGHTRUN_LONG_RESPONSE_TOKENS",
                                      ReadinessSettings.long_response_tokens),
        ),
    )


def _threshold(env: dict[str, str]) -> float:
    name = "BRIGHTRUN_NEAR_DUPLICATE_THRESHOLD"
    value = _float(env, name, DEFAULT_NEAR_DUPLICATE_THRESHOLD)
    if not 0 < value <= 1:
        raise ValueError(f"{name} must be above 0 and at most 1, got {value}")
    return value


def _lifecycle(env: dict[str, str]) -> LifecycleSettings:
    defaults = LifecycleSettings()
    settings = LifecycleSettings(
        heartbeat_seconds=_float(env, "BRIGHTRUN_HEARTBEAT_SECONDS", defaults.heartbeat_seconds),
        stale_after_seconds=_float(env, "BRIGHTRUN_STALE_AFTER_SECONDS",
                                   defaults.stale_after_seconds),
        request_attempts=_int(env, "BRIGHTRUN_REQUEST_ATTEMPTS", defaults.request_attempts),
        build_wait_seconds=_float(env, "BRIGHTRUN_BUILD_WAIT_SECONDS",
                                  defaults.build_wait_seconds),
    )
    if not 0 < settings.heartbeat_seconds < settings.stale_after_seconds:
        raise ValueError("BRIGHTRUN_HEARTBEAT_SECONDS must be positive and less than "
                         "BRIGHTRUN_STALE_AFTER_SECONDS")
    return settings
