"""Storage faults: source reads, output writes and reads of the previous version through a proxy
that makes S3 requests fail (500, 503, SlowDown, resets, timeouts), on SQLite and PostgreSQL.

The S3 client makes one attempt per call, so each request the proxy sees is one attempt of the
pipeline's own retry layer, and the retries the pipeline reports can be held against the faults
the proxy injected.
"""

from __future__ import annotations

import hashlib
import random
import re
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import dagster as dg
import pytest
from botocore.client import BaseClient
from fault_proxy import FAILING_KINDS, FaultProxy, FaultRule
from seed import (
    add_to_file,
    claimed_request,
    copy_of,
    create_file,
    eligible,
    insert_conversations,
    seed_conversations,
    seed_dataset,
)

from assets.partitions import REQUEST_TAG, TRAINING_FILE_TAG
from brightrun_pipeline.builder import BuiltVersion
from brightrun_pipeline.config import RetrySettings, Settings
from brightrun_pipeline.db.repository import Database, VersionRecord
from brightrun_pipeline.definitions import build_definitions
from brightrun_pipeline.demo_data import DemoConversation, generate_demo_dataset
from brightrun_pipeline.errors import SourceError, TransientStorageError
from brightrun_pipeline.outputs import OUTPUTS
from brightrun_pipeline.reproduce import reproduce_version
from brightrun_pipeline.retry import RetryingStore
from brightrun_pipeline.s3_store import S3ObjectStore
from brightrun_pipeline.service import Pipeline, VersionPlan
from brightrun_pipeline.sources import fetch_sources
from jobs import TRAINING_FILE_JOB
from resources import PooledS3Resource

MIB = 1024 * 1024
# Far longer than any answer of the moto server takes, even on a loaded 2-core CI machine (0.5 s
# was not: a slow GET counted as a fault), short enough that a held request is cheap.
READ_TIMEOUT = 1.2
ATTEMPTS = RetrySettings().attempts
TRANSIENT = ("500", "503", "slowdown", "reset", "cut", "timeout")
# What a request may fail with without holding the client until its read timeout.
QUICK = ("500", "503", "slowdown", "reset", "cut")
MULTIPART_CALLS = frozenset({"CreateMultipartUpload", "UploadPart", "CompleteMultipartUpload"})


@pytest.fixture
def proxy(s3_endpoint_url: str) -> Iterator[FaultProxy]:
    """A fault proxy in front of the session's moto server, with no faults yet."""
    with FaultProxy(s3_endpoint_url, seed=20251201) as proxy:
        yield proxy


def s3_store(proxy: FaultProxy, *, read_timeout: float = READ_TIMEOUT,
             **options: Any) -> S3ObjectStore:
    """An S3 store whose client, built as production builds it, talks to the proxy."""
    client = PooledS3Resource(
        endpoint_url=proxy.url, region_name="us-east-1", aws_access_key_id="testing",
        aws_secret_access_key="testing", connect_timeout=2, read_timeout=read_timeout,
        max_pool_connections=8,
    ).get_client()
    return S3ObjectStore(client, **options)


class ObservedPipeline(Pipeline):
    """The pipeline, keeping each version it built to read the retries counted on it."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.builds: list[BuiltVersion] = []

    def build(self, plan: VersionPlan) -> BuiltVersion:
        built = super().build(plan)
        self.builds.append(built)
        return built


def fault_settings(database_url: str, tmp_path: Path, bucket_name: str, **values: Any) -> Settings:
    """Settings of a pipeline on the test's database and buckets, with short backoffs."""
    return Settings(database_url=database_url, storage_root=tmp_path / "storage",
                    dagster_home=tmp_path / "dagster", source_bucket=f"{bucket_name}-src",
                    training_bucket=f"{bucket_name}-out", fetch_concurrency=8,
                    retry=RetrySettings(attempts=ATTEMPTS, base_delay=0.001, max_delay=0.01),
                    **values)


