"""Running the training-file job in this process, on the configured Dagster instance."""

from __future__ import annotations

import logging
import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from brightrun_pipeline.config import Settings

if TYPE_CHECKING:
    from dagster import DagsterInstance

    from brightrun_pipeline.service import Pipeline

logger = logging.getLogger(__name__)
REPO_DAGSTER_YAML = Path(__file__).resolve().parent.parent / "dagster.yaml"


def ensure_dagster_home(settings: Settings) -> Path:
    """Create DAGSTER_HOME with the repository's dagster.yaml if it has none yet."""
    home = settings.dagster_home.resolve()
    home.mkdir(parents=True, exist_ok=True)
    target = home / "dagster.yaml"
    if not target.exists() and REPO_DAGSTER_YAML.exists():
        shutil.copyfile(REPO_DAGSTER_YAML, target)
    return home


@dataclass(frozen=True)
class RunOutcome:
    """The Dagster run that processed a request."""

    run_id: str
    success: bool


def run_request_in_process(
    settings: Settings, request_id: str, training_file_id: str, attempt: int | None = None,
) -> RunOutcome:
    """Run the training-file job for one claimed request; the run shows in the Dagster UI."""
    from assets.partitions import ATTEMPT_TAG, REASON_TAG, REQUEST_TAG

    tags = {REQUEST_TAG: request_id, REASON_TAG: "request"}
    if attempt is not None:
        tags[ATTEMPT_TAG] = str(attempt)
    return run_partition_in_process(settings, training_file_id, tags)


TERMINAL_STATUSES = ("succeeded", "rejected", "failed")
# A daemon heartbeats every 30 s; one older than this means no daemon is running.
DAEMON_SILENCE_SECONDS = 75.0


def daemon_running(settings: Settings) -> bool:
    """Whether a Dagster daemon (its sensor loop) is alive on the configured instance."""
    import time

    with _instance(settings) as instance:
        beat = instance.get_daemon_heartbeats().get("SENSOR")
        return beat is not None and time.time() - beat.timestamp < DAEMON_SILENCE_SECONDS


def process_in_this_process(settings: Settings, pipeline: Pipeline, request_id: str) -> None:
    """Claim a pending request and run it here until it ends, retrying transient failures
    while attempts last. First recovers what dead processes left on the instance."""
    from brightrun_pipeline.errors import AttemptLost
    from brightrun_pipeline.service import CLI_HOLDER
    from sensors.recovery import recover

    with _instance(settings) as instance:
        recover(instance, pipeline)
    while (valid := pipeline.claim(request_id, holder=CLI_HOLDER)) is not None:
        claimed = pipeline.db.get_request(request_id)
        assert claimed is not None
        outcome = run_request_in_process(settings, request_id, valid.target_file_id,
                                         claimed.attempts)
        # A run that failed before its steps could record anything leaves its claim open.
        pipeline.record_failure([request_id], AttemptLost(
            f"run {outcome.run_id} ended without recording an outcome"), outcome.run_id,
            attempt=claimed.attempts)


def wait_for_request(settings: Settings, pipeline: Pipeline, request_id: str,
                     on_change: Callable[[str], None], poll_seconds: float = 0.5) -> None:
    """Follow a request the daemon processes until it ends; if the daemon stops and the
    request is still unclaimed, process it here instead."""
    import time

    last = None
    checked_daemon = time.monotonic()
    while True:
        request = pipeline.db.get_request(request_id)
        assert request is not None
        if request.status != last:
            last = request.status
            on_change(request.status)
        if request.status in TERMINAL_STATUSES:
            return
        if (request.status == "pending"
                and time.monotonic() - checked_daemon > DAEMON_SILENCE_SECONDS / 3):
            checked_daemon = time.monotonic()
            if not daemon_running(settings):
                process_in_this_process(settings, pipeline, request_id)
                continue
        time.sleep(poll_seconds)


@contextmanager
def _instance(settings: Settings) -> Iterator[DagsterInstance]:
    import os

    import dagster as dg

    os.environ["DAGSTER_HOME"] = str(ensure_dagster_home(settings))
    with dg.DagsterInstance.get() as instance:
        yield instance


def ensure_partition(instance: DagsterInstance, partitions: str, key: str) -> None:
    """Add one dynamic partition unless it is there, when other processes may add it at once.

    Dagster's SQLite storage adds a partition by reading which exist and then inserting, so two
    CLIs that run requests for one new file can both insert it: the loser's unique-constraint
    error only means the partition now exists.
    """
    from sqlalchemy.exc import IntegrityError

    if instance.has_dynamic_partition(partitions, key):
        return
    try:
        instance.add_dynamic_partitions(partitions, [key])
    except IntegrityError:
        if not instance.has_dynamic_partition(partitions, key):
            raise


def run_rematerialization_in_process(settings: Settings, training_file_id: str) -> RunOutcome:
    """Rebuild one training file from its changed sources, as a run of the training-file job."""
    from assets.partitions import REASON_TAG

    return run_partition_in_process(settings, training_file_id, {REASON_TAG: "rematerialize"})


def run_partition_in_process(settings: Settings, training_file_id: str,
                             tags: dict[str, str]) -> RunOutcome:
    """Run the training-file job for one partition in this process, on the configured instance."""
    from assets.partitions import TRAINING_FILE_TAG, training_files_partitions
    from brightrun_pipeline.definitions import build_definitions
    from jobs import TRAINING_FILE_JOB

    with _instance(settings) as instance:
        partitions = training_files_partitions.name
        assert partitions is not None
        ensure_partition(instance, partitions, training_file_id)
        defs = build_definitions(settings)
        job = defs.resolve_job_def(TRAINING_FILE_JOB)
        result = job.execute_in_process(
            instance=instance,
            partition_key=training_file_id,
            tags={**tags, TRAINING_FILE_TAG: training_file_id, "brightrun/launched_by": "cli"},
            raise_on_error=False,
            # The CLI prints the outcome itself (a failed request names its conversation); the
            # step errors with their stack traces stay in the run's event log in the Dagster UI.
            run_config={"loggers": {"console": {"config": {"log_level": "CRITICAL"}}}},
        )
        if not result.success:
            from sensors.restatement import restate_in_process

            try:
                restate_in_process(instance, defs.resources["brightrun"], training_file_id,
                                   result.run_id)
            except Exception as error:  # noqa: BLE001 - the request's outcome stands as recorded
                # Only the UI's view of the partition waits for the failure sensor to restate it.
                logger.warning("could not restate training file %s after run %s: %s",
                               training_file_id, result.run_id, error)
        return RunOutcome(result.run_id, result.success)
