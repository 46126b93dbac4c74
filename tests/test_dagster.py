"""The Dagster layer: definitions, the asset chain per partition, blocking checks, the request
sensor and rematerialization — on SQLite and PostgreSQL."""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterator
from pathlib import Path

import dagster as dg
import orjson
import pytest
import sqlalchemy as sa
from seed import demo_dataset, eligible, oracle_input, seed_dataset, version_objects

from assets.partitions import REASON_TAG, REQUEST_TAG, TRAINING_FILE_TAG
from brightrun_pipeline.config import Settings
from brightrun_pipeline.db.schema import conversations, selection_requests
from brightrun_pipeline.definitions import build_definitions
from brightrun_pipeline.demo_data import reenrich_conversation
from brightrun_pipeline.launcher import run_request_in_process
from brightrun_pipeline.outputs import EXPORTS
from brightrun_pipeline.service import Pipeline
from brightrun_pipeline.storage import LocalObjectStore
from jobs import TRAINING_FILE_JOB
from resources import BrightRunResource
from sensors import request_run_key, selection_request_sensor

TRAINING_FILES = "training_files"


@pytest.fixture
def instance() -> Iterator[dg.DagsterInstance]:
    with dg.instance_for_test() as instance:
        yield instance


@pytest.fixture
def settings(database_url: str, tmp_path: Path) -> Settings:
    return Settings(database_url=database_url, storage_root=tmp_path / "storage",
                    dagster_home=tmp_path / "dagster")


@pytest.fixture
def defs(settings: Settings, pipeline: Pipeline) -> dg.Definitions:
    # `pipeline` (same database URL and storage root) has upgraded the schema and made the buckets.
    return build_definitions(settings)


def run_job(defs: dg.Definitions, instance: dg.DagsterInstance, file_id: str,
            tags: dict[str, str]) -> dg.ExecuteInProcessResult:
    if not instance.has_dynamic_partition(TRAINING_FILES, file_id):
        instance.add_dynamic_partitions(TRAINING_FILES, [file_id])
    return defs.resolve_job_def(TRAINING_FILE_JOB).execute_in_process(
        instance=instance, partition_key=file_id,
        tags={**tags, TRAINING_FILE_TAG: file_id}, raise_on_error=False)


def run_request(defs: dg.Definitions, instance: dg.DagsterInstance, pipeline: Pipeline,
                request_id: str) -> dg.ExecuteInProcessResult:
    claimed = pipeline.claim(request_id)
    assert claimed is not None
    return run_job(defs, instance, claimed.target_file_id, {REQUEST_TAG: request_id})


def tick(defs: dg.Definitions, instance: dg.DagsterInstance) -> dg.SensorResult:
    """One evaluation of the request sensor, as the daemon would run it."""
    with dg.build_sensor_context(instance=instance, definitions=defs,
                                 resources={"brightrun": defs.resources["brightrun"]}) as context:
        result = selection_request_sensor(context)
    assert isinstance(result, dg.SensorResult)
    return result


def check_results(result: dg.ExecuteInProcessResult) -> dict[str, bool]:
    return {evaluation.check_name: evaluation.passed
            for evaluation in result.get_asset_check_evaluations()}


def test_definitions_load(defs: dg.Definitions) -> None:
    job = defs.resolve_job_def(TRAINING_FILE_JOB)
    assert job.partitions_def is not None
    assert {"selection_request_sensor", "request_failure_sensor"} <= {
        s.name for s in defs.sensors or []}
    assert defs.resolve_schedule_def("rematerialize_changed_files").cron_schedule == "0 3 * * *"
    keys = {key.to_user_string() for key in defs.resolve_all_asset_keys()}
    assert keys == {"enriched_conversations", "training_file_membership", "training_file_json",
                    "training_file_jsonl", "training_file_version"}


def test_workspace_module_loads() -> None:
    import brightrun_pipeline.definitions as module

    assert isinstance(module.defs, dg.Definitions)


