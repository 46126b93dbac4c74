"""Selection-request eligibility and duplicate rules (contract §4), shared by every entry point."""

from __future__ import annotations

import uuid
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from brightrun_pipeline.errors import RequestRejected
from brightrun_pipeline.models import MAX_CONVERSATIONS_PER_REQUEST

MAX_NAME_LENGTH = 120
# The enrichment status a conversation needs to go into a training file (with a file path).
ELIGIBLE_STATUS = "completed"


@dataclass(frozen=True)
class ConversationFacts:
    """What the rules need to know about one conversation row."""

    conversation_id: str
    enrichment_status: str | None
    enriched_file_path: str | None


class FileSettings(BaseModel):
    """How a training file treats near-duplicates and how much it holds out for validation."""

    model_config = ConfigDict(extra="forbid")

    near_duplicates: Literal["warn", "block"] = "warn"
    validation_fraction: float | None = Field(default=None, gt=0, le=0.5)


def normalize_uuid(raw: object) -> str | None:
    """The canonical lowercase form of a UUID given as text, or None if it is not one."""
    if not isinstance(raw, str):
        return None
    try:
        return str(uuid.UUID(raw.strip()))
    except ValueError:
        return None


def normalize_file_name(raw: object) -> str:
    """A valid training-file name (trimmed, 1–120 printable characters) or a rejection."""
    if not isinstance(raw, str):
        raise RequestRejected("the training file name must be text")
    name = raw.strip()
    if not name:
        raise RequestRejected("the training file name is empty")
    if len(name) > MAX_NAME_LENGTH:
        raise RequestRejected(
            f"the training file name has {len(name)} characters;"
            f" at most {MAX_NAME_LENGTH} are allowed"
        )
    if not name.isprintable():
        raise RequestRejected("the training file name contains non-printable characters")
    return name


def name_key(name: str) -> str:
    """The case-insensitive identity of a training-file name."""
    return name.strip().casefold()


def check_request_size(raw_ids: Sequence[object]) -> None:
    """Reject an empty request or one above the per-request limit."""
    if len(raw_ids) == 0:
        raise RequestRejected("a request needs at least one conversation")
    if len(raw_ids) > MAX_CONVERSATIONS_PER_REQUEST:
        raise RequestRejected(
            f"a request may hold at most {MAX_CONVERSATIONS_PER_REQUEST} conversations; "
            f"this one holds {len(raw_ids)}"
        )


def ineligibility_reason(facts: ConversationFacts) -> str | None:
    """Why a conversation cannot go into any training file, or None if it can."""
    reasons = []
    if facts.enrichment_status != ELIGIBLE_STATUS:
        reasons.append(f"enrichment_status is {facts.enrichment_status!r}, "
                       f"not {ELIGIBLE_STATUS!r}")
    if not facts.enriched_file_path:
        reasons.append("enriched_file_path is null")
    return "; ".join(reasons) or None


def already_in(file_label: str, version: int) -> str:
    """Why a conversation cannot be added to a file that already holds it."""
    return f"already in {file_label} (added in version {version})"


def check_selection(
    raw_ids: Sequence[object],
    facts: Mapping[str, ConversationFacts],
    members: Mapping[str, int],
    *,
    file_label: str,
) -> list[str]:
    """Normalized conversation IDs of a valid selection, or a rejection with a reason per offender.

    `facts` holds the rows found for the normalized IDs; `members` maps the conversations already in
    the target file to the version that added them.
    """
    check_request_size(raw_ids)
    normalized = [normalize_uuid(raw) for raw in raw_ids]
    counts = Counter(cid for cid in normalized if cid is not None)
    reasons: dict[str, str] = {}
    for raw, cid in zip(raw_ids, normalized, strict=True):
        if cid is None:
            reasons[str(raw)] = "not a conversation ID (expected a UUID)"
            continue
        problems = []
        if counts[cid] > 1:
            problems.append(f"repeated in the request ({counts[cid]} times)")
        row = facts.get(cid)
        if row is None:
            problems.append("unknown conversation ID")
        else:
            reason = ineligibility_reason(row)
            if reason:
                problems.append(reason)
        if cid in members:
            problems.append(already_in(file_label, members[cid]))
        if problems:
            reasons[cid] = "; ".join(problems)
    if reasons:
        raise RequestRejected(
            f"{len(reasons)} of {len(raw_ids)} conversations cannot be added to {file_label}",
            reasons,
        )
    return [cid for cid in normalized if cid is not None]


def quality_tier(score: float | None) -> str:
    """The quality tier of a conversation score (contract §6)."""
    if score is None:
        return "unscored"
    if score >= 4.5:
        return "seed_dataset"
    if score >= 3.5:
        return "production"
    if score >= 2.5:
        return "experimental"
    return "rejected"