@pytest.fixture
def make_faulty_pipeline(
    database_url: str, tmp_path: Path, make_database: Callable[[str], Database],
    proxy: FaultProxy, bucket_name: str,
) -> Callable[..., ObservedPipeline]:
    """Pipelines on the test's database whose storage is S3 behind the fault proxy."""

    def make(**store_options: Any) -> ObservedPipeline:
        settings = fault_settings(database_url, tmp_path, bucket_name)
        store = s3_store(proxy, **store_options)
        database = make_database(database_url)
        database.upgrade()
        store.ensure_bucket(settings.source_bucket)
        store.ensure_bucket(settings.training_bucket)
        return ObservedPipeline.from_settings(settings, database, store)

    return make


def seed_rows(pipeline: Pipeline, count: int) -> list[DemoConversation]:
    """`count` eligible conversations of one batch, with their enriched files."""
    dataset = generate_demo_dataset(5, batches=1, conversations_per_batch=count, unbatched=0,
                                    ineligible_per_batch=0)
    seed_dataset(pipeline, dataset)
    return eligible(dataset)


def source_key(conversation: DemoConversation) -> str:
    return str(conversation.row["enriched_file_path"])


def assert_objects_recorded(pipeline: Pipeline, record: VersionRecord) -> None:
    """The version's objects are those its row records."""
    bucket = pipeline.training_bucket
    for key, sha256 in ((record.json_key, record.json_sha256),
                        (record.jsonl_key, record.jsonl_sha256),
                        (record.manifest_key, record.manifest_sha256)):
        assert hashlib.sha256(pipeline.store.get_bytes(bucket, key)).hexdigest() == sha256


def assert_verifies(pipeline: Pipeline, record: VersionRecord) -> None:
    """The version's objects are those its row records, and it rebuilds from its manifest."""
    assert_objects_recorded(pipeline, record)
    comparisons = reproduce_version(pipeline, record.training_file_id, record.version)
    assert [(c.name, c.matches) for c in comparisons] == [
        (o.name, True) for o in OUTPUTS if o.split is None]


def pending_uploads(client: BaseClient, bucket: str) -> list[str]:
    """Keys of the multipart uploads started and neither completed nor aborted."""
    return [u["Key"] for u in client.list_multipart_uploads(Bucket=bucket).get("Uploads", [])]


# --- Source reads ------------------------------------------------------------------------------


def test_source_reads_failing_30_percent_of_the_time_are_retried_and_counted(
        make_faulty_pipeline: Callable[..., ObservedPipeline], proxy: FaultProxy) -> None:
    pipeline = make_faulty_pipeline()
    rows = seed_rows(pipeline, 30)
    source = pipeline.source_bucket
    # Transient faults end: no source fails more often than the policy retries.
    proxy.set_rules(FaultRule(TRANSIENT, rate=0.3, methods={"GET"}, bucket=source,
                              per_key_limit=ATTEMPTS - 1))
    records: list[VersionRecord] = []
    injected: Counter[str] = Counter()

    for group in (rows[:9], rows[9:16], rows[16:23], rows[23:]):
        # The submission check reads each new source first (its near-duplicate signature),
        # through the same faults; what follows counts the build's reads.
        request_id = (claimed_request(pipeline, group, training_file=records[0].training_file_id)
                      if records else claimed_request(pipeline, group, new_file_name="Test file"))
        proxy.clear_log()
        record = pipeline.run_request(request_id, f"run-v{len(records) + 1}")
        records.append(record)
        built = pipeline.builds[-1]
        gets = Counter(e.key for e in proxy.seen(method="GET", bucket=source))
        # Each source is read by its own attempts only: one request per attempt, one retry
        # per fault, and nothing retried behind the pipeline's back.
        assert set(gets) == {source_key(c) for c in group}
        assert gets.total() == len(group) + built.source_fetch_retries
        assert built.source_fetch_retries == proxy.failures(method="GET", bucket=source)
        assert (built.output_retries, built.storage_retries) == (0, built.source_fetch_retries)
        injected += proxy.injected(bucket=source)

    assert sum(b.source_fetch_retries for b in pipeline.builds) == injected.total() > 0
    assert len(injected) >= 4, injected
    assert [r.version for r in records] == [1, 2, 3, 4]
    for record in records:
        (request_id,) = record.request_ids
        request = pipeline.db.get_request(request_id)
        assert request is not None and request.status == "succeeded"
        assert_objects_recorded(pipeline, record)
    # Verifying the last version re-reads all 30 sources, through the same faults.
    assert_verifies(pipeline, records[-1])


