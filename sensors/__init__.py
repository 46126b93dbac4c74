"""Sensors and schedules: selection requests become runs, run outcomes flow back to requests,
and training files with changed sources are rebuilt."""

import time

import dagster as dg

from assets.partitions import (
    ATTEMPT_TAG,
    REASON_TAG,
    REQUEST_TAG,
    TRAINING_FILE_TAG,
    training_files_partitions,
)
from brightrun_pipeline.db.repository import Database
from brightrun_pipeline.errors import AttemptLost, ProcessingFailed
from brightrun_pipeline.models import SelectionRequest
from brightrun_pipeline.service import SENSOR_HOLDER
from jobs import training_file_job
from resources import BrightRunResource
from sensors.recovery import recover
from sensors.restatement import restate_after_failed_run

PAGE_SIZE = 50
# Stay well inside the 60 s sensor evaluation limit.
TICK_BUDGET_SECONDS = 40.0


TRAINING_FILES = training_files_partitions.name or "training_files"


def _all_requests(db: Database, status: str, deadline: float) -> list[SelectionRequest]:
    """Every request in a status, read in keyset pages while the tick has time left."""
    found: list[SelectionRequest] = []
    after = None
    while time.monotonic() < deadline:
        page = db.list_requests(status=status, limit=PAGE_SIZE, after_id=after)
        found.extend(page)
        if len(page) < PAGE_SIZE:
            break
        after = page[-1].id
    return found


def request_run_key(request_id: str, attempt: int) -> str:
    """The run key of one claim of a request: a retry is a new claim, hence a new key."""
    return f"selection-request:{request_id}:{attempt}"


@dg.sensor(
    job=training_file_job,
    minimum_interval_seconds=2,
    default_status=dg.DefaultSensorStatus.RUNNING,
)
def selection_request_sensor(
    context: dg.SensorEvaluationContext, brightrun: BrightRunResource
) -> dg.SensorResult:
    """Turn each pending selection request into one run of the training-file job (or reject it),
    and recover the work of processes that died."""
    pipeline = brightrun.pipeline()
    db = pipeline.db
    deadline = time.monotonic() + TICK_BUDGET_SECONDS
    recovered = recover(context.instance, pipeline)
    if recovered:
        context.log.warning(
            f"recovered: {len(recovered.failed_runs)} abandoned run(s) failed "
            f"{recovered.failed_runs}, {len(recovered.ended_attempts)} attempt(s) ended "
            f"{recovered.ended_attempts}, {len(recovered.handed_over)} claim(s) handed over "
            f"{recovered.handed_over}")
    rejected = 0
    # Claim pending requests a page at a time. A claim is a conditional update, so a tick that
    # runs twice (at-least-once delivery) cannot claim a request twice.
    for request in _all_requests(db, "pending", deadline):
        valid = pipeline.claim(request.id)
        if valid is None:
            rejected += 1
        elif valid.warnings:
            context.log.warning(
                f"request {request.id}: {len(valid.warnings)} near-duplicate conversation(s) "
                "(the file warns rather than blocks): " + "; ".join(
                    f"{cid}: {reason}" for cid, reason in valid.warnings.items()))
    # Every claimed request that has not started yet gets its run request, oldest first so that
    # requests for one file run in the order they were made. The run key makes the daemon launch
    # it once even if it is emitted on several ticks (e.g. after a crash between claim and launch).
    queued = sorted(_all_requests(db, "queued", deadline),
                    key=lambda r: (r.created_at is None, r.created_at, r.id))
    run_requests: list[dg.RunRequest] = []
    new_partitions: list[str] = []
    for request in queued:
        if request.claimed_by not in (None, SENSOR_HOLDER):
            continue  # a `--wait` CLI runs it itself (handed over to the sensor if it dies)
        file_id = request.target_file_id
        assert file_id is not None
        if file_id not in new_partitions and not context.instance.has_dynamic_partition(
                TRAINING_FILES, file_id):
            new_partitions.append(file_id)
        run_requests.append(dg.RunRequest(
            run_key=request_run_key(request.id, request.attempts),
            partition_key=file_id,
            tags={REQUEST_TAG: request.id, TRAINING_FILE_TAG: file_id, REASON_TAG: "request",
                  ATTEMPT_TAG: str(request.attempts)},
        ))
    if rejected:
        context.log.info(f"{rejected} pending request(s) rejected or claimed elsewhere")
    return dg.SensorResult(
        run_requests=run_requests,
        dynamic_partitions_requests=(
            [training_files_partitions.build_add_request(new_partitions)]
            if new_partitions else []),
    )


