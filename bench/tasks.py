"""One measured task per process, so that each gets its own peak RSS.

`python -m bench.tasks TASK DATA_DIR [ARGS]` — the parent (bench/run.py) times the process and
reads its peak RSS from the OS.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import pickle
import sys
import time
from collections.abc import Iterator
from dataclasses import asdict, replace
from datetime import UTC, datetime
from pathlib import Path

import orjson

from brightrun_pipeline.builder import (
    BuildSpec,
    IncomingConversation,
    PreviousVersion,
    build_version,
)
from brightrun_pipeline.config import RetrySettings
from brightrun_pipeline.db.repository import MemberRecord
from brightrun_pipeline.models import JSONL_FIELDS
from brightrun_pipeline.storage import LocalObjectStore, ObjectStore

FILE_ID = "5b0c7f5e-1d1e-4c44-9a4e-6f3f1f6a2b10"
PUBLISHED = datetime(2026, 11, 1, 12, 0, tzinfo=UTC)
# Concurrency of source fetches in the benchmark; overridable via BENCH_CONCURRENCY.
CONCURRENCY = int(os.environ.get("BENCH_CONCURRENCY", "16"))


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


def build_new(data: Path, n: int) -> None:
    """Our build of a new file with the first n conversations."""
    store = CountingStore(data / "storage")
    store.ensure_bucket("training-files")
    spec = BuildSpec(FILE_ID, "Bench", None, PUBLISHED, 1, PUBLISHED, "request", None, [], None,
                     None, None, _incoming(data, 0, n))
    built = build_version(spec, lambda: [], sources=store, source_bucket="conversation-files",
                          outputs=store, output_bucket="training-files", concurrency=CONCURRENCY,
                          retry=RetrySettings())
    # Kept for the incremental task: where version 1 is, and its membership rows (streamed back
    # one at a time, as the database does).
    (data / "v1.pickle").write_bytes(pickle.dumps(
        replace(built, added_members=[], spec=replace(built.spec, additions=[]))))
    with open(data / "v1-members.jsonl", "wb") as out:
        for member in built.added_members:
            out.write(orjson.dumps(asdict(member), default=str) + b"\n")
    print(json.dumps({"fetched": CountingStore.fetched, "json_bytes": built.json.size,
                      "jsonl_bytes": built.jsonl.size}))


def add_80(data: Path, n: int) -> None:
    """Our incremental add of 80 conversations to the file of n built by build_new."""
    built = pickle.loads((data / "v1.pickle").read_bytes())
    store = CountingStore(data / "storage")
    previous = PreviousVersion(1, built.json.key, built.json.sha256, built.json.size,
                               built.jsonl.key, built.jsonl.sha256, built.jsonl.size,
                               built.body_start, built.body_end)
    spec = BuildSpec(FILE_ID, "Bench", None, PUBLISHED, 2, PUBLISHED, "request", None, [],
                     built.vertical, built.consultant_profile, previous,
                     _incoming(data, n, 80))
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


def copy_previous(data: Path, n: int) -> None:
    """The floor of an add: copy version 1's JSON and JSONL bytes."""
    built = pickle.loads((data / "v1.pickle").read_bytes())
    root = data / "storage" / "training-files"
    for key in (built.json.key, built.jsonl.key):
        with open(root / key, "rb") as src, open(data / "copy.tmp", "wb") as dst:
            while chunk := src.read(1 << 20):
                dst.write(chunk)
    (data / "copy.tmp").unlink()


def naive(data: Path, n: int) -> None:
    """The original algorithm: load every source, one dict, json.dump(indent=2), JSONL in memory."""
    rows = _rows(data, 0, n)
    root = data / "storage" / "conversation-files"
    conversations = []
    for row in rows:
        with open(root / row["key"], encoding="utf-8") as handle:
            source = json.load(handle)
        conversations.append({"conversation_metadata": {"conversation_id": row["conversation_id"]},
                              "training_pairs": source["training_pairs"],
                              "profile": source["consultant_profile"]})
    document = {"training_file_metadata": {"total_conversations": len(conversations)},
                "conversations": conversations}
    with open(data / "naive.json", "w", encoding="utf-8") as handle:
        json.dump(document, handle, indent=2, ensure_ascii=False)
    lines = []
    for conversation in document["conversations"]:
        cid = conversation["conversation_metadata"]["conversation_id"]
        for pair in conversation["training_pairs"]:
            if pair.get("target_response"):
                line = {"id": f"{cid}_turn{pair['turn_number']}", "conversation_id": cid}
                line.update({k: pair[k] for k in JSONL_FIELDS[2:]})
                lines.append(json.dumps(line, ensure_ascii=False, separators=(",", ":")))
    (data / "naive.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    (data / "naive.json").unlink()
    (data / "naive.jsonl").unlink()


def orjson_floor(data: Path, n: int) -> None:
    """The floor: load each source with orjson and write its trainable pairs as JSONL."""
    rows = _rows(data, 0, n)
    root = data / "storage" / "conversation-files"
    with open(data / "floor.jsonl", "wb") as out:
        for row in rows:
            source = orjson.loads((root / row["key"]).read_bytes())
            cid = row["conversation_id"]
            for pair in source["training_pairs"]:
                if pair.get("target_response"):
                    line = {"id": f"{cid}_turn{pair['turn_number']}", "conversation_id": cid}
                    line.update({k: pair[k] for k in JSONL_FIELDS[2:]})
                    out.write(orjson.dumps(line))
                    out.write(b"\n")
    (data / "floor.jsonl").unlink()


def s3_fetch_80(data: Path, endpoint: str) -> None:
    """80 source fetches from S3 (moto), BENCH_S3_LATENCY_MS (20) added to every request."""
    import boto3

    from brightrun_pipeline.sources import fetch_sources
    from brightrun_pipeline.storage import S3ObjectStore

    client = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1",
                          aws_access_key_id="bench", aws_secret_access_key="bench")
    latency = float(os.environ.get("BENCH_S3_LATENCY_MS", "20")) / 1000
    if latency:
        client.meta.events.register("before-send.s3.GetObject",
                                    lambda **_: time.sleep(latency))
    store: ObjectStore = S3ObjectStore(client)
    rows = _rows(data, 0, 80)
    started = time.perf_counter()
    fetched = list(fetch_sources(store, "conversation-files",
                                 [(r["conversation_id"], r["key"]) for r in rows],
                                 concurrency=CONCURRENCY, retry=RetrySettings()))
    elapsed = time.perf_counter() - started
    assert all(f.data is not None for f in fetched)
    digest = hashlib.sha256(b"".join(f.data or b"" for f in fetched)).hexdigest()
    print(json.dumps({"fetch_seconds": elapsed, "digest": digest[:12]}))


TASKS = {"build_new": build_new, "add_80": add_80, "copy_previous": copy_previous,
         "naive": naive, "orjson_floor": orjson_floor}

if __name__ == "__main__":
    task, directory, argument = sys.argv[1], Path(sys.argv[2]), sys.argv[3]
    if task == "s3_fetch_80":
        s3_fetch_80(directory, argument)
    else:
        TASKS[task](directory, int(argument))
