"""Lineage: which conversations (and which source bytes) built a version, and where a
conversation went."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from brightrun_pipeline.errors import UsageError
from brightrun_pipeline.models import Manifest

if TYPE_CHECKING:
    from brightrun_pipeline.service import Pipeline


def read_manifest(pipeline: Pipeline, training_file_id: str, version: int | None) -> Manifest:
    """The manifest of a published version (the current one when `version` is None)."""
    record = pipeline.db.get_version(training_file_id, version)
    if record is None:
        which = "version yet" if version is None else f"version {version}"
        raise UsageError(f"training file {training_file_id} has no published {which}")
    return Manifest.model_validate_json(
        pipeline.store.get_bytes(pipeline.training_bucket, record.manifest_key))


def version_lineage_rows(pipeline: Pipeline, training_file_id: str,
                         version: int | None) -> list[dict[str, Any]]:
    """One row per conversation of a version: batch, scaffolding, quality, source hash, version."""
    manifest = read_manifest(pipeline, training_file_id, version)
    facts = {m.conversation_id: m for m in pipeline.db.iter_members(training_file_id)}
    rows = []
    for entry in manifest.conversations:
        member = facts.get(entry.conversation_id)
        rows.append({
            "conversation_id": entry.conversation_id,
            "batch_id": entry.batch_id,
            "persona": member.persona_key if member else None,
            "arc": member.emotional_arc_key if member else None,
            "topic": member.topic_key if member else None,
            "quality": member.quality_score if member else None,
            "source_key": entry.source_key,
            "source_sha256": entry.source_sha256,
            "pair_count": entry.pair_count,
            "added_in_version": entry.added_in_version,
        })
    return rows


@dataclass(frozen=True)
class Appearance:
    """One training file that holds a conversation."""

    training_file_id: str
    file_name: str
    added_in_version: int
    current_version: int | None
    versions: list[int]
    source_sha256: str


def conversation_lineage(pipeline: Pipeline, conversation_id: str) -> list[Appearance]:
    """Every training file and version that contains a conversation (files only grow, so every
    version from the one that added it onwards)."""
    appearances = []
    for file, member in pipeline.db.files_containing(conversation_id):
        current = file.current_version or 0
        appearances.append(Appearance(
            training_file_id=file.id, file_name=file.name,
            added_in_version=member.added_in_version, current_version=file.current_version,
            versions=list(range(member.added_in_version, current + 1)),
            source_sha256=member.source_sha256))
    return appearances
