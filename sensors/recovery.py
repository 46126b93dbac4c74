"""Recovery of work whose process died: abandoned runs are failed, stranded requests go on.

Run on every tick of the selection-request sensor (and by a `--wait` CLI that finds no daemon),
so whatever process dies — a CLI, a run worker, the daemon, a code server — every claimed
request ends, or is attempted again, within `stale_after_seconds` plus a tick.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import dagster as dg

from assets.partitions import ATTEMPT_TAG, REQUEST_TAG
from brightrun_pipeline.errors import AttemptLost
from brightrun_pipeline.service import SENSOR_HOLDER, Pipeline, utc_now
from jobs import TRAINING_FILE_JOB

# NOT_STARTED: created by an in-process execution whose process died before starting it.
# As the instances' run_monitoring.start_timeout_seconds: how long a launched run may take to
# start its worker.
START_GRACE_SECONDS = 90.0
ACTIVE_STATUSES = [dg.DagsterRunStatus.NOT_STARTED, dg.DagsterRunStatus.STARTING,
                   dg.DagsterRunStatus.STARTED]


@dataclass
class Recovery:
    """What one pass recovered."""

    failed_runs: list[str] = field(default_factory=list)
    handed_over: list[str] = field(default_factory=list)
    ended_attempts: list[str] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.failed_runs or self.handed_over or self.ended_attempts)


def recover(instance: dg.DagsterInstance, pipeline: Pipeline,
            now: datetime | None = None) -> Recovery:
    """Fail the training-file runs that stopped beating, then end (or retry) the attempts of
    claimed requests that no live run or process is working on."""
    recovery = Recovery()
    now = now or utc_now()
    stale_after = pipeline.lifecycle.stale_after_seconds
    records = instance.get_run_records(
        filters=dg.RunsFilter(job_name=TRAINING_FILE_JOB, statuses=ACTIVE_STATUSES))
    beats = pipeline.db.last_beats(record.dagster_run.run_id for record in records)
    for record in records:
        run = record.dagster_run
        beat = beats.get(run.run_id)
        last = beat or _last_event(instance, record)
        silent = (now - last).total_seconds()
        # A worker that is still starting (a container pulling its image, a busy machine) has
        # not beaten yet: it gets the longer start grace before it is taken for dead.
        starting = beat is None and run.status == dg.DagsterRunStatus.STARTING
        if silent > (max(START_GRACE_SECONDS, stale_after) if starting else stale_after):
            instance.report_run_failed(
                run, f"the run's process stopped (no heartbeat for {silent:.0f} s): it died, "
                     "was killed or lost its database")
            pipeline.db.end_beats(run.run_id)
            recovery.failed_runs.append(run.run_id)

    for request in pipeline.db.requests_in_flight():
        beat = request.heartbeat_at or request.updated_at
        if beat is not None and (now - beat).total_seconds() <= stale_after:
            continue
        runs = instance.get_runs(filters=dg.RunsFilter(tags={REQUEST_TAG: request.id}))
        if any(not run.is_finished for run in runs):
            continue  # queued in Dagster or running (and beating): its run will decide
        launched = [run for run in runs if run.tags.get(ATTEMPT_TAG) == str(request.attempts)]
        if request.status == "queued" and not launched:
            # Claimed but never launched: a `--wait` CLI died before starting its run. The
            # sensor launches it; a sensor-held claim is launched on every tick anyway.
            if request.claimed_by != SENSOR_HOLDER and pipeline.db.hand_over_request(
                    request.id, from_holder=request.claimed_by, to=SENSOR_HOLDER, now=now):
                recovery.handed_over.append(request.id)
            continue
        pipeline.record_failure([request.id], AttemptLost(
            f"attempt {request.attempts} ended without publishing: its run stopped or its "
            "process died"), attempt=request.attempts)
        recovery.ended_attempts.append(request.id)
    # Beats of runs outside Dagster (`Pipeline.run_request`) whose process died.
    pipeline.db.forget_silent_beats(now - timedelta(seconds=3 * stale_after))
    return recovery


def _last_event(instance: dg.DagsterInstance, record: dg.RunRecord) -> datetime:
    """When a run without a heartbeat last showed life: its newest event, or when it left the
    queue. A live run has no heartbeat before its resources start beating, and again after they
    stopped (and forgot the beat) until its outcome is stored; its events go on in both gaps."""
    started = _started(record)
    newest = instance.get_records_for_run(record.dagster_run.run_id, limit=1,
                                          ascending=False).records
    return max(started, datetime.fromtimestamp(newest[0].timestamp, UTC)) if newest else started


def _started(record: dg.RunRecord) -> datetime:
    """When a run that never beat left the queue (its last status change), not when it was
    created: a run can wait in the queue for a long time before it starts."""
    if record.start_time is not None:
        return datetime.fromtimestamp(record.start_time, UTC)
    changed = record.update_timestamp
    return changed if changed.tzinfo else changed.replace(tzinfo=UTC)