@dg.run_failure_sensor(
    monitored_jobs=[training_file_job],
    minimum_interval_seconds=5,
    default_status=dg.DefaultSensorStatus.RUNNING,
)
def request_failure_sensor(
    context: dg.RunFailureSensorContext, brightrun: BrightRunResource
) -> None:
    """A failed run fails its request (when the step did not record a more precise reason)."""
    _close_request(context.dagster_run, brightrun,
                   AttemptLost(context.failure_event.message or "the Dagster run failed"))
    restate_after_failed_run(context.instance, brightrun.pipeline(), context.dagster_run)


@dg.run_status_sensor(
    run_status=dg.DagsterRunStatus.CANCELED,
    monitored_jobs=[training_file_job],
    minimum_interval_seconds=5,
    default_status=dg.DefaultSensorStatus.RUNNING,
)
def request_canceled_sensor(
    context: dg.RunStatusSensorContext, brightrun: BrightRunResource
) -> None:
    """A canceled run fails its request (an operator's decision: not retried automatically;
    `brightrun requests retry` puts it back)."""
    _close_request(context.dagster_run, brightrun,
                   ProcessingFailed("the Dagster run was canceled"))
    restate_after_failed_run(context.instance, brightrun.pipeline(), context.dagster_run)


@dg.run_status_sensor(
    run_status=dg.DagsterRunStatus.SUCCESS,
    monitored_jobs=[training_file_job],
    default_status=dg.DefaultSensorStatus.RUNNING,
)
def request_success_sensor(
    context: dg.RunStatusSensorContext, brightrun: BrightRunResource
) -> None:
    """Record the run id on a request whose run succeeded (publication already set its status)."""
    request_id = context.dagster_run.tags.get(REQUEST_TAG)
    if request_id:
        brightrun.pipeline().record_success(request_id, context.dagster_run.run_id)


def _close_request(run: dg.DagsterRun, brightrun: BrightRunResource,
                   error: ProcessingFailed) -> None:
    """End the attempt a failed run was working on, unless its steps already did (a broken rule
    or a bad source is recorded there; what is left here is a crash or a lost connection, so
    the request is attempted again while attempts last)."""
    request_id = run.tags.get(REQUEST_TAG)
    if not request_id:
        return
    from assets.training_files import run_attempt

    brightrun.pipeline().record_failure([request_id], error, run.run_id,
                                        attempt=run_attempt(run))


DEFAULT_REMATERIALIZE_CRON = "0 3 * * *"


def build_rematerialize_schedule(cron: str = DEFAULT_REMATERIALIZE_CRON) -> dg.ScheduleDefinition:
    """The schedule that rebuilds training files whose sources changed (daily by default)."""

    @dg.schedule(
        name="rematerialize_changed_files",
        job=training_file_job,
        cron_schedule=cron,
        default_status=dg.DefaultScheduleStatus.RUNNING,
    )
    def rematerialize_changed_files(
        context: dg.ScheduleEvaluationContext, brightrun: BrightRunResource
    ) -> list[dg.RunRequest] | dg.SkipReason:
        """Rebuild, as a new version, every training file whose sources changed."""
        stale = brightrun.pipeline().stale_files()
        if not stale:
            return dg.SkipReason("no training file has changed sources")
        stamp = context.scheduled_execution_time.isoformat()
        return [rematerialize_run_request(file_id, count, stamp)
                for file_id, count in sorted(stale.items())]

    return rematerialize_changed_files


def rematerialize_run_request(file_id: str, changed: int, stamp: str) -> dg.RunRequest:
    """A run that rebuilds one training file from its changed sources."""
    return dg.RunRequest(
        run_key=f"rematerialize:{file_id}:{stamp}",
        partition_key=file_id,
        tags={TRAINING_FILE_TAG: file_id, REASON_TAG: "rematerialize",
              "brightrun/changed_conversations": str(changed)},
    )