@pytest.mark.parametrize("kind", TRANSIENT)
def test_each_fault_costs_one_attempt_and_one_request(
        proxy: FaultProxy, bucket_name: str, kind: str) -> None:
    store = s3_store(proxy)
    store.ensure_bucket(bucket_name)
    wanted = [(f"c{n}", f"u/c{n}/enriched.json") for n in range(3)]
    for cid, key in wanted:
        store.put_bytes(bucket_name, key, cid.encode() * 2000)
    proxy.set_rules(FaultRule([kind], methods={"GET"}, bucket=bucket_name, key="^u/c1/",
                              per_key_limit=2))

    fetched = list(fetch_sources(store, bucket_name, wanted, concurrency=3,
                                 retry=RetrySettings(attempts=3, base_delay=0, max_delay=0)))

    assert [f.data for f in fetched] == [cid.encode() * 2000 for cid, _ in wanted]
    assert [f.attempts for f in fetched] == [1, 3, 1]
    assert [len(proxy.seen(method="GET", key=f.key)) for f in fetched] == [1, 3, 1]
    assert proxy.injected() == Counter({kind: 2})


def test_a_source_that_keeps_failing_gets_exactly_the_policy_s_attempts(
        proxy: FaultProxy, bucket_name: str) -> None:
    store = s3_store(proxy)
    store.ensure_bucket(bucket_name)
    store.put_bytes(bucket_name, "u/c/enriched.json", b"{}")
    proxy.set_rules(FaultRule(QUICK, methods={"GET"}, bucket=bucket_name))

    (fetched,) = fetch_sources(store, bucket_name, [("c", "u/c/enriched.json")], concurrency=1,
                               retry=RetrySettings(attempts=4, base_delay=0, max_delay=0))

    assert fetched.data is None and isinstance(fetched.error, TransientStorageError)
    assert fetched.attempts == len(proxy.seen(method="GET", key="u/c/enriched.json")) == 4


@pytest.mark.parametrize("problem", ["missing", "not-json"])
def test_a_permanent_source_error_fails_at_once_naming_the_conversation(
        make_faulty_pipeline: Callable[..., ObservedPipeline], proxy: FaultProxy,
        problem: str) -> None:
    pipeline = make_faulty_pipeline()
    rows = seed_rows(pipeline, 6)
    tid = create_file(pipeline, rows[:2]).training_file_id
    if problem == "missing":
        broken = copy_of(rows[2])
        with pipeline.db.engine.begin() as connection:
            insert_conversations(connection, [broken])
    else:
        broken = copy_of(rows[2], file_bytes=b'{"conversation_metadata": {"id": ')
        seed_conversations(pipeline, [broken])
    # The other sources keep failing transiently: the retry layer is at work, and still does not
    # retry what cannot succeed.
    proxy.set_rules(FaultRule(QUICK, rate=0.5, methods={"GET"}, bucket=pipeline.source_bucket,
                              key=f"^(?!{re.escape(source_key(broken))}$)",
                              per_key_limit=ATTEMPTS - 1))
    request_id = claimed_request(pipeline, [rows[3], broken, rows[4]], training_file=tid)
    proxy.clear_log()

    with pytest.raises(SourceError) as raised:
        pipeline.run_request(request_id, "run-broken")

    assert raised.value.conversation_id == broken.conversation_id
    assert broken.conversation_id in str(raised.value)
    # One GET by each reader, none retried: the build, and for a missing source the run's own
    # check too (there is no signature to keep of an object that is not there).
    assert len(proxy.seen(method="GET", key=source_key(broken))) \
        == (2 if problem == "missing" else 1)
    request = pipeline.db.get_request(request_id)
    assert request is not None and request.status == "failed"
    assert request.error is not None
    assert list(request.error.conversations) == [broken.conversation_id]
    file = pipeline.db.get_file(tid)
    assert file is not None and file.current_version == 1
    assert list(pipeline.store.list_keys(pipeline.training_bucket, f"{tid}/v2/")) == []


