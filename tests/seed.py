"""Test data: source rows and enriched files written the way the upstream application writes
them, and training files grown through the pipeline's request life cycle."""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import Callable, Iterable, Sequence
from datetime import UTC
from typing import Any

import orjson
import sqlalchemy as sa
from contract_oracle import SourceConversation

from brightrun_pipeline.db.repository import VersionRecord
from brightrun_pipeline.db.schema import batch_items, batch_jobs, conversations
from brightrun_pipeline.demo_data import (
    DemoBatch,
    DemoBatchItem,
    DemoConversation,
    DemoDataset,
    generate_demo_dataset,
)
from brightrun_pipeline.service import Pipeline


def demo_dataset(seed: int = 11) -> DemoDataset:
    """Two batches of four conversations (one ineligible in each) and one outside any batch."""
    return generate_demo_dataset(seed, batches=2, conversations_per_batch=4, unbatched=1,
                                 ineligible_per_batch=1)


def is_eligible(conversation: DemoConversation) -> bool:
    """Whether the conversation may go into a training file."""
    return (conversation.row["enrichment_status"] == "completed"
            and conversation.row["enriched_file_path"] is not None)


def eligible(dataset: DemoDataset) -> list[DemoConversation]:
    """The dataset's conversations that may go into a training file, in dataset order."""
    return [c for c in dataset.conversations if is_eligible(c)]


def insert_batches(connection: sa.Connection, batches: Iterable[DemoBatch]) -> None:
    """Rows of `batch_jobs`."""
    for batch in batches:
        connection.execute(sa.insert(batch_jobs).values(**dataclasses.asdict(batch)))


def insert_items(connection: sa.Connection, items: Iterable[DemoBatchItem]) -> None:
    """Rows of `batch_items`."""
    for item in items:
        connection.execute(sa.insert(batch_items).values(**dataclasses.asdict(item)))


def insert_conversations(connection: sa.Connection,
                         rows: Iterable[DemoConversation]) -> None:
    """Rows of `conversations`."""
    for conversation in rows:
        connection.execute(sa.insert(conversations).values(**conversation.row))


def write_sources(pipeline: Pipeline, rows: Iterable[DemoConversation]) -> None:
    """The enriched files of conversations that have one, at their `enriched_file_path`."""
    for conversation in rows:
        path = conversation.row["enriched_file_path"]
        if path is not None and conversation.file_bytes is not None:
            pipeline.store.put_bytes(pipeline.source_bucket, str(path), conversation.file_bytes,
                                     replace=True)


def seed_dataset(pipeline: Pipeline, dataset: DemoDataset) -> None:
    """Batches, batch items, conversations and enriched files of a whole dataset."""
    with pipeline.db.engine.begin() as connection:
        insert_batches(connection, dataset.batches)
        insert_conversations(connection, dataset.conversations)
        insert_items(connection, dataset.items)
    write_sources(pipeline, dataset.conversations)


def seed_conversations(pipeline: Pipeline, rows: Sequence[DemoConversation]) -> None:
    """Conversations made outside batches, with their enriched files."""
    with pipeline.db.engine.begin() as connection:
        insert_conversations(connection, rows)
    write_sources(pipeline, rows)


def edited_file(conversation: DemoConversation, edit: Callable[[dict[str, Any]], None]) -> bytes:
    """The conversation's enriched file after `edit` changed its parsed document."""
    assert conversation.file_bytes is not None
    document = orjson.loads(conversation.file_bytes)
    edit(document)
    return orjson.dumps(document, option=orjson.OPT_INDENT_2)


def copy_of(conversation: DemoConversation, *, file_bytes: bytes | None = None,
            **row: Any) -> DemoConversation:
    """Another conversation (new ids, no batch) with the same or the given file and row values."""
    conversation_id = str(uuid.uuid4())
    values = dict(conversation.row)
    values.update(id=str(uuid.uuid4()), conversation_id=conversation_id,
                  enriched_file_path=f"{values['created_by']}/{conversation_id}/enriched.json")
    values.update(row)
    data = conversation.file_bytes if file_bytes is None else file_bytes
    return DemoConversation(row=values, batch_id=None, file_bytes=data)


def oracle_input(conversation: DemoConversation, added_in_version: int) -> SourceConversation:
    """What the contract oracle needs to know about one conversation of a version."""
    row = conversation.row
    created = row["created_at"]
    assert conversation.file_bytes is not None
    return SourceConversation(
        conversation_id=conversation.conversation_id,
        batch_id=conversation.batch_id,
        source_key=str(row["enriched_file_path"]),
        source_bytes=conversation.file_bytes,
        quality_score=row["quality_score"],  # type: ignore[arg-type]
        persona_key=row["persona_key"],  # type: ignore[arg-type]
        emotional_arc_key=row["emotional_arc_key"],  # type: ignore[arg-type]
        topic_key=row["topic_key"],  # type: ignore[arg-type]
        created_at=created.astimezone(UTC).isoformat(timespec="microseconds"),  # type: ignore[union-attr]
        added_in_version=added_in_version,
    )


def claimed_request(pipeline: Pipeline, rows: Sequence[DemoConversation], *,
                    new_file_name: str | None = None, training_file: str | None = None) -> str:
    """Submit a selection request and claim it as the sensor would; returns its id."""
    request = pipeline.submit(conversation_ids=[c.conversation_id for c in rows],
                              new_file_name=new_file_name, training_file=training_file,
                              description=None if new_file_name is None else "test file")
    assert pipeline.claim(request.id) is not None
    return request.id


def create_file(pipeline: Pipeline, rows: Sequence[DemoConversation],
                name: str = "Test file") -> VersionRecord:
    """Version 1 of a new training file holding `rows`."""
    return pipeline.run_request(claimed_request(pipeline, rows, new_file_name=name), "run-v1")


def add_to_file(pipeline: Pipeline, training_file_id: str,
                rows: Sequence[DemoConversation]) -> VersionRecord:
    """The next version of a training file, with `rows` added."""
    request_id = claimed_request(pipeline, rows, training_file=training_file_id)
    return pipeline.run_request(request_id, f"run-{request_id[:8]}")


def version_objects(pipeline: Pipeline, record: VersionRecord) -> tuple[bytes, bytes, bytes]:
    """training.json, training.jsonl and manifest.json of a published version."""
    get = pipeline.store.get_bytes
    bucket = pipeline.training_bucket
    return (get(bucket, record.json_key), get(bucket, record.jsonl_key),
            get(bucket, record.manifest_key))
