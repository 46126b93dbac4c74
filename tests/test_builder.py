"""The version builder: the worked example byte for byte, files that grow version by version
without re-reading what they hold, and failures that publish nothing."""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import math
import os
import random
import shutil
import threading
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import pytest
import sqlalchemy as sa
from contract_oracle import EXAMPLE_DIR, SourceConversation, check_version, load_example
from seed import (
    add_to_file,
    claimed_request,
    copy_of,
    create_file,
    demo_dataset,
    edited_file,
    eligible,
    insert_conversations,
    oracle_input,
    seed_conversations,
    seed_dataset,
    version_objects,
)

from brightrun_pipeline.builder import BuildSpec, IncomingConversation, build_version
from brightrun_pipeline.config import RetrySettings
from brightrun_pipeline.db.repository import VersionRecord
from brightrun_pipeline.demo_data import DemoConversation
from brightrun_pipeline.errors import (
    ObjectNotFound,
    ProcessingFailed,
    RequestRejected,
    SourceError,
    StaleVersion,
    TransientStorageError,
)
from brightrun_pipeline.outputs import BY_NAME, EXPORTS
from brightrun_pipeline.reproduce import reproduce_version
from brightrun_pipeline.retry import call_with_retry
from brightrun_pipeline.s3_store import S3ObjectStore
from brightrun_pipeline.service import Pipeline
from brightrun_pipeline.sources import fetch_sources
from brightrun_pipeline.storage import LocalObjectStore

EXAMPLE_FILE_ID = "39492960-0ef4-5748-8da6-403ed14c1b18"
EXAMPLE_PUBLISHED = datetime(2025, 12, 1, 9, 30, tzinfo=UTC)
EXPORT_NAMES = tuple(export.name for export in EXPORTS)
OBJECT_NAMES = ("training.json", "training.jsonl", *EXPORT_NAMES, "manifest.json")
BODY_OPEN = b'\n  "conversations": [\n'
BODY_CLOSE = b"\n  ]\n}"


class CountingStore(LocalObjectStore):
    """A local store that counts whole-object reads per (bucket, key)."""

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.reads: Counter[tuple[str, str]] = Counter()
        self._lock = threading.Lock()

    def get_bytes(self, bucket: str, key: str) -> bytes:
        with self._lock:
            self.reads[(bucket, key)] += 1
        return super().get_bytes(bucket, key)


class FlakyStore(LocalObjectStore):
    """A local store whose reads of some keys fail transiently a given number of times first."""

    def __init__(self, root: Path, failures: dict[str, int]) -> None:
        super().__init__(root)
        self.failures = dict(failures)
        self.calls: Counter[str] = Counter()
        self._lock = threading.Lock()

    def get_bytes(self, bucket: str, key: str) -> bytes:
        with self._lock:
            self.calls[key] += 1
            if self.failures.get(key, 0) > 0:
                self.failures[key] -= 1
                raise TransientStorageError(f"503 Slow Down reading {bucket}/{key}")
        return super().get_bytes(bucket, key)


def replace_object(store: LocalObjectStore, bucket: str, key: str, data: bytes) -> None:
    """Put other bytes where an object lives, behind the store's back."""
    path = store.local_path(bucket, key)
    assert path is not None and path.is_file()
    temp = path.with_name(path.name + ".tampered")
    temp.write_bytes(data)
    os.replace(temp, path)


def body(training_json: bytes) -> bytes:
    """The bytes of the conversation blocks of a training.json, found without the builder's help."""
    start = training_json.index(BODY_OPEN) + len(BODY_OPEN)
    assert training_json.endswith(BODY_CLOSE)
    return training_json[start:-len(BODY_CLOSE)]