# --- Output writes -----------------------------------------------------------------------------


def retried_write_faults(upload: str, bucket: str) -> list[FaultRule]:
    """Faults on every call that writes an object, a mix of kinds on each, and never more per
    object than the policy retries."""
    if upload == "single-part":
        return [FaultRule(TRANSIENT, operations={"PutObject"}, bucket=bucket, per_key_limit=2)]
    return [FaultRule(kinds, operations={operation}, bucket=bucket, per_key_limit=1)
            for operation, kinds in (("CreateMultipartUpload", ("503",)),
                                     ("UploadPart", ("500", "cut", "timeout")),
                                     ("CompleteMultipartUpload", ("slowdown", "cut",
                                                                  "reset")))]


UPLOADS = {"single-part": {}, "multipart": {"multipart_threshold": 1}}


@pytest.mark.parametrize("upload", list(UPLOADS))
def test_transient_write_faults_are_retried_and_the_version_verifies(
        make_faulty_pipeline: Callable[..., ObservedPipeline], proxy: FaultProxy,
        s3_client: BaseClient, upload: str) -> None:
    pipeline = make_faulty_pipeline(**UPLOADS[upload])
    rows = seed_rows(pipeline, 8)
    v1 = create_file(pipeline, rows[:4])
    out = pipeline.training_bucket
    proxy.set_rules(*retried_write_faults(upload, out))
    proxy.clear_log()

    v2 = add_to_file(pipeline, v1.training_file_id, rows[4:])

    built = pipeline.builds[-1]
    assert built.output_retries == proxy.failures(bucket=out) > 0
    assert built.storage_retries == built.output_retries
    writes = {e.operation for e in proxy.seen(bucket=out) if e.method in ("PUT", "POST")}
    assert writes == ({"PutObject"} if upload == "single-part" else MULTIPART_CALLS)
    assert pending_uploads(s3_client, out) == []
    assert [v.version for v in pipeline.db.list_versions(v1.training_file_id)] == [1, 2]
    proxy.clear()
    for record in (v1, v2):
        assert_verifies(pipeline, record)


@pytest.mark.parametrize("upload", list(UPLOADS))
def test_a_write_that_keeps_failing_publishes_nothing(
        make_faulty_pipeline: Callable[..., ObservedPipeline], proxy: FaultProxy,
        s3_client: BaseClient, upload: str) -> None:
    pipeline = make_faulty_pipeline(**UPLOADS[upload])
    rows = seed_rows(pipeline, 8)
    v1 = create_file(pipeline, rows[:4])
    tid, out = v1.training_file_id, pipeline.training_bucket
    # training.json is written first and lands; training.jsonl never does (a single-part put's
    # last attempt lands too, but its answer is cut off).
    jsonl_key = f"{tid}/v2/training.jsonl"
    operation = "PutObject" if upload == "single-part" else "UploadPart"
    kinds = QUICK if upload == "single-part" else ("500", "cut", "timeout")
    proxy.set_rules(FaultRule(kinds, operations={operation}, bucket=out,
                              key=f"^{re.escape(jsonl_key)}$"))
    proxy.clear_log()

    with pytest.raises(TransientStorageError):
        add_to_file(pipeline, tid, rows[4:])

    # Exactly the policy's attempts, one request each, and every multipart upload aborted.
    calls = Counter(e.operation for e in proxy.seen(key=jsonl_key))
    if upload == "single-part":
        assert calls["PutObject"] == ATTEMPTS
    else:
        assert [calls[name] for name in ("CreateMultipartUpload", "UploadPart",
                                         "AbortMultipartUpload", "CompleteMultipartUpload")] \
            == [ATTEMPTS, ATTEMPTS, ATTEMPTS, 0]
    assert proxy.seen(key=f"{tid}/v2/training.json", method="PUT" if upload == "single-part"
                      else "POST")
    assert pending_uploads(s3_client, out) == []
    assert list(pipeline.store.list_keys(out, f"{tid}/v2/")) == []
    file = pipeline.db.get_file(tid)
    assert file is not None and file.current_version == 1
    assert [v.version for v in pipeline.db.list_versions(tid)] == [1]
    assert pipeline.db.get_version(tid, 2) is None
    proxy.clear()
    assert_verifies(pipeline, v1)


