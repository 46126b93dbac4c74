"""After a run of the training-file job fails without publishing, show the training file's
partition as it is: its current published version, with the checks that version passed.

Dagster paints a partition Failed when the latest planned materialization of it belongs to a
failed run, even though an earlier version is published and sound. Reporting the current
version again (runless events) after the failed run makes it the partition's latest
materialization; the failure stays on the run and on the selection request.
"""

from __future__ import annotations

import dagster as dg

from assets.training_files import JSON_KEY, JSONL_KEY, training_file_objects, version_metadata
from brightrun_pipeline.db.repository import VersionRecord
from brightrun_pipeline.service import Pipeline
from jobs import TRAINING_FILE_JOB
from resources import BrightRunResource

MEMBERSHIP_KEY = dg.AssetKey("training_file_membership")
VERSION_KEY = dg.AssetKey("training_file_version")
PARTITION_TAG = "dagster/partition"
# Metadata key on every restated event: the run after which the version was restated.
FAILED_RUN = "restated_after_run"


def restate_after_failed_run(instance: dg.DagsterInstance, pipeline: Pipeline,
                             run: dg.DagsterRun) -> bool:
    """Restate the current version of the training file a failed run was building."""
    training_file_id = run.tags.get(PARTITION_TAG)
    if not training_file_id:
        return False
    return restate_current_version(instance, pipeline, training_file_id, run.run_id)


def restate_current_version(instance: dg.DagsterInstance, pipeline: Pipeline,
                            training_file_id: str, failed_run_id: str) -> bool:
    """Report the file's current published version again after `failed_run_id` failed or was
    canceled, so that the partition shows what is published rather than the failed attempt.

    Returns whether anything was reported: nothing is when the file has no published version
    (a failed first build has nothing to show), when a later run of the file exists (it speaks
    for the partition), or when this failure was already restated (delivery is at least once).
    """
    record = pipeline.db.get_version(training_file_id)
    if record is None or _superseded(instance, training_file_id, failed_run_id):
        return False
    note = _note(instance, record, failed_run_id)
    restated = {"restated": dg.MetadataValue.text(note),
                FAILED_RUN: dg.MetadataValue.dagster_run(failed_run_id)}
    for key, metadata in _materialization_metadata(pipeline, record).items():
        instance.report_runless_asset_event(dg.AssetMaterialization(
            asset_key=key, partition=training_file_id, description=note,
            metadata={**restated, **metadata}))
    for evaluated_in_run, evaluation in last_check_evaluations(instance, record):
        instance.report_runless_asset_event(dg.AssetCheckEvaluation(
            asset_key=evaluation.asset_key,
            check_name=evaluation.check_name,
            passed=evaluation.passed,
            metadata={**restated, **evaluation.metadata,
                      "evaluated_in_run": dg.MetadataValue.dagster_run(evaluated_in_run)},
            severity=evaluation.severity,
            description=f"Evaluation of version {record.version}, repeated: {note}",
            blocking=evaluation.blocking,
            partition=evaluation.partition,
        ))
    return True


def last_check_evaluations(
    instance: dg.DagsterInstance, record: VersionRecord
) -> list[tuple[str, dg.AssetCheckEvaluation]]:
    """The blocking checks' evaluations of a version, with the run that evaluated them.

    A run re-executed from its failed publication step holds no evaluations of its own; they
    are in the run it re-executed, hence the walk up the parent runs. A version published
    outside this Dagster instance has none here, and no check is restated for it.
    """
    wanted = [(spec.asset_key, spec.name) for spec in training_file_objects.check_specs]
    found: dict[tuple[dg.AssetKey, str], tuple[str, dg.AssetCheckEvaluation]] = {}
    run = instance.get_run_by_id(record.dagster_run_id) if record.dagster_run_id else None
    while run is not None and len(found) < len(wanted):
        events = instance.get_records_for_run(
            run.run_id, of_type=dg.DagsterEventType.ASSET_CHECK_EVALUATION).records
        for event in events:
            dagster_event = event.event_log_entry.dagster_event
            evaluation = dagster_event.event_specific_data if dagster_event else None
            if isinstance(evaluation, dg.AssetCheckEvaluation):
                found.setdefault((evaluation.asset_key, evaluation.check_name),
                                 (run.run_id, evaluation))
        run = instance.get_run_by_id(run.parent_run_id) if run.parent_run_id else None
    return [found[key] for key in wanted if key in found]


def _superseded(instance: dg.DagsterInstance, training_file_id: str, failed_run_id: str) -> bool:
    """Whether a later run of the file exists, or this failure was already restated."""
    latest_run = instance.get_run_records(
        filters=dg.RunsFilter(job_name=TRAINING_FILE_JOB, tags={PARTITION_TAG: training_file_id}),
        limit=1)
    if latest_run and latest_run[0].dagster_run.run_id != failed_run_id:
        return True
    latest = instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=VERSION_KEY, asset_partitions=[training_file_id]),
        limit=1).records
    if not latest or latest[0].asset_materialization is None:
        return False
    restated_after = latest[0].asset_materialization.metadata.get(FAILED_RUN)
    return restated_after is not None and restated_after.value == failed_run_id


def _note(instance: dg.DagsterInstance, record: VersionRecord, failed_run_id: str) -> str:
    run = instance.get_run_by_id(failed_run_id)
    ended = "was canceled" if run and run.status == dg.DagsterRunStatus.CANCELED else "failed"
    if record.dagster_run_id == failed_run_id:
        # The publication committed, then a later part of the run failed.
        return (f"version {record.version} is current; run {failed_run_id} published it, "
                f"then {ended}")
    return (f"version {record.version} is current; run {failed_run_id} {ended} "
            "without publishing")


def _materialization_metadata(
    pipeline: Pipeline, record: VersionRecord
) -> dict[dg.AssetKey, dict[str, dg.MetadataValue]]:
    """What each training-file asset shows for a published version, upstream first."""
    return {
        MEMBERSHIP_KEY: {
            "version": dg.MetadataValue.int(record.version),
            "reason": dg.MetadataValue.text(record.reason),
            "request_ids": dg.MetadataValue.text(", ".join(record.request_ids)),
            "conversations": dg.MetadataValue.int(record.conversation_count),
        },
        JSON_KEY: {
            "version": dg.MetadataValue.int(record.version),
            "key": dg.MetadataValue.text(record.json_key),
            "sha256": dg.MetadataValue.text(record.json_sha256),
            "size_bytes": dg.MetadataValue.int(record.json_size),
            "conversations": dg.MetadataValue.int(record.conversation_count),
            "training_pairs": dg.MetadataValue.int(record.training_pair_count),
        },
        JSONL_KEY: {
            "version": dg.MetadataValue.int(record.version),
            "key": dg.MetadataValue.text(record.jsonl_key),
            "sha256": dg.MetadataValue.text(record.jsonl_sha256),
            "size_bytes": dg.MetadataValue.int(record.jsonl_size),
            "lines": dg.MetadataValue.int(record.jsonl_line_count),
        },
        VERSION_KEY: version_metadata(pipeline, record),
    }


def restate_in_process(instance: dg.DagsterInstance, brightrun: BrightRunResource,
                       training_file_id: str, failed_run_id: str) -> bool:
    """Restate after a run executed in this process (the CLI's `--wait`) failed."""
    pipeline = brightrun.pipeline()
    try:
        return restate_current_version(instance, pipeline, training_file_id, failed_run_id)
    finally:
        pipeline.db.dispose()