def assert_published(pipeline: Pipeline, record: VersionRecord,
                     conversations: list[SourceConversation], request_ids: list[str]) -> None:
    """The version's objects meet the contract and its row describes them."""
    file = pipeline.db.get_file(record.training_file_id)
    assert file is not None and file.current_version == record.version
    json_bytes, jsonl_bytes, manifest_bytes = version_objects(pipeline, record)
    check_version(
        json_bytes, jsonl_bytes, manifest_bytes,
        training_file_id=file.id, file_name=file.name, description=file.description,
        file_version=record.version, conversations=conversations, request_ids=request_ids,
        last_updated=record.created_at.astimezone(UTC).isoformat(timespec="seconds"),
        created_date=file.created_at.astimezone(UTC).date().isoformat(),
    )
    assert (record.json_sha256, record.json_size) \
        == (hashlib.sha256(json_bytes).hexdigest(), len(json_bytes))
    assert (record.jsonl_sha256, record.jsonl_size) \
        == (hashlib.sha256(jsonl_bytes).hexdigest(), len(jsonl_bytes))
    assert record.manifest_sha256 == hashlib.sha256(manifest_bytes).hexdigest()
    assert record.jsonl_line_count == jsonl_bytes.count(b"\n")
    assert record.conversation_count == len(conversations)
    assert pipeline.db.member_versions(file.id, [c.conversation_id for c in conversations]) \
        == {c.conversation_id: c.added_in_version for c in conversations}


def assert_still_at(pipeline: Pipeline, training_file_id: str, version: int,
                    members: list[DemoConversation]) -> None:
    """Nothing was published past `version`: no row, no membership, no objects."""
    file = pipeline.db.get_file(training_file_id)
    assert file is not None and file.current_version == version
    assert [v.version for v in pipeline.db.list_versions(training_file_id)] \
        == list(range(1, version + 1))
    assert [m.conversation_id for m in pipeline.db.iter_members(training_file_id)] \
        == [c.conversation_id for c in members]
    assert list(pipeline.store.list_keys(pipeline.training_bucket,
                                         f"{training_file_id}/v{version + 1}/")) == []


@pytest.fixture
def rows(pipeline: Pipeline) -> list[DemoConversation]:
    """The eligible conversations of a seeded demo dataset."""
    dataset = demo_dataset()
    seed_dataset(pipeline, dataset)
    return eligible(dataset)


# --- The worked example ----------------------------------------------------------------------


def example_spec() -> BuildSpec:
    with (EXAMPLE_DIR / "conversations.csv").open(encoding="utf-8", newline="") as handle:
        additions = [
            IncomingConversation(
                conversation_id=row["conversation_id"], batch_id=row["batch_job_id"],
                source_key=row["enriched_file_path"], quality_score=float(row["quality_score"]),
                persona_key=row["persona_key"], emotional_arc_key=row["emotional_arc_key"],
                topic_key=row["topic_key"], created_at=datetime.fromisoformat(row["created_at"]),
                updated_at=None)
            for row in csv.DictReader(handle)]
    return BuildSpec(
        training_file_id=EXAMPLE_FILE_ID, file_name="Example training file",
        description="Three conversations from two batches", file_created_at=EXAMPLE_PUBLISHED,
        version=1, published_at=EXAMPLE_PUBLISHED, reason="request", dagster_run_id=None,
        request_ids=[], vertical=None, consultant_profile=None, previous=None,
        additions=additions)


def build_example(root: Path) -> dict[str, bytes]:
    shutil.copytree(EXAMPLE_DIR / "conversation-files", root / "conversation-files")
    store = LocalObjectStore(root)
    store.ensure_bucket("training-files")
    build_version(example_spec(), lambda: [], sources=store, source_bucket="conversation-files",
                  outputs=store, output_bucket="training-files", concurrency=2,
                  retry=RetrySettings(attempts=1))
    return {name: store.get_bytes("training-files", f"{EXAMPLE_FILE_ID}/v1/{name}")
            for name in OBJECT_NAMES}


def test_the_worked_example_is_reproduced(tmp_path: Path) -> None:
    built = build_example(tmp_path)
    expected = {name: (EXAMPLE_DIR / "expected" / name).read_bytes()
                for name in ("training.json", "training.jsonl", "manifest.json")}

    assert built["training.json"] == expected["training.json"]
    assert built["training.jsonl"] == expected["training.jsonl"]
    metadata, conversations = load_example()
    check_version(built["training.json"], built["training.jsonl"], built["manifest.json"],
                  **metadata, conversations=conversations, request_ids=[],
                  last_updated="2025-12-01T09:30:00+00:00", created_date="2025-12-01")
    manifest = orjson.loads(built["manifest.json"])
    assert manifest.pop("reason") == "request"
    # The contract's manifest, plus one entry per export derived from the JSONL.
    exports = {name: manifest["files"].pop(name) for name in EXPORT_NAMES}
    assert manifest == orjson.loads(expected["manifest.json"])
    for name, entry in exports.items():
        data = built[name]
        assert entry == {"key": f"{EXAMPLE_FILE_ID}/v1/{name}",
                         "sha256": hashlib.sha256(data).hexdigest(), "size": len(data)}
        assert data.count(b"\n") == built["training.jsonl"].count(b"\n")


