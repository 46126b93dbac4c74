"""Our measured tasks, one per process, so that each gets its own peak RSS.

`python -m bench.tasks TASK DATA_DIR [ARGS]` — the parent (bench/run.py) times the process and
reads its peak RSS from the OS. The baselines and floors are in bench/baselines.py, which loads
nothing but the standard library and orjson.

The `_pg` tasks do the same builds through the database named by BENCH_DATABASE_URL (seeded by
the harness): the conversations' catalog rows are read from it, the file's previous version and
membership are streamed from it, and each version is published to it (version row and one
membership row per conversation, in one transaction) under the file's build lease. They are
planned as a rematerialization or `files verify` plans a large build: no request row (a request
holds at most 80 conversations) and, like the rows without a database, no blocking checks.
"""

from __future__ import annotations

import functools
import hashlib
import itertools
import json
import os
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

import orjson

from brightrun_pipeline.builder import (
    BuildSpec,
    IncomingConversation,
    PreviousVersion,
    build_version,
)
from brightrun_pipeline.config import RetrySettings
from brightrun_pipeline.members import MemberRecord
from brightrun_pipeline.models import ManifestObject
from brightrun_pipeline.outputs import EXPORTS
from brightrun_pipeline.storage import LocalObjectStore

if TYPE_CHECKING:
    from brightrun_pipeline.service import Pipeline, StagedVersion, VersionPlan

FILE_ID = "5b0c7f5e-1d1e-4c44-9a4e-6f3f1f6a2b10"
PUBLISHED = datetime(2026, 11, 1, 12, 0, tzinfo=UTC)
# Concurrency of source fetches in the benchmark; overridable via BENCH_CONCURRENCY.
CONCURRENCY = int(os.environ.get("BENCH_CONCURRENCY", "32"))
# Where the `_pg` tasks write their versions (the tasks without a database use training-files).
PG_BUCKET = "training-files-pg"
# The rows compared with the floors build the contract's objects (JSON, JSONL, manifest); the
# "all outputs" rows also build every registered export, as a version does by default.
CORE: tuple[str, ...] = ()
ALL_EXPORTS: tuple[str, ...] = tuple(export.name for export in EXPORTS)


class CountingStore(LocalObjectStore):
    """The local store, counting source reads."""

    fetched = 0

    def get_bytes(self, bucket: str, key: str) -> bytes:
        CountingStore.fetched += 1
        return super().get_bytes(bucket, key)


def _rows(data: Path, first: int, count: int) -> list[dict]:
    """Rows first..first+count of the data set, read line by line (never the whole index)."""
    with open(data / "rows.jsonl", "rb") as lines:
        return [orjson.loads(line) for line in itertools.islice(lines, first, first + count)]


def _incoming(data: Path, first: int, count: int) -> list[IncomingConversation]:
    rows = _rows(data, first, count)
    return [IncomingConversation(
        conversation_id=r["conversation_id"], batch_id=r["batch_id"], source_key=r["key"],
        quality_score=r["quality_score"], persona_key=r["persona_key"],
        emotional_arc_key=r["emotional_arc_key"], topic_key=r["topic_key"],
        created_at=datetime.fromisoformat(r["created_at"]),
        updated_at=datetime.fromisoformat(r["updated_at"])) for r in rows]


