"""Membership facts of one conversation in a training file, shared by the builder and the
database layer (kept free of heavy imports: the builder runs without SQLAlchemy loaded)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime


@dataclass(frozen=True, slots=True)
class MemberRecord:
    """A row of `training_file_conversations`: one conversation of a file and what built it."""

    training_file_id: str
    conversation_id: str
    position: int
    added_in_version: int
    built_in_version: int
    batch_id: str | None
    source_key: str
    source_sha256: str
    source_updated_at: datetime | None
    pair_count: int
    trainable_pair_count: int
    human_reviewed_count: int
    quality_score: float | None
    persona_key: str | None
    emotional_arc_key: str | None
    topic_key: str | None
    # "train" or "validation" when the file holds out a validation share.
    split: str | None = None
