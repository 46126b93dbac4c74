"""Running the training-file job in this process, on the configured Dagster instance."""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

from brightrun_pipeline.config import Settings

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
    settings: Settings, request_id: str, training_file_id: str
) -> RunOutcome:
    """Run the training-file job for one claimed request; the run shows in the Dagster UI."""
    from assets.partitions import REASON_TAG, REQUEST_TAG

    return run_partition_in_process(settings, training_file_id,
                                    {REQUEST_TAG: request_id, REASON_TAG: "request"})


def run_rematerialization_in_process(settings: Settings, training_file_id: str) -> RunOutcome:
    """Rebuild one training file from its changed sources, as a run of the training-file job."""
    from assets.partitions import REASON_TAG

    return run_partition_in_process(settings, training_file_id, {REASON_TAG: "rematerialize"})


def run_partition_in_process(settings: Settings, training_file_id: str,
                             tags: dict[str, str]) -> RunOutcome:
    """Run the training-file job for one partition in this process, on the configured instance."""
    import os

    import dagster as dg

    from assets.partitions import TRAINING_FILE_TAG, training_files_partitions
    from brightrun_pipeline.definitions import build_definitions
    from jobs import TRAINING_FILE_JOB

    home = ensure_dagster_home(settings)
    os.environ["DAGSTER_HOME"] = str(home)
    with dg.DagsterInstance.get() as instance:
        partitions = training_files_partitions.name
        assert partitions is not None
        if not instance.has_dynamic_partition(partitions, training_file_id):
            instance.add_dynamic_partitions(partitions, [training_file_id])
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

            restate_in_process(instance, defs.resources["brightrun"], training_file_id,
                               result.run_id)
        return RunOutcome(result.run_id, result.success)