def test_request_run_publishes_a_checked_version(
    defs: dg.Definitions, instance: dg.DagsterInstance, pipeline: Pipeline,
) -> None:
    from contract_oracle import check_version

    dataset = demo_dataset()
    seed_dataset(pipeline, dataset)
    rows = eligible(dataset)[:4]
    request = pipeline.submit(conversation_ids=[c.conversation_id for c in rows],
                              new_file_name="Dagster file", description="via assets")
    result = run_request(defs, instance, pipeline, request.id)
    assert result.success
    checks = check_results(result)
    assert len(checks) == 8 + len(EXPORTS) and all(checks.values()), checks

    stored = pipeline.db.get_request(request.id)
    assert stored is not None and stored.status == "succeeded" and stored.result_version == 1
    assert stored.dagster_run_id == result.run_id
    record = pipeline.db.get_version(stored.target_file_id, 1)  # type: ignore[arg-type]
    assert record is not None and record.dagster_run_id == result.run_id
    json_bytes, jsonl_bytes, manifest = version_objects(pipeline, record)
    check_version(json_bytes, jsonl_bytes, manifest, training_file_id=record.training_file_id,
                  file_name="Dagster file", description="via assets", file_version=1,
                  conversations=[oracle_input(c, 1) for c in rows])

    materialization = instance.get_latest_materialization_event(
        dg.AssetKey("training_file_version")).asset_materialization  # type: ignore[union-attr]
    assert materialization is not None
    assert materialization.partition == record.training_file_id
    metadata = materialization.metadata
    assert metadata["version"].value == 1
    assert metadata["json_sha256"].value == record.json_sha256
    table = metadata["conversation_lineage"].value
    assert [r.data["conversation_id"] for r in table.records] == [c.conversation_id for c in rows]
    assert [r.data["source_sha256"] for r in table.records] == [
        hashlib.sha256(c.file_bytes).hexdigest() for c in rows]  # type: ignore[arg-type]


class TamperingStore(LocalObjectStore):
    """A real local store that appends a stray line to every JSONL it publishes."""

    def put_file(self, bucket: str, key: str, path: Path, *, replace: bool = False) -> None:
        if key.endswith("training.jsonl"):
            with open(path, "ab") as handle:
                handle.write(b'{"id":"stray"}\n')
        super().put_file(bucket, key, path, replace=replace)


class TamperedResource(BrightRunResource):
    """The service with a store that corrupts what it writes."""

    def pipeline(self) -> Pipeline:
        real = super().pipeline()
        return Pipeline(real.db, TamperingStore(Path(self.storage.root)),
                        source_bucket=real.source_bucket, training_bucket=real.training_bucket)


def test_failing_blocking_check_publishes_nothing(
    settings: Settings, instance: dg.DagsterInstance, pipeline: Pipeline,
) -> None:
    dataset = demo_dataset()
    seed_dataset(pipeline, dataset)
    request = pipeline.submit(conversation_ids=[eligible(dataset)[0].conversation_id],
                              new_file_name="Tampered")
    defs = build_definitions(settings)
    real = defs.resources["brightrun"]
    tampered = TamperedResource(database=real.database, storage=real.storage)
    defs = dg.Definitions(assets=defs.assets, jobs=defs.jobs, resources={"brightrun": tampered})
    result = run_request(defs, instance, pipeline, request.id)

    assert not result.success
    checks = check_results(result)
    assert checks["line_count_matches"] is False
    assert checks["manifest_matches_objects"] is False
    assert "training_file_version" not in {
        key.to_user_string() for key in result.get_asset_materialization_events_keys()
    } if hasattr(result, "get_asset_materialization_events_keys") else True
    stored = pipeline.db.get_request(request.id)
    assert stored is not None and stored.status == "failed"
    assert "checks failed" in stored.error.message  # type: ignore[union-attr]
    assert pipeline.db.list_files() == []