def build_new(data: Path, n: int, exports: tuple[str, ...] = CORE) -> None:
    """Our build of a new file with the first n conversations (JSON, JSONL and manifest; with
    `exports`, also those exports)."""
    store = CountingStore(data / "storage")
    store.ensure_bucket("training-files")
    spec = BuildSpec(FILE_ID, "Bench", None, PUBLISHED, 1, PUBLISHED, "request", None, [], None,
                     None, None, _incoming(data, 0, n), exports=exports)
    built = build_version(spec, lambda: [], sources=store, source_bucket="conversation-files",
                          outputs=store, output_bucket="training-files", concurrency=CONCURRENCY,
                          retry=RetrySettings())
    # Kept for the incremental task: where version 1 is, and its membership rows (streamed back
    # one at a time, as the database does).
    (data / "v1.json").write_bytes(orjson.dumps({
        "objects": {name: item.model_dump() for name, item in built.objects.items()},
        "body_start": built.body_start, "body_end": built.body_end,
        "vertical": built.vertical, "consultant_profile": built.consultant_profile}))
    with open(data / "v1-members.jsonl", "wb") as out:
        for member in built.added_members:
            out.write(orjson.dumps(member) + b"\n")
    print(json.dumps({"fetched": CountingStore.fetched, "json_bytes": built.json.size,
                      "jsonl_bytes": built.jsonl.size,
                      "export_bytes": sum(item.size for item in built.exports.values())}))


def add_80(data: Path, n: int, exports: tuple[str, ...] = CORE) -> None:
    """Our incremental add of 80 conversations to the file of n built by build_new (with the
    same `exports`)."""
    built = orjson.loads((data / "v1.json").read_bytes())
    store = CountingStore(data / "storage")
    previous = PreviousVersion(1, {name: ManifestObject(**item)
                                   for name, item in built["objects"].items()},
                               built["body_start"], built["body_end"])
    spec = BuildSpec(FILE_ID, "Bench", None, PUBLISHED, 2, PUBLISHED, "request", None, [],
                     built["vertical"], built["consultant_profile"], previous,
                     _incoming(data, n, 80), exports=exports)
    def members() -> Iterator[MemberRecord]:
        with open(data / "v1-members.jsonl", "rb") as lines:
            for line in lines:
                values = orjson.loads(line)
                values["source_updated_at"] = datetime.fromisoformat(values["source_updated_at"])
                yield MemberRecord(**values)

    result = build_version(spec, members, sources=store,
                           source_bucket="conversation-files", outputs=store,
                           output_bucket="training-files", concurrency=CONCURRENCY,
                           retry=RetrySettings())
    print(json.dumps({"fetched": CountingStore.fetched, "json_bytes": result.json.size}))


def _pipeline(data: Path) -> Pipeline:
    """The service on the harness's database and the data set's store, counting source reads."""
    # Loaded here, not at the top: the tasks without a database do not pay for SQLAlchemy.
    from brightrun_pipeline.db.repository import Database
    from brightrun_pipeline.service import Pipeline

    store = CountingStore(data / "storage")
    store.ensure_bucket(PG_BUCKET)
    return Pipeline(Database(os.environ["BENCH_DATABASE_URL"]), store,
                    training_bucket=PG_BUCKET, fetch_concurrency=CONCURRENCY)


def _additions(pipeline: Pipeline, data: Path, first: int,
               count: int) -> list[IncomingConversation]:
    """Conversations first..first+count of the data set, as the database's catalog has them."""
    with open(data / "rows.jsonl", "rb") as lines:
        ids = [orjson.loads(line)["conversation_id"]
               for line in itertools.islice(lines, first, first + count)]
    from brightrun_pipeline.service import incoming

    rows = pipeline.db.conversations_by_id(ids)
    return [incoming(rows.pop(cid)) for cid in ids]


def _build_and_publish(pipeline: Pipeline, plan: VersionPlan) -> StagedVersion:
    """Take the file's build lease, write the planned version and publish it."""
    from brightrun_pipeline.db.repository import BuildClaim
    from brightrun_pipeline.service import StagedVersion, utc_now

    spec = plan.spec
    owner = f"bench-{os.getpid()}"
    claim = pipeline.db.acquire_build(spec.training_file_id, spec.version, owner=owner,
                                      now=utc_now(), ttl=pipeline.lifecycle.stale_after_seconds)
    assert claim is BuildClaim.ACQUIRED, claim
    staged = StagedVersion(plan, pipeline.build(plan), {}, owner)
    pipeline.publish(staged)
    return staged


