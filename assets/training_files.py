"""The training-file chain, one partition per training file: membership → JSON/JSONL → version."""

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import dagster as dg

from assets.catalog import enriched_conversations
from assets.partitions import ATTEMPT_TAG, REQUEST_TAG, training_files_partitions
from assets.readiness import readiness_metadata
from brightrun_pipeline.db.repository import VersionRecord
from brightrun_pipeline.diff import diff_from_previous, markdown
from brightrun_pipeline.errors import BrightRunError
from brightrun_pipeline.outputs import BY_NAME, CHECKS, Output
from brightrun_pipeline.queries import version_lineage
from brightrun_pipeline.service import Pipeline, StagedVersion, VersionPlan
from resources import BrightRunResource

JSON_KEY = dg.AssetKey("training_file_json")
JSONL_KEY = dg.AssetKey("training_file_jsonl")
# The two assets the objects of a version (and their checks) are shown on.
ASSETS = {"json": JSON_KEY, "jsonl": JSONL_KEY}
CHECK_ASSETS = {check.name: ASSETS[check.asset] for check in CHECKS}


@contextmanager
def reported_as_failure() -> Iterator[None]:
    """Show a domain error in the Dagster UI as a plain failure naming the problem."""
    try:
        yield
    except BrightRunError as error:
        conversations = getattr(error, "conversations", {})
        raise dg.Failure(
            description=str(error),
            metadata={"conversations": dg.MetadataValue.json(conversations)} if conversations
            else None,
        ) from error


@dg.asset(
    partitions_def=training_files_partitions,
    deps=[enriched_conversations],
    group_name="training_files",
    output_required=False,
)
def training_file_membership(context: dg.AssetExecutionContext, brightrun: BrightRunResource):
    """Which conversations the next version holds: the current ones plus a request's (re-checked),
    or the current ones with their changed sources re-read (rematerialization)."""
    pipeline = brightrun.pipeline()
    request_id = context.run.tags.get(REQUEST_TAG)
    if request_id:
        attempt = run_attempt(context.run)
        with reported_as_failure(), pipeline.request_outcome([request_id], context.run.run_id,
                                                             attempt):
            plan = pipeline.start(request_id, context.run.run_id, attempt)
        if plan.spec.training_file_id != context.partition_key:
            raise dg.Failure(f"request {request_id} targets training file "
                             f"{plan.spec.training_file_id}, not partition {context.partition_key}")
    else:
        with reported_as_failure():
            plan = pipeline.plan_rematerialization(context.partition_key, context.run.run_id)
        if plan is None:
            context.log.info("no source of this training file changed: nothing to rebuild")
            return
        for cid, reason in plan.skipped.items():
            context.log.warning(f"changed conversation {cid} kept as published: {reason}")
    spec = plan.spec
    yield dg.Output(plan, metadata={
        "version": spec.version,
        "reason": spec.reason,
        "request_ids": ", ".join(plan.request_ids),
        "new_conversations": len(spec.additions),
        "rebuilt_conversations": len(spec.rebuilds),
        "conversation_ids": dg.MetadataValue.json(
            [c.conversation_id for c in [*spec.additions, *spec.rebuilds]]),
    })


@dg.multi_asset(
    partitions_def=training_files_partitions,
    group_name="training_files",
    outs={
        "training_file_json": dg.AssetOut(
            description="The full training JSON (brightrun-lora-v4).", is_required=False,
        ),
        "training_file_jsonl": dg.AssetOut(
            description="One line per trainable pair, from the JSON.", is_required=False,
        ),
    },
    internal_asset_deps={
        "training_file_json": {dg.AssetKey("training_file_membership")},
        "training_file_jsonl": {JSON_KEY},
    },
    ins={"plan": dg.AssetIn("training_file_membership")},
    # Every blocking check the registered outputs declare (brightrun_pipeline.outputs).
    check_specs=[
        dg.AssetCheckSpec(check.name, asset=ASSETS[check.asset], blocking=True,
                          description=check.description)
        for check in CHECKS
    ],
)
def training_file_objects(
    context: dg.AssetExecutionContext, plan: VersionPlan, brightrun: BrightRunResource
):
    """Write the next version's training.json, training.jsonl and manifest.json under the file's
    build lease, then check them."""
    pipeline = brightrun.pipeline()
    with reported_as_failure(), pipeline.request_outcome(plan.request_ids, context.run.run_id,
                                                         plan.attempt):
        staged = pipeline.stage(plan)
    if staged is None:
        context.log.info("the file moved on and no changed source is left to rebuild")
        return
    for name, outcome in staged.checks.items():
        yield dg.AssetCheckResult(check_name=name, asset_key=CHECK_ASSETS[name],
                                  passed=outcome.passed,
                                  metadata={"detail": outcome.detail})
    if not staged.passed:
        from brightrun_pipeline.errors import ChecksFailed

        pipeline.record_failure(
            staged.plan.request_ids,
            ChecksFailed(f"checks failed: {', '.join(staged.failed_checks())}"),
            context.run.run_id, staged.plan.attempt)
    built, version = staged.built, staged.plan.spec.version
    yield dg.Output(staged, output_name="training_file_json", metadata={
        "version": version,
        "key": built.json.key,
        "sha256": built.json.sha256,
        "size_bytes": built.json.size,
        "conversations": built.conversation_count,
        "training_pairs": built.training_pair_count,
        # Transient storage errors retried by this build: source reads, and writes of this
        # version and reads of the previous one.
        "storage_retries": built.storage_retries,
        "source_fetch_retries": built.source_fetch_retries,
        "output_retries": built.output_retries,
    })
    yield dg.Output(staged, output_name="training_file_jsonl", metadata={
        "version": version,
        "key": built.jsonl.key,
        "sha256": built.jsonl.sha256,
        "size_bytes": built.jsonl.size,
        "lines": built.trainable_pair_count,
        # Every export and split part of the version, e.g. chat_export, chat_train_export.
        **{export_label(BY_NAME[name]): dg.MetadataValue.json(item.model_dump())
           for name, item in built.exports.items()},
    })