def test_sensor_claims_pending_requests_once_and_rejects_invalid_ones(
    defs: dg.Definitions, instance: dg.DagsterInstance, pipeline: Pipeline,
) -> None:
    dataset = demo_dataset()
    seed_dataset(pipeline, dataset)
    good, other = eligible(dataset)[:2]
    ineligible = next(c for c in dataset.conversations if c not in eligible(dataset))
    with pipeline.db.engine.begin() as connection:
        for request_id, ids, name in (("req-good", [good.conversation_id], "Sensor file"),
                                      ("req-bad", [ineligible.conversation_id, "nope"], "Bad"),
                                      ("req-dup", [other.conversation_id] * 2, "Dup")):
            connection.execute(sa.text(
                "INSERT INTO selection_requests (id, new_file_name, conversation_ids) "
                "VALUES (:id, :name, :ids)"), {"id": request_id, "name": name,
                                                "ids": orjson.dumps(ids).decode()})

    result = tick(defs, instance)
    assert isinstance(result, dg.SensorResult)
    assert [r.tags[REQUEST_TAG] for r in result.run_requests] == ["req-good"]
    run_request_ = result.run_requests[0]
    good_request = pipeline.db.get_request("req-good")
    assert good_request is not None and good_request.status == "queued"
    assert run_request_.partition_key == good_request.target_file_id
    assert run_request_.run_key == request_run_key("req-good", 1)
    assert run_request_.tags[TRAINING_FILE_TAG] == good_request.target_file_id
    assert [p.partition_keys for p in result.dynamic_partitions_requests] == [
        [good_request.target_file_id]]

    bad = pipeline.db.get_request("req-bad")
    assert bad is not None and bad.status == "rejected" and bad.error is not None
    assert set(bad.error.conversations) == {ineligible.conversation_id, "nope"}
    dup = pipeline.db.get_request("req-dup")
    assert dup is not None and dup.status == "rejected"
    assert "repeated" in dup.error.conversations[other.conversation_id]  # type: ignore[union-attr]

    # A second tick (at-least-once delivery) claims nothing new and re-emits the same run key,
    # which the daemon launches only once.
    again = tick(defs, instance)
    assert [r.run_key for r in again.run_requests] == [run_request_.run_key]
    assert pipeline.db.request_attempts("req-good") == 1


def test_sensor_pages_through_many_requests(
    defs: dg.Definitions, instance: dg.DagsterInstance, pipeline: Pipeline,
) -> None:
    dataset = demo_dataset()
    seed_dataset(pipeline, dataset)
    cid = eligible(dataset)[0].conversation_id
    with pipeline.db.engine.begin() as connection:
        connection.execute(sa.insert(selection_requests), [
            {"id": f"req-{n:03d}", "new_file_name": f"File {n:03d}", "conversation_ids": [cid]}
            for n in range(120)])
    result = tick(defs, instance)
    assert len(result.run_requests) == 120
    assert len({r.partition_key for r in result.run_requests}) == 120
    assert pipeline.db.list_requests(status="pending") == []


def test_failed_request_is_retried_under_a_new_run_key(
    defs: dg.Definitions, instance: dg.DagsterInstance, pipeline: Pipeline,
) -> None:
    dataset = demo_dataset()
    seed_dataset(pipeline, dataset)
    row = eligible(dataset)[0]
    request = pipeline.submit(conversation_ids=[row.conversation_id], new_file_name="Retry me")
    source = pipeline.store.local_path(pipeline.source_bucket, row.row["enriched_file_path"])
    assert source is not None
    original = source.read_bytes()
    source.write_bytes(b"{not json")
    first = tick(defs, instance)
    result = run_job(defs, instance, first.run_requests[0].partition_key,
                     dict(first.run_requests[0].tags))
    assert not result.success
    failed = pipeline.db.get_request(request.id)
    assert failed is not None and failed.status == "failed"
    assert row.conversation_id in failed.error.conversations  # type: ignore[union-attr]

    source.write_bytes(original)
    pipeline.retry_request(request.id)
    second = tick(defs, instance)
    assert second.run_requests[0].run_key == request_run_key(request.id, 2)
    assert second.run_requests[0].run_key != first.run_requests[0].run_key
    assert run_job(defs, instance, second.run_requests[0].partition_key,
                   dict(second.run_requests[0].tags)).success
    done = pipeline.db.get_request(request.id)
    assert done is not None and done.status == "succeeded" and done.result_version == 1


def test_requests_for_one_file_land_as_consecutive_versions(
    defs: dg.Definitions, instance: dg.DagsterInstance, pipeline: Pipeline,
) -> None:
    dataset = demo_dataset()
    seed_dataset(pipeline, dataset)
    rows = eligible(dataset)
    first = pipeline.submit(conversation_ids=[rows[0].conversation_id], new_file_name="Grows")
    assert run_request(defs, instance, pipeline, first.id).success
    file = pipeline.db.find_file("Grows")
    assert file is not None
    later = [pipeline.submit(conversation_ids=[row.conversation_id], training_file=file.id)
             for row in rows[1:5]]
    result = tick(defs, instance)
    assert [r.tags[REQUEST_TAG] for r in result.run_requests] == [r.id for r in later]
    for run in result.run_requests:
        assert run_job(defs, instance, run.partition_key, dict(run.tags)).success
    versions = [pipeline.db.get_request(r.id).result_version for r in later]  # type: ignore[union-attr]
    assert versions == [2, 3, 4, 5]
    members = [m.conversation_id for m in pipeline.db.iter_members(file.id)]
    assert members == [row.conversation_id for row in rows[:5]]