def test_building_the_same_spec_twice_gives_the_same_bytes(tmp_path: Path) -> None:
    assert build_example(tmp_path / "first") == build_example(tmp_path / "second")


@pytest.mark.parametrize("failing", ["training.json", "training.chat.jsonl", "manifest.json"])
def test_a_failing_output_fails_the_build_and_stores_nothing(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, failing: str) -> None:
    # The first output written, one written after the JSONL, and the last one.
    def broken(build: object, out: object) -> None:
        raise RuntimeError(f"{failing} could not be written")

    monkeypatch.setattr(BY_NAME[failing], "write", broken)
    with pytest.raises(RuntimeError, match=failing):
        build_example(tmp_path)
    store = LocalObjectStore(tmp_path)
    assert list(store.list_keys("training-files")) == []
    assert not [t for t in threading.enumerate() if t.name.startswith("brightrun-output")]
    assert not list(store.scratch_dir("training-files").glob("build-*"))


# --- Versions through the pipeline ------------------------------------------------------------


def test_create_then_add(pipeline: Pipeline, rows: list[DemoConversation]) -> None:
    first, added = rows[:3], rows[3:6]
    v1 = create_file(pipeline, first)
    tid = v1.training_file_id
    v1_objects = version_objects(pipeline, v1)
    assert_published(pipeline, v1, [oracle_input(c, 1) for c in first], v1.request_ids)

    v2 = add_to_file(pipeline, tid, added)

    assert v2.version == 2
    assert_published(pipeline, v2, [oracle_input(c, 1) for c in first]
                     + [oracle_input(c, 2) for c in added], v2.request_ids)
    v2_json, v2_jsonl, _ = version_objects(pipeline, v2)
    # Version 1's blocks and lines open version 2's, byte for byte.
    assert body(v2_json).startswith(body(v1_objects[0]) + b",\n")
    assert v2_jsonl.startswith(v1_objects[1])
    # Version 1 is untouched by the build of version 2.
    assert version_objects(pipeline, v1) == v1_objects
    assert pipeline.db.get_version(tid, 1) == v1
    for record in (v1, v2):
        (request_id,) = record.request_ids
        request = pipeline.db.get_request(request_id)
        assert request is not None
        assert (request.status, request.result_version, request.error) \
            == ("succeeded", record.version, None)


def test_versions_in_s3_are_built_added_to_and_reproduced(
        make_pipeline: Callable[..., Pipeline], make_s3_client: Callable[..., Any],
        bucket_name: str) -> None:
    # Sources and training files in S3 over HTTP (moto): every upload multipart, the previous
    # version streamed back from S3 while the next one is built.
    store = S3ObjectStore(make_s3_client(), multipart_threshold=1)
    pipeline = make_pipeline(store, source_bucket=f"{bucket_name}-src",
                             training_bucket=f"{bucket_name}-out")
    dataset = demo_dataset()
    seed_dataset(pipeline, dataset)
    rows = eligible(dataset)
    first, added = rows[:3], rows[3:6]

    v1 = create_file(pipeline, first)
    assert_published(pipeline, v1, [oracle_input(c, 1) for c in first], v1.request_ids)
    v1_objects = version_objects(pipeline, v1)
    v2 = add_to_file(pipeline, v1.training_file_id, added)

    assert_published(pipeline, v2, [oracle_input(c, 1) for c in first]
                     + [oracle_input(c, 2) for c in added], v2.request_ids)
    v2_json, v2_jsonl, _ = version_objects(pipeline, v2)
    assert body(v2_json).startswith(body(v1_objects[0]) + b",\n")
    assert v2_jsonl.startswith(v1_objects[1])
    for version in (1, 2):
        comparisons = reproduce_version(pipeline, v1.training_file_id, version)
        assert [(c.name, c.matches) for c in comparisons] == [(n, True) for n in OBJECT_NAMES]


