"""Membership facts of one conversation in a training file, shared by the builder and the
database layer (kept free of heavy imports: the builder runs without SQLAlchemy loaded)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from brightrun_pipeline.models import QualitySummary


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


@dataclass
class HeaderTotals:
    """Header figures accumulated over the conversations in file order."""

    conversations: int = 0
    pairs: int = 0
    trainable: int = 0
    human_reviewed: int = 0
    scores: list[float] = field(default_factory=list)
    personas: dict[str, int] = field(default_factory=dict)
    arcs: dict[str, int] = field(default_factory=dict)
    topics: dict[str, int] = field(default_factory=dict)

    def add(self, member: MemberRecord) -> None:
        """Count one conversation from its membership facts."""
        self.conversations += 1
        self.pairs += member.pair_count
        self.trainable += member.trainable_pair_count
        self.human_reviewed += member.human_reviewed_count
        if member.quality_score is not None:
            self.scores.append(float(member.quality_score))
        for counts, key in ((self.personas, member.persona_key),
                            (self.arcs, member.emotional_arc_key),
                            (self.topics, member.topic_key)):
            if key is not None:
                counts[key] = counts.get(key, 0) + 1

    def quality_summary(self) -> QualitySummary:
        """The header's quality summary of the conversations counted."""
        from brightrun_pipeline.models import QualitySummary

        scores = self.scores
        return QualitySummary(
            avg_quality_score=math.fsum(scores) / len(scores) if scores else None,
            min_quality_score=min(scores) if scores else None,
            max_quality_score=max(scores) if scores else None,
            human_reviewed_count=self.human_reviewed,
            human_reviewed_percentage=(
                round(100 * self.human_reviewed / self.pairs, 2) if self.pairs else 0.0),
        )