@pytest.fixture
def store_behind_proxy(proxy: FaultProxy, bucket_name: str) -> S3ObjectStore:
    """An S3 store with 5 MiB parts behind the proxy; its bucket exists."""
    # Parts of 5 MiB take longer than READ_TIMEOUT to store; no request is held here.
    store = s3_store(proxy, read_timeout=30, multipart_threshold=5 * MIB, part_size=5 * MIB)
    store.ensure_bucket(bucket_name)
    return store


def test_a_multipart_upload_failing_mid_way_is_aborted_and_retried_whole(
        store_behind_proxy: S3ObjectStore, proxy: FaultProxy, s3_client: BaseClient,
        bucket_name: str, tmp_path: Path) -> None:
    data = random.Random(3).randbytes(11 * MIB + 5)
    path = tmp_path / "training.jsonl"
    path.write_bytes(data)
    store = RetryingStore(store_behind_proxy, RetrySettings(attempts=3, base_delay=0,
                                                            max_delay=0))
    proxy.set_rules(FaultRule(("503", "cut"), operations={"UploadPart"},
                              query=r"(^|&)partNumber=2(&|$)", per_key_limit=2))

    store.put_file(bucket_name, "tf/v1/training.jsonl", path)

    assert store.retries.value == 2
    calls = Counter(e.operation for e in proxy.seen(key="tf/v1/training.jsonl"))
    assert (calls["CreateMultipartUpload"], calls["AbortMultipartUpload"],
            calls["CompleteMultipartUpload"], calls["UploadPart"]) == (3, 2, 1, 2 + 2 + 3)
    assert store_behind_proxy.get_bytes(bucket_name, "tf/v1/training.jsonl") == data
    assert not path.exists()
    assert pending_uploads(s3_client, bucket_name) == []


def test_a_multipart_upload_that_keeps_failing_leaves_no_object(
        store_behind_proxy: S3ObjectStore, proxy: FaultProxy, s3_client: BaseClient,
        bucket_name: str, tmp_path: Path) -> None:
    path = tmp_path / "training.jsonl"
    path.write_bytes(random.Random(4).randbytes(11 * MIB))
    store = RetryingStore(store_behind_proxy, RetrySettings(attempts=3, base_delay=0,
                                                            max_delay=0))
    proxy.set_rules(FaultRule(("500", "reset"), operations={"UploadPart"},
                              query=r"(^|&)partNumber=2(&|$)"))

    with pytest.raises(TransientStorageError):
        store.put_file(bucket_name, "tf/v1/training.jsonl", path)

    assert store.retries.value == 2
    calls = Counter(e.operation for e in proxy.seen(key="tf/v1/training.jsonl"))
    assert (calls["CreateMultipartUpload"], calls["AbortMultipartUpload"],
            calls["CompleteMultipartUpload"]) == (3, 3, 0)
    assert store_behind_proxy.stat(bucket_name, "tf/v1/training.jsonl") is None
    assert list(store_behind_proxy.list_keys(bucket_name)) == []
    assert pending_uploads(s3_client, bucket_name) == []
    assert path.exists()  # kept for another attempt


# --- Reads of the previous version ------------------------------------------------------------