def test_scores_keep_every_digit_across_versions(
        pipeline: Pipeline, rows: list[DemoConversation]) -> None:
    precise = copy_of(rows[0])
    seed_conversations(pipeline, [precise])
    with pipeline.db.engine.begin() as connection:
        connection.execute(sa.text(
            "UPDATE conversations SET quality_score = 3.14159265358979323 "
            "WHERE conversation_id = :cid"), {"cid": precise.conversation_id})
    precise = dataclasses.replace(
        precise, row={**precise.row, "quality_score": float("3.14159265358979323")})
    tid = create_file(pipeline, [precise, rows[1]]).training_file_id

    # Version 2's header sums version 1's scores from what the database kept of them.
    v2 = add_to_file(pipeline, tid, rows[2:3])

    assert_published(pipeline, v2, [oracle_input(precise, 1), oracle_input(rows[1], 1),
                                    oracle_input(rows[2], 2)], v2.request_ids)
    scores = [c.row["quality_score"] for c in (precise, rows[1], rows[2])]
    stored = pipeline.db.get_version(tid, 2)
    assert stored is not None
    assert stored.avg_quality_score == math.fsum(s for s in scores if s is not None) \
        / sum(s is not None for s in scores)


def test_adding_reads_only_the_new_sources(make_pipeline: Callable[..., Pipeline],
                                           tmp_path: Path) -> None:
    store = CountingStore(tmp_path / "counted")
    pipeline = make_pipeline(store)
    dataset = demo_dataset()
    seed_dataset(pipeline, dataset)
    rows = eligible(dataset)
    tid = create_file(pipeline, rows[:3]).training_file_id
    assert {key for bucket, key in store.reads if bucket == pipeline.source_bucket} \
        == {c.row["enriched_file_path"] for c in rows[:3]}
    store.reads.clear()

    request_id = claimed_request(pipeline, rows[3:5], training_file=tid)
    # The submission check read each new source once, for its near-duplicate signature.
    assert {key: n for (bucket, key), n in store.reads.items()
            if bucket == pipeline.source_bucket} \
        == {c.row["enriched_file_path"]: 1 for c in rows[3:5]}
    store.reads.clear()

    pipeline.run_request(request_id, "run-v2")

    assert {key: n for (bucket, key), n in store.reads.items()
            if bucket == pipeline.source_bucket} \
        == {c.row["enriched_file_path"]: 1 for c in rows[3:5]}


def test_building_the_same_plan_twice_gives_the_same_bytes(
        pipeline: Pipeline, rows: list[DemoConversation]) -> None:
    tid = create_file(pipeline, rows[:2]).training_file_id
    plan = pipeline.start(claimed_request(pipeline, rows[2:4], training_file=tid), "run-2")

    first_build = pipeline.build(plan)
    first = [pipeline.store.get_bytes(pipeline.training_bucket, f"{tid}/v2/{name}")
             for name in OBJECT_NAMES]
    second_build = pipeline.build(plan)
    second = [pipeline.store.get_bytes(pipeline.training_bucket, f"{tid}/v2/{name}")
              for name in OBJECT_NAMES]

    assert first == second
    assert (first_build.json, first_build.jsonl, first_build.manifest) \
        == (second_build.json, second_build.jsonl, second_build.manifest)


# --- Sources that cannot be used ----------------------------------------------------------------


def _delete_pair_field(name: str) -> Callable[[dict[str, Any]], None]:
    def edit(document: dict[str, Any]) -> None:
        del document["training_pairs"][1][name]
    return edit


def _repeat_turn(document: dict[str, Any]) -> None:
    document["training_pairs"][1]["turn_number"] = document["training_pairs"][0]["turn_number"]


def _no_pairs(document: dict[str, Any]) -> None:
    document["training_pairs"] = []


def _no_consultant(document: dict[str, Any]) -> None:
    del document["consultant_profile"]


def _numeric_target(document: dict[str, Any]) -> None:
    document["training_pairs"][0]["target_response"] = 42


BROKEN_SOURCES: dict[str, tuple[bytes | Callable[[dict[str, Any]], None] | None, str]] = {
    "missing": (None, "is missing"),
    "truncated-json": (b'{"dataset_metadata": {', "is not valid JSON"),
    "not-utf8": (b"\xff\xfe{}", "is not valid JSON"),
    "json-array": (b'[{"training_pairs": []}]', "is not a JSON object"),
    "pair-without-target-response": (
        _delete_pair_field("target_response"), "training_pairs.1.target_response: Field required"),
    "pair-without-training-metadata": (
        _delete_pair_field("training_metadata"),
        "training_pairs.1.training_metadata: Field required"),
    "repeated-turn-number": (_repeat_turn, "turn_number 1 appears twice"),
    "no-training-pairs": (_no_pairs, "training_pairs: List should have at least 1 item"),
    "no-consultant-profile": (_no_consultant, "consultant_profile: Field required"),
    "numeric-target-response": (_numeric_target, "training_pairs.0.target_response"),
}