def build_new_pg(data: Path, n: int) -> None:
    """build_new, with the conversations read from and version 1 published to PostgreSQL."""
    from brightrun_pipeline.db.repository import NewFile
    from brightrun_pipeline.service import VersionPlan

    pipeline = _pipeline(data)
    spec = BuildSpec(FILE_ID, "Bench", None, PUBLISHED, 1, PUBLISHED, "request", None, [], None,
                     None, None, _additions(pipeline, data, 0, n), exports=CORE)
    plan = VersionPlan(spec, expected_current_version=None,
                       new_file=NewFile(FILE_ID, "Bench", None, None, PUBLISHED))
    built = _build_and_publish(pipeline, plan).built
    print(json.dumps({"fetched": CountingStore.fetched, "json_bytes": built.json.size,
                      "jsonl_bytes": built.jsonl.size}))


def add_80_pg(data: Path, n: int) -> None:
    """add_80 on the file build_new_pg published: previous version and membership streamed from
    PostgreSQL, version 2 published to it."""
    from brightrun_pipeline.service import VersionPlan

    pipeline = _pipeline(data)
    db = pipeline.db
    file, current = db.get_file(FILE_ID), db.get_version(FILE_ID)
    assert file is not None and current is not None and current.version == 1
    previous = pipeline.previous_version(FILE_ID, current.version)
    spec = BuildSpec(FILE_ID, file.name, file.description, file.created_at, 2, PUBLISHED,
                     "request", None, [], file.vertical, file.consultant_profile, previous,
                     _additions(pipeline, data, n, 80), exports=CORE)
    built = _build_and_publish(pipeline, VersionPlan(spec, expected_current_version=1,
                                                     new_file=None)).built
    print(json.dumps({"fetched": CountingStore.fetched, "json_bytes": built.json.size}))


def s3_fetch_80(data: Path, endpoint: str) -> None:
    """80 source fetches from S3 (moto), BENCH_S3_LATENCY_MS (20) added to every request."""
    from brightrun_pipeline.s3_store import S3ObjectStore
    from brightrun_pipeline.sources import fetch_sources
    from resources import ObjectStoreResource

    # The client the product builds (dagster-aws S3Resource, pool sized to the concurrency).
    store = ObjectStoreResource(backend="s3", endpoint_url=endpoint, region_name="us-east-1",
                                aws_access_key_id="bench", aws_secret_access_key="bench",
                                max_pool_connections=CONCURRENCY).store()
    assert isinstance(store, S3ObjectStore)
    latency = float(os.environ.get("BENCH_S3_LATENCY_MS", "20")) / 1000
    if latency:
        store.client.meta.events.register("before-send.s3.GetObject",
                                          lambda **_: time.sleep(latency))
    rows = _rows(data, 0, 80)
    started = time.perf_counter()
    fetched = list(fetch_sources(store, "conversation-files",
                                 [(r["conversation_id"], r["key"]) for r in rows],
                                 concurrency=CONCURRENCY, retry=RetrySettings()))
    elapsed = time.perf_counter() - started
    assert all(f.data is not None for f in fetched)
    digest = hashlib.sha256(b"".join(f.data or b"" for f in fetched)).hexdigest()
    print(json.dumps({"fetch_seconds": elapsed, "digest": digest[:12]}))


TASKS = {"build_new": build_new, "add_80": add_80, "build_new_pg": build_new_pg,
         "add_80_pg": add_80_pg,
         "build_new_all": functools.partial(build_new, exports=ALL_EXPORTS),
         "add_80_all": functools.partial(add_80, exports=ALL_EXPORTS)}

if __name__ == "__main__":
    task, directory, argument = sys.argv[1], Path(sys.argv[2]), sys.argv[3]
    if task == "s3_fetch_80":
        s3_fetch_80(directory, argument)
    else:
        TASKS[task](directory, int(argument))