def test_a_read_cut_off_resumes_where_it_stopped(
        store_behind_proxy: S3ObjectStore, proxy: FaultProxy, bucket_name: str) -> None:
    data = random.Random(5).randbytes(3 * MIB + 11)
    store_behind_proxy.put_bytes(bucket_name, "tf/v1/training.json", data)
    store = RetryingStore(store_behind_proxy, RetrySettings(attempts=3, base_delay=0,
                                                            max_delay=0))
    proxy.set_rules(FaultRule(["cut"], methods={"GET"}, per_key_limit=2))

    with store.open_read(bucket_name, "tf/v1/training.json") as stream:
        assert stream.read() == data

    assert store.retries.value == 2
    first, *resumed = proxy.seen(method="GET", key="tf/v1/training.json")
    assert first.range is None and len(resumed) == 2
    starts = [int(str(e.range).removeprefix("bytes=").removesuffix("-")) for e in resumed]
    # Each read resumes after what it got, never from the start nor past what was sent (the
    # proxy sent half of each response).
    assert 0 < starts[0] <= len(data) // 2
    assert starts[0] < starts[1] <= starts[0] + (len(data) - starts[0]) // 2


def test_faults_reading_the_previous_version_are_retried_and_counted(
        make_faulty_pipeline: Callable[..., ObservedPipeline], proxy: FaultProxy) -> None:
    pipeline = make_faulty_pipeline()
    rows = seed_rows(pipeline, 8)
    v1 = create_file(pipeline, rows[:4])
    tid, out = v1.training_file_id, pipeline.training_bucket
    # The build reads both objects of version 1 once, before anything else reads them again.
    proxy.set_rules(FaultRule(("cut", "503", "timeout", "reset"), methods={"GET"},
                              bucket=out, key=rf"^{tid}/v1/training\.jsonl?$", per_key_limit=2))
    proxy.clear_log()

    v2 = add_to_file(pipeline, tid, rows[4:])

    built = pipeline.builds[-1]
    assert proxy.injected(bucket=out) == Counter({"cut": 1, "503": 1, "timeout": 1,
                                                  "reset": 1})
    assert built.output_retries == built.storage_retries == 4
    proxy.clear()
    for record in (v1, v2):
        assert_verifies(pipeline, record)


# --- What the Dagster run shows ---------------------------------------------------------------


def test_the_dagster_run_reports_the_retries(
        database_url: str, tmp_path: Path, bucket_name: str, proxy: FaultProxy,
        make_database: Callable[[str], Database], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    settings = fault_settings(database_url, tmp_path, bucket_name, storage_backend="s3",
                              s3_endpoint_url=proxy.url, s3_region="us-east-1")
    store = s3_store(proxy)
    database = make_database(database_url)
    database.upgrade()
    store.ensure_bucket(settings.source_bucket)
    store.ensure_bucket(settings.training_bucket)
    pipeline = Pipeline.from_settings(settings, database, store)
    rows = seed_rows(pipeline, 12)
    request = pipeline.submit(conversation_ids=[c.conversation_id for c in rows],
                              new_file_name="Through faults")
    claimed = pipeline.claim(request.id)
    assert claimed is not None
    tid = claimed.target_file_id
    # The resource's client keeps botocore's read timeout: no request is held here.
    proxy.set_rules(FaultRule(QUICK, rate=0.3, methods={"GET"}, bucket=settings.source_bucket,
                              per_key_limit=ATTEMPTS - 1))
    proxy.clear_log()

    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions("training_files", [tid])
        result = build_definitions(settings).resolve_job_def(TRAINING_FILE_JOB).execute_in_process(
            instance=instance, partition_key=tid,
            tags={REQUEST_TAG: request.id, TRAINING_FILE_TAG: tid}, raise_on_error=False)
        assert result.success
        event = instance.get_latest_materialization_event(dg.AssetKey("training_file_json"))
        assert event is not None and event.asset_materialization is not None
        metadata = event.asset_materialization.metadata

    injected = proxy.failures(method="GET", bucket=settings.source_bucket)
    assert injected > 0
    assert metadata["source_fetch_retries"].value == injected
    assert metadata["storage_retries"].value == injected
    assert metadata["output_retries"].value == 0
    assert set(proxy.injected()) <= FAILING_KINDS