@pytest.mark.parametrize("case", list(BROKEN_SOURCES))
def test_an_unusable_source_fails_the_request_and_publishes_nothing(
        pipeline: Pipeline, rows: list[DemoConversation], case: str) -> None:
    content, reason = BROKEN_SOURCES[case]
    tid = create_file(pipeline, rows[:2]).training_file_id
    if content is None:
        broken = copy_of(rows[2])
        with pipeline.db.engine.begin() as connection:
            insert_conversations(connection, [broken])
    else:
        data = content if isinstance(content, bytes) else edited_file(rows[2], content)
        broken = copy_of(rows[2], file_bytes=data)
        seed_conversations(pipeline, [broken])
    request_id = claimed_request(pipeline, [rows[3], broken, rows[4]], training_file=tid)

    with pytest.raises(SourceError) as raised:
        pipeline.run_request(request_id, "run-broken")

    assert raised.value.conversation_id == broken.conversation_id
    assert reason in raised.value.reason
    request = pipeline.db.get_request(request_id)
    assert request is not None and request.status == "failed"
    assert request.error is not None
    assert list(request.error.conversations) == [broken.conversation_id]
    assert reason in request.error.conversations[broken.conversation_id]
    assert broken.conversation_id in request.error.message
    assert_still_at(pipeline, tid, 1, rows[:2])


def test_an_unusable_source_fails_a_new_file_without_creating_it(
        pipeline: Pipeline, rows: list[DemoConversation]) -> None:
    broken = copy_of(rows[1], file_bytes=b"not json")
    seed_conversations(pipeline, [broken])
    request_id = claimed_request(pipeline, [rows[0], broken], new_file_name="Never created")

    with pytest.raises(SourceError):
        pipeline.run_request(request_id, "run-new")

    assert pipeline.db.list_files() == []
    request = pipeline.db.get_request(request_id)
    assert request is not None and request.status == "failed"
    assert request.error is not None and list(request.error.conversations) \
        == [broken.conversation_id]


def _other_consultant(document: dict[str, Any]) -> None:
    document["consultant_profile"]["name"] = "Someone Else, CFP"


def test_a_conversation_of_another_consultant_is_rejected(
        pipeline: Pipeline, rows: list[DemoConversation]) -> None:
    tid = create_file(pipeline, rows[:2]).training_file_id
    other = copy_of(rows[2], file_bytes=edited_file(rows[2], _other_consultant))
    seed_conversations(pipeline, [other])
    request_id = claimed_request(pipeline, [rows[3], other], training_file=tid)

    with pytest.raises(RequestRejected):
        pipeline.run_request(request_id, "run-other")

    request = pipeline.db.get_request(request_id)
    assert request is not None and request.status == "rejected"
    assert request.error is not None
    assert list(request.error.conversations) == [other.conversation_id]
    assert "Someone Else, CFP" in request.error.conversations[other.conversation_id]
    assert_still_at(pipeline, tid, 1, rows[:2])


def test_a_new_file_mixing_consultants_is_rejected(
        pipeline: Pipeline, rows: list[DemoConversation]) -> None:
    other = copy_of(rows[1], file_bytes=edited_file(rows[1], _other_consultant))
    seed_conversations(pipeline, [other])
    request_id = claimed_request(pipeline, [rows[0], other, rows[2]], new_file_name="Mixed")

    with pytest.raises(RequestRejected) as raised:
        pipeline.run_request(request_id, "run-mixed")

    assert list(raised.value.conversations) == [other.conversation_id]
    assert pipeline.db.list_files() == []
    request = pipeline.db.get_request(request_id)
    assert request is not None and request.status == "rejected"


# --- Transient storage errors -----------------------------------------------------------------