def test_rematerialization_rebuilds_changed_sources_only(
    defs: dg.Definitions, instance: dg.DagsterInstance, pipeline: Pipeline,
) -> None:
    from contract_oracle import check_version

    dataset = demo_dataset()
    seed_dataset(pipeline, dataset)
    rows = eligible(dataset)[:3]
    request = pipeline.submit(conversation_ids=[c.conversation_id for c in rows],
                              new_file_name="Rebuilt", description="re-enriched")
    assert run_request(defs, instance, pipeline, request.id).success
    file = pipeline.db.find_file("Rebuilt")
    assert file is not None

    # Nothing changed: the run succeeds and publishes nothing.
    assert pipeline.stale_files() == {}
    assert run_job(defs, instance, file.id, {REASON_TAG: "rematerialize"}).success
    assert pipeline.db.get_file(file.id).current_version == 1  # type: ignore[union-attr]

    changed = reenrich_conversation(rows[1], seed=11)
    pipeline.store.put_bytes(pipeline.source_bucket, changed.row["enriched_file_path"],
                             changed.file_bytes, replace=True)  # type: ignore[arg-type]
    with pipeline.db.engine.begin() as connection:
        connection.execute(sa.update(conversations).where(
            conversations.c.conversation_id == changed.conversation_id).values(
            updated_at=changed.row["updated_at"], quality_score=changed.row["quality_score"]))
    assert pipeline.stale_files() == {file.id: 1}
    catalog = defs.resolve_job_def("enriched_conversations_job").execute_in_process(
        instance=instance)
    reported = catalog.asset_materializations_for_node("enriched_conversations")[0].metadata
    assert reported["changed_since_built"].value == 1
    assert reported["files_with_changes"].value == 1
    assert [r.data["conversation_id"] for r in reported["changed_conversations"].value.records] \
        == [changed.conversation_id]

    assert run_job(defs, instance, file.id, {REASON_TAG: "rematerialize"}).success
    record = pipeline.db.get_version(file.id)
    assert record is not None and record.version == 2 and record.reason == "rematerialize"
    json_bytes, jsonl_bytes, manifest = version_objects(pipeline, record)
    expected = [oracle_input(rows[0], 1), oracle_input(changed, 1), oracle_input(rows[2], 1)]
    check_version(json_bytes, jsonl_bytes, manifest, training_file_id=file.id,
                  file_name="Rebuilt", description="re-enriched", file_version=2,
                  conversations=expected)
    entries = orjson.loads(manifest)
    assert entries["reason"] == "rematerialize"
    assert entries["conversations"][1]["source_sha256"] == hashlib.sha256(
        changed.file_bytes).hexdigest()  # type: ignore[arg-type]
    assert pipeline.stale_files() == {}


def test_request_run_needs_a_request_tag_or_rebuilds(
    defs: dg.Definitions, instance: dg.DagsterInstance, pipeline: Pipeline,
) -> None:
    # A run without a request on a file that was never published fails with a clear message.
    result = run_job(defs, instance, "00000000-0000-4000-8000-000000000000", {})
    assert not result.success
    failure = next(e for e in result.all_events if e.event_type_value == "STEP_FAILURE")
    assert "no published version" in failure.event_specific_data.error.to_string()  # type: ignore[union-attr]




def test_a_run_on_the_repository_instance_keeps_no_debug_events(
    settings: Settings, pipeline: Pipeline, monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The repository's dagster.yaml, as `files create --wait` and `make dev` use it.
    monkeypatch.setenv("DAGSTER_HOME", str(settings.dagster_home))
    dataset = demo_dataset()
    seed_dataset(pipeline, dataset)
    request = pipeline.submit(conversation_ids=[eligible(dataset)[0].conversation_id],
                              new_file_name="Quiet")
    claimed = pipeline.claim(request.id)
    assert claimed is not None

    outcome = run_request_in_process(settings, request.id, claimed.target_file_id)

    assert outcome.success
    with dg.DagsterInstance.get() as instance:
        entries = instance.all_logs(outcome.run_id)
    # Dagster's own events are recorded at DEBUG level; log messages below INFO are dropped.
    assert any(entry.is_dagster_event for entry in entries)
    debug_messages = [entry.user_message for entry in entries
                      if not entry.is_dagster_event and entry.level < logging.INFO]
    assert debug_messages == []
