"""Pydantic models of every document the pipeline reads or writes."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

FORMAT_SPEC = "brightrun-lora-v4"
FORMAT_VERSION = "4.0.0"
MAX_CONVERSATIONS_PER_REQUEST = 80

JSONL_FIELDS = (
    "id",
    "conversation_id",
    "turn_number",
    "conversation_metadata",
    "system_prompt",
    "conversation_history",
    "current_user_input",
    "emotional_context",
    "target_response",
    "training_metadata",
)


class _Open(BaseModel):
    """A document part whose unknown fields are kept."""

    model_config = ConfigDict(extra="allow")


class _Closed(BaseModel):
    """A document part we write ourselves: no unknown fields."""

    model_config = ConfigDict(extra="forbid")


# --- Input: enriched conversation file (contract §5) -------------------------------------


class DatasetMetadata(_Open):
    dataset_name: str
    version: str
    created_date: str
    vertical: str
    total_conversations: int
    total_turns: int


class CommunicationStyle(_Open):
    tone: str
    techniques: list[str]
    avoid: list[str]


class ConsultantProfile(_Open):
    name: str
    business: str
    expertise: str
    years_experience: int | float
    core_philosophy: dict[str, Any]
    communication_style: CommunicationStyle


class PairConversationMetadata(_Open):
    client_persona: str | None
    persona_archetype: str | None
    client_background: str | None
    emotional_arc: str | None
    emotional_arc_key: str | None
    training_topic: str | None
    training_topic_key: str | None


class HistoryTurn(_Open):
    turn_number: int
    role: str
    content: str


class PairTrainingMetadata(_Open):
    quality_score: float | None = None
    quality_criteria: dict[str, Any]
    human_reviewed: bool


class TrainingPair(_Open):
    id: str
    conversation_id: str
    turn_number: int
    conversation_metadata: PairConversationMetadata
    system_prompt: str
    conversation_history: list[HistoryTurn]
    current_user_input: str
    emotional_context: dict[str, Any]
    target_response: str | None
    training_metadata: PairTrainingMetadata


class EnrichedConversationFile(_Open):
    """One `enriched.json`: a conversation's training pairs, its consultant and dataset header."""

    dataset_metadata: DatasetMetadata
    consultant_profile: ConsultantProfile
    training_pairs: list[TrainingPair] = Field(min_length=1)

    @model_validator(mode="after")
    def _turn_numbers_unique(self) -> EnrichedConversationFile:
        seen: set[int] = set()
        for pair in self.training_pairs:
            if pair.turn_number in seen:
                raise ValueError(f"turn_number {pair.turn_number} appears twice")
            seen.add(pair.turn_number)
        return self


# --- Output: full training JSON v4 (contract §6) -----------------------------------------


class QualitySummary(_Closed):
    avg_quality_score: float | None
    min_quality_score: float | None
    max_quality_score: float | None
    human_reviewed_count: int
    human_reviewed_percentage: float


class ScaffoldingDistribution(_Closed):
    personas: dict[str, int]
    emotional_arcs: dict[str, int]
    training_topics: dict[str, int]


class TrainingFileMetadata(_Closed):
    training_file_id: str
    file_name: str
    description: str | None
    version: Literal["4.0.0"] = FORMAT_VERSION
    file_version: int = Field(ge=1)
    format_spec: Literal["brightrun-lora-v4"] = FORMAT_SPEC
    vertical: str | None
    created_date: str
    last_updated: str
    total_conversations: int
    total_training_pairs: int
    trainable_pairs: int
    quality_summary: QualitySummary
    scaffolding_distribution: ScaffoldingDistribution


class Scaffolding(_Closed):
    persona_key: str | None
    persona_name: str | None
    emotional_arc_key: str | None
    emotional_arc: str | None
    training_topic_key: str | None
    training_topic: str | None


QualityTier = Literal["seed_dataset", "production", "experimental", "rejected", "unscored"]


class ConversationBlockMetadata(_Closed):
    conversation_id: str
    batch_id: str | None
    source_file: str
    source_sha256: str
    created_date: str | None
    total_turns: int
    quality_score: float | None
    quality_tier: QualityTier
    added_in_version: int
    scaffolding: Scaffolding


class TrainingConversation(_Closed):
    conversation_metadata: ConversationBlockMetadata
    training_pairs: list[TrainingPair]


class TrainingFileV4(_Closed):
    """The full training JSON, format `brightrun-lora-v4`."""

    training_file_metadata: TrainingFileMetadata
    consultant_profile: ConsultantProfile
    conversations: list[TrainingConversation]


# --- Output: JSONL line (contract §7) ----------------------------------------------------


class JsonlLine(_Closed):
    """One trainable pair of the JSONL file."""

    id: str
    conversation_id: str
    turn_number: int
    conversation_metadata: PairConversationMetadata
    system_prompt: str
    conversation_history: list[HistoryTurn]
    current_user_input: str
    emotional_context: dict[str, Any]
    target_response: str = Field(min_length=1)
    training_metadata: PairTrainingMetadata


# --- Output: manifest (contract §8) ------------------------------------------------------


class ManifestObject(_Closed):
    key: str
    sha256: str
    size: int


class ManifestConversation(_Closed):
    conversation_id: str
    batch_id: str | None
    source_key: str
    source_sha256: str
    pair_count: int
    added_in_version: int
    # The side of the train/validation split, when the file holds one out.
    split: Literal["train", "validation"] | None = None


class Manifest(_Closed):
    """What built one version: its objects, its run and request(s), and every source's hash."""

    training_file_id: str
    file_name: str
    version: int
    created_at: str
    dagster_run_id: str | None
    request_ids: list[str]
    reason: str
    # training.json, training.jsonl and every export the version holds (by object name).
    files: dict[str, ManifestObject]
    conversations: list[ManifestConversation]


# --- Selection requests (contract §2, §4) ------------------------------------------------

RequestStatus = Literal["pending", "queued", "running", "succeeded", "rejected", "failed"]


class RequestError(_Closed):
    message: str
    conversations: dict[str, str] = Field(default_factory=dict)


class SelectionRequest(BaseModel):
    """A curator's request to add conversations to a new or an existing training file."""

    id: str
    training_file_id: str | None = None
    new_file_name: str | None = None
    new_file_description: str | None = None
    # As stored: other applications may write anything here; the rules say what is wrong with it.
    conversation_ids: Any = Field(default_factory=list)
    requested_by: str | None = None
    status: str = "pending"
    error: RequestError | None = None
    result_version: int | None = None
    dagster_run_id: str | None = None
    target_file_id: str | None = None
    attempts: int = 0
    created_at: datetime | None = None
    updated_at: datetime | None = None
    # Who holds a claimed request ("sensor" or "cli") and when it last showed it was alive.
    claimed_by: str | None = None
    heartbeat_at: datetime | None = None
    # The settings a new file starts with (as stored: checked when the request is validated).
    new_file_settings: Any = None
    # The warnings of the check that accepted it (near-duplicates), as submission returns it;
    # not stored: every later check of the request finds them again.
    warnings: dict[str, str] = Field(default_factory=dict, exclude=True)