@pytest.mark.parametrize(("failures", "attempts", "succeeds"), [
    (0, 1, True),
    (1, 2, True),
    (3, 4, True),
    (1, 1, False),
    (3, 3, False),
])
def test_transient_errors_are_retried_per_fetch(
        make_pipeline: Callable[..., Pipeline], tmp_path: Path,
        failures: int, attempts: int, succeeds: bool) -> None:
    dataset = demo_dataset()
    rows = eligible(dataset)[:3]
    flaky_key = str(rows[1].row["enriched_file_path"])
    store = FlakyStore(tmp_path / "flaky", {})
    pipeline = make_pipeline(store, attempts=attempts)
    seed_dataset(pipeline, dataset)
    request_id = claimed_request(pipeline, rows, new_file_name="Flaky sources")
    # The faults start after the submission check read the sources (near-duplicate signatures).
    store.failures[flaky_key] = failures
    store.calls.clear()

    if succeeds:
        record = pipeline.run_request(request_id, "run-flaky")
        assert_published(pipeline, record, [oracle_input(c, 1) for c in rows], [request_id])
    else:
        with pytest.raises(SourceError) as raised:
            pipeline.run_request(request_id, "run-flaky")
        assert raised.value.conversation_id == rows[1].conversation_id
        assert "503 Slow Down" in raised.value.reason
        request = pipeline.db.get_request(request_id)
        assert request is not None and request.status == "failed"
        assert request.error is not None
        assert list(request.error.conversations) == [rows[1].conversation_id]
        assert pipeline.db.list_files() == []
    assert store.calls[flaky_key] == min(failures + 1, attempts)
    # Only the flaky source is read twice; a failed build may stop before reading the last one.
    first, last = (store.calls[str(c.row["enriched_file_path"])] for c in (rows[0], rows[2]))
    assert first == 1
    assert (last == 1) if succeeds else (last <= 1)


class Failing:
    """A fetch that fails transiently `failures` times, then returns its bytes."""

    def __init__(self, failures: int, error: Exception | None = None) -> None:
        self.failures = failures
        self.error = error or TransientStorageError("connection reset")
        self.calls = 0

    def __call__(self) -> bytes:
        self.calls += 1
        if self.calls <= self.failures:
            raise self.error
        return b"payload"


def test_backoff_doubles_up_to_the_cap() -> None:
    slept: list[float] = []
    fetch = Failing(6)
    retry = RetrySettings(attempts=7, base_delay=0.1, max_delay=2.0)

    assert call_with_retry(fetch, retry, sleep=slept.append, rng=lambda: 1.0) == b"payload"

    assert fetch.calls == 7
    assert slept == pytest.approx([0.1, 0.2, 0.4, 0.8, 1.6, 2.0])


def test_backoff_is_jittered_within_its_bounds() -> None:
    draws = random.Random(20251201)
    drawn: list[float] = []

    def rng() -> float:
        drawn.append(draws.random())
        return drawn[-1]

    slept: list[float] = []
    retry = RetrySettings(attempts=12, base_delay=0.05, max_delay=3.0)

    assert call_with_retry(Failing(11), retry, sleep=slept.append, rng=rng) == b"payload"

    ceilings = [min(3.0, 0.05 * 2 ** n) for n in range(11)]
    assert slept == pytest.approx([c * d for c, d in zip(ceilings, drawn, strict=True)])
    assert all(0 <= delay <= ceiling for delay, ceiling in zip(slept, ceilings, strict=True))
    assert len(set(slept)) == len(slept)


def test_retries_give_up_after_the_last_attempt() -> None:
    slept: list[float] = []
    fetch = Failing(10)

    with pytest.raises(TransientStorageError):
        call_with_retry(fetch, RetrySettings(attempts=4, base_delay=0.1, max_delay=1.0),
                        sleep=slept.append, rng=lambda: 0.5)

    assert fetch.calls == 4
    assert slept == pytest.approx([0.05, 0.1, 0.2])


def test_permanent_errors_are_not_retried() -> None:
    slept: list[float] = []
    fetch = Failing(10, ObjectNotFound("conversation-files", "u/c/enriched.json"))

    with pytest.raises(ObjectNotFound):
        call_with_retry(fetch, RetrySettings(attempts=5), sleep=slept.append, rng=lambda: 0.5)

    assert (fetch.calls, slept) == (1, [])


def test_sources_come_back_in_request_order(tmp_path: Path) -> None:
    store = LocalObjectStore(tmp_path)
    store.ensure_bucket("conversation-files")
    wanted = [(f"c{n}", f"u/c{n}/enriched.json") for n in range(40)]
    for cid, key in wanted:
        if cid != "c17":
            store.put_bytes("conversation-files", key, cid.encode())

    fetched = list(fetch_sources(store, "conversation-files", wanted, concurrency=3,
                                 retry=RetrySettings(attempts=1)))

    assert [(f.conversation_id, f.key) for f in fetched] == wanted
    assert [f.data for f in fetched if f.conversation_id != "c17"] \
        == [cid.encode() for cid, _ in wanted if cid != "c17"]
    (missing,) = [f for f in fetched if f.conversation_id == "c17"]
    assert missing.data is None and isinstance(missing.error, ObjectNotFound)