@dg.asset(
    partitions_def=training_files_partitions,
    group_name="training_files",
    ins={"staged": dg.AssetIn("training_file_jsonl")},
    deps=[JSON_KEY, dg.AssetKey("training_file_membership")],
)
def training_file_version(
    context: dg.AssetExecutionContext, staged: StagedVersion, brightrun: BrightRunResource,
) -> dg.MaterializeResult:
    """The published version: current pointer, version row, membership and request outcome."""
    pipeline = brightrun.pipeline()
    plan = staged.plan
    with reported_as_failure(), pipeline.request_outcome(plan.request_ids, context.run.run_id,
                                                         plan.attempt):
        record = pipeline.publish(staged)
    return dg.MaterializeResult(metadata=version_metadata(pipeline, record))


def export_label(output: Output) -> str:
    """The metadata label of an export's object: its format, and its side for a split part."""
    return "_".join(part.replace("-", "_") for part in (output.format, output.split, "export")
                    if part)


def run_attempt(run: dg.DagsterRun) -> int | None:
    """The request attempt a run was launched for (None for runs launched without one)."""
    raw = run.tags.get(ATTEMPT_TAG)
    return int(raw) if raw and raw.isdigit() else None


# The UI's metadata table stays responsive up to a few hundred rows; `brightrun lineage file`
# lists every conversation of any size of file.
LINEAGE_TABLE_ROWS = 500


def version_metadata(pipeline: Pipeline, record: VersionRecord) -> dict[str, dg.MetadataValue]:
    """What a version's materialization shows: its lineage and its readiness report, the
    conversations table last (it can be hundreds of rows long)."""
    lineage = lineage_metadata(pipeline, record)
    table = lineage.pop("conversation_lineage")
    return {**lineage, **readiness_metadata(pipeline, record), "conversation_lineage": table}


def lineage_metadata(pipeline: Pipeline, record: VersionRecord) -> dict[str, dg.MetadataValue]:
    """What a version's materialization shows in the UI: counts, hashes, keys, conversations,
    and what changed since the previous version (brightrun_pipeline.diff; approx_tokens as a
    change only, counted on the conversations that changed)."""
    rows = version_lineage(pipeline, record.training_file_id, record.version)
    return {**_identity_metadata(record, rows), **changes_metadata(pipeline, record)}


def changes_metadata(pipeline: Pipeline, record: VersionRecord) -> dict[str, dg.MetadataValue]:
    """What changed since the previous version. The version is published already: a diff that
    cannot be made is shown as such, never raised."""
    try:
        changes = diff_from_previous(pipeline, record, token_totals=False)
    except Exception as exc:  # noqa: BLE001
        return {"changes": dg.MetadataValue.md(
            f"**The changes since the previous version could not be worked out:** "
            f"{type(exc).__name__}: {exc}")}
    return {
        "changes": dg.MetadataValue.md(markdown(changes)),
        "conversations_added": dg.MetadataValue.int(len(changes.added)),
        "conversations_rebuilt": dg.MetadataValue.int(len(changes.rebuilt)),
        "conversations_removed": dg.MetadataValue.int(len(changes.removed)),
        "pairs_delta": dg.MetadataValue.int(changes.pairs.delta),
        "trainable_pairs_delta": dg.MetadataValue.int(changes.trainable_pairs.delta),
        "approx_tokens_delta": dg.MetadataValue.int(changes.approx_tokens.delta),
    }


def _identity_metadata(record: VersionRecord, rows: list[Any]) -> dict[str, dg.MetadataValue]:
    return {
        "version": dg.MetadataValue.int(record.version),
        "reason": dg.MetadataValue.text(record.reason),
        "request_ids": dg.MetadataValue.text(", ".join(record.request_ids)),
        "conversations": dg.MetadataValue.int(record.conversation_count),
        "training_pairs": dg.MetadataValue.int(record.training_pair_count),
        "jsonl_lines": dg.MetadataValue.int(record.jsonl_line_count),
        "json_size_bytes": dg.MetadataValue.int(record.json_size),
        "jsonl_size_bytes": dg.MetadataValue.int(record.jsonl_size),
        "json_sha256": dg.MetadataValue.text(record.json_sha256),
        "jsonl_sha256": dg.MetadataValue.text(record.jsonl_sha256),
        "json_key": dg.MetadataValue.path(record.json_key),
        "jsonl_key": dg.MetadataValue.path(record.jsonl_key),
        "manifest_key": dg.MetadataValue.path(record.manifest_key),
        "conversation_lineage": dg.MetadataValue.table(
            records=[dg.TableRecord(row.model_dump()) for row in rows[:LINEAGE_TABLE_ROWS]],
            schema=dg.TableSchema(columns=[
                dg.TableColumn(name) for name in (
                    "conversation_id", "batch_id", "persona", "arc", "topic", "quality",
                    "source_sha256", "added_in_version")]),
        ),
    }
