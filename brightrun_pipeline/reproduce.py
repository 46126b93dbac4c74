"""Reproduce a published version from its manifest and compare it with what was published."""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from brightrun_pipeline.builder import BuildSpec, IncomingConversation, build_version
from brightrun_pipeline.errors import ProcessingFailed, UsageError
from brightrun_pipeline.outputs import EXPORTS
from brightrun_pipeline.queries import read_manifest
from brightrun_pipeline.storage import LocalObjectStore

if TYPE_CHECKING:
    from brightrun_pipeline.service import Pipeline

# Whole exports (their split parts are written with them).
EXPORT_NAMES = frozenset(export.name for export in EXPORTS)


@dataclass(frozen=True)
class Comparison:
    """One object's published and reproduced hashes."""

    name: str
    published_sha256: str
    rebuilt_sha256: str

    @property
    def matches(self) -> bool:
        """Whether the rebuild reproduced the published bytes."""
        return self.published_sha256 == self.rebuilt_sha256


def reproduce_version(pipeline: Pipeline, training_file_id: str,
                      version: int | None) -> list[Comparison]:
    """Rebuild a version from its manifest's sources in a temporary place; compare the hashes."""
    db = pipeline.db
    file = db.get_file(training_file_id)
    if file is None:
        raise UsageError(f"training file {training_file_id} does not exist")
    record = db.get_version(training_file_id, version)
    if record is None:
        raise UsageError(f"training file {file.name!r} has no version {version}")
    manifest = read_manifest(pipeline, training_file_id, record.version)
    members = {m.conversation_id: m for m in db.iter_members(training_file_id)}
    rows = db.conversations_by_id(entry.conversation_id for entry in manifest.conversations)
    conversations = []
    for entry in manifest.conversations:
        member, row = members.get(entry.conversation_id), rows.get(entry.conversation_id)
        if member is None or row is None:
            raise ProcessingFailed(f"conversation {entry.conversation_id} of the manifest is no "
                                   "longer in the database; the version cannot be rebuilt")
        conversations.append(IncomingConversation(
            conversation_id=entry.conversation_id, batch_id=entry.batch_id,
            source_key=entry.source_key, quality_score=member.quality_score,
            persona_key=member.persona_key, emotional_arc_key=member.emotional_arc_key,
            topic_key=member.topic_key, created_at=row.created_at,
            updated_at=member.source_updated_at, added_in_version=entry.added_in_version))
    spec = BuildSpec(
        training_file_id=training_file_id, file_name=manifest.file_name,
        description=file.description, file_created_at=file.created_at,
        version=record.version, published_at=record.created_at, reason=record.reason,
        dagster_run_id=record.dagster_run_id, request_ids=list(record.request_ids),
        vertical=None, consultant_profile=None, previous=None, additions=conversations,
        # Exactly the exports the version was published with (older versions have none), split
        # as its manifest records.
        exports=tuple(name for name in manifest.files if name in EXPORT_NAMES),
        splits=({e.conversation_id: e.split for e in manifest.conversations if e.split}
                if any(e.split for e in manifest.conversations) else None))
    with tempfile.TemporaryDirectory(prefix="brightrun-verify-") as scratch:
        store = LocalObjectStore(Path(scratch))
        store.ensure_bucket("rebuild")
        built = build_version(spec, lambda: [], sources=pipeline.store,
                              source_bucket=pipeline.source_bucket, outputs=store,
                              output_bucket="rebuild", concurrency=pipeline.fetch_concurrency,
                              retry=pipeline.retry)
    changed = {m.conversation_id: m.source_sha256 for m in built.added_members}
    for entry in manifest.conversations:
        if changed.get(entry.conversation_id) != entry.source_sha256:
            raise ProcessingFailed(
                f"the source of conversation {entry.conversation_id} changed since version "
                f"{record.version} was built; it cannot be reproduced from today's sources",
                {entry.conversation_id: "source bytes differ from the manifest's sha256"})
    rebuilt = {name: item.sha256 for name, item in built.objects.items()}
    published = {o.name: o.sha256 for o in db.version_objects(training_file_id, record.version)}
    # Versions recorded before objects were listed by name have only their three columns.
    published = published or {"training.json": record.json_sha256,
                              "training.jsonl": record.jsonl_sha256,
                              "manifest.json": record.manifest_sha256}
    return [Comparison(name, sha256, rebuilt.get(name, "(not rebuilt)"))
            for name, sha256 in published.items()]