# --- The previous version must be the one recorded ----------------------------------------------


def _flip_one_byte(data: bytes) -> bytes:
    index = data.index(b"a", len(data) // 2)
    return data[:index] + b"e" + data[index + 1:]


@pytest.mark.parametrize(("name", "tamper"), [
    ("training.json", _flip_one_byte),
    ("training.json", lambda data: data[:-200]),
    ("training.json", lambda data: data + b"\n"),
    ("training.jsonl", _flip_one_byte),
    ("training.jsonl", lambda data: data + data.splitlines(keepends=True)[0]),
], ids=["json-flipped", "json-truncated", "json-appended", "jsonl-flipped", "jsonl-appended"])
def test_a_tampered_previous_version_is_not_built_upon(
        pipeline: Pipeline, rows: list[DemoConversation], name: str,
        tamper: Callable[[bytes], bytes]) -> None:
    tid = create_file(pipeline, rows[:2]).training_file_id
    key = f"{tid}/v1/{name}"
    store = pipeline.store
    assert isinstance(store, LocalObjectStore)
    replace_object(store, pipeline.training_bucket, key,
                   tamper(store.get_bytes(pipeline.training_bucket, key)))
    request_id = claimed_request(pipeline, rows[2:3], training_file=tid)

    with pytest.raises(ProcessingFailed, match=f"{name} of version 1 "
                                                "(does not match its recorded|ends early)"):
        pipeline.run_request(request_id, "run-on-tampered")

    request = pipeline.db.get_request(request_id)
    assert request is not None and request.status == "failed"
    assert_still_at(pipeline, tid, 1, rows[:2])


# --- Leftovers and stale writers ----------------------------------------------------------------


def test_leftovers_of_a_failed_attempt_are_replaced(
        pipeline: Pipeline, rows: list[DemoConversation]) -> None:
    tid = create_file(pipeline, rows[:2]).training_file_id
    plan = pipeline.start(claimed_request(pipeline, rows[2:4], training_file=tid), "run-2")
    for name in OBJECT_NAMES:
        pipeline.store.put_bytes(pipeline.training_bucket, f"{tid}/v2/{name}", b"half-written")

    # Taking the version's build lease clears what an abandoned attempt left at its keys.
    staged = pipeline.stage(plan)

    assert staged is not None and staged.passed
    data = pipeline.store.get_bytes(pipeline.training_bucket, f"{tid}/v2/training.json")
    assert hashlib.sha256(data).hexdigest() == staged.built.json.sha256
    assert pipeline.publish(staged).version == 2


def test_a_stale_build_never_overwrites_a_published_version(
        pipeline: Pipeline, rows: list[DemoConversation]) -> None:
    tid = create_file(pipeline, rows[:2]).training_file_id
    stale = pipeline.start(claimed_request(pipeline, rows[2:3], training_file=tid), "run-a")
    winner = add_to_file(pipeline, tid, rows[3:4])
    assert winner.version == 2
    published = [pipeline.store.get_bytes(pipeline.training_bucket, f"{tid}/v2/{name}")
                 for name in OBJECT_NAMES]

    with pytest.raises(StaleVersion):
        # Written without the version's lease, at keys that already hold version 2.
        build_version(stale.spec, lambda: pipeline.db.iter_members(tid), sources=pipeline.store,
                      source_bucket=pipeline.source_bucket, outputs=pipeline.store,
                      output_bucket=pipeline.training_bucket, concurrency=2,
                      retry=RetrySettings(attempts=1))

    assert [pipeline.store.get_bytes(pipeline.training_bucket, f"{tid}/v2/{name}")
            for name in OBJECT_NAMES] == published
    # Through the lease, the stale plan finds the file moved on and builds version 3 instead.
    staged = pipeline.stage(stale)
    assert staged is not None and staged.plan.spec.version == 3
    assert [pipeline.store.get_bytes(pipeline.training_bucket, f"{tid}/v2/{name}")
            for name in OBJECT_NAMES] == published
