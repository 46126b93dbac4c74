"""The demo data generator: deterministic, contract-shaped and consistent with its rows."""

from __future__ import annotations

import ast
import itertools
import json
import uuid
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path

import orjson
import pytest

from brightrun_pipeline import demo_data
from brightrun_pipeline.demo_data import (
    EMOTIONAL_ARC_KEYS,
    PERSONA_KEYS,
    TOPIC_KEYS,
    DemoConversation,
    DemoDataset,
    demo_consultant_profile,
    generate_demo_dataset,
    iter_demo_conversations,
    reenrich_conversation,
    render_enriched_file,
)

CONVERSATION_COLUMNS = [
    "id",
    "conversation_id",
    "title",
    "persona_key",
    "emotional_arc_key",
    "topic_key",
    "tier",
    "quality_score",
    "empathy_score",
    "clarity_score",
    "appropriateness_score",
    "brand_voice_alignment",
    "enrichment_status",
    "enriched_file_path",
    "created_by",
    "created_at",
    "updated_at",
]
SCORE_COLUMNS = CONVERSATION_COLUMNS[7:12]
PAIR_KEYS = {
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
}
METADATA_KEYS = {
    "client_persona",
    "persona_archetype",
    "client_background",
    "emotional_arc",
    "emotional_arc_key",
    "training_topic",
    "training_topic_key",
}
TRAINING_METADATA_KEYS = {
    "difficulty_level",
    "key_learning_objective",
    "demonstrates_skills",
    "conversation_turn",
    "emotional_progression_target",
    "quality_score",
    "quality_criteria",
    "human_reviewed",
    "reviewer_notes",
    "use_as_seed_example",
}
CRITERIA_KEYS = {"empathy_score", "clarity_score", "appropriateness_score", "brand_voice_alignment"}
KNOWN_TOP_LEVEL = {"dataset_metadata", "consultant_profile", "training_pairs"}


@pytest.fixture(scope="module")
def dataset() -> DemoDataset:
    return generate_demo_dataset()


def _eligible(conversations: list[DemoConversation]) -> list[DemoConversation]:
    return [
        c
        for c in conversations
        if c.row["enrichment_status"] == "completed" and c.row["enriched_file_path"] is not None
    ]


def _sample_documents(count: int, seed: int = 21) -> list[dict]:
    return [
        orjson.loads(conversation.file_bytes)
        for _, _, conversation in iter_demo_conversations(seed, count)
    ]


def assert_enriched_file(document: dict, conversation_id: str) -> None:
    """Plain structural checks of contract §5."""
    assert {"dataset_metadata", "consultant_profile", "training_pairs"} <= document.keys()
    meta = document["dataset_metadata"]
    assert meta["dataset_name"] == f"fp_conversation_{conversation_id}"
    assert meta["version"] == "1.0.0"
    assert meta["vertical"] == "financial_planning_consultant"
    assert meta["total_conversations"] == 1
    datetime.strptime(meta["created_date"], "%Y-%m-%dT%H:%M:%SZ")

    consultant = document["consultant_profile"]
    for key in ("name", "business", "expertise", "years_experience", "core_philosophy"):
        assert key in consultant
    style = consultant["communication_style"]
    assert isinstance(style["tone"], str)
    assert isinstance(style["techniques"], list) and isinstance(style["avoid"], list)

    pairs = document["training_pairs"]
    assert 5 <= len(pairs) <= 8
    assert meta["total_turns"] == len(pairs)
    assert [pair["turn_number"] for pair in pairs] == list(range(1, len(pairs) + 1))

    first_metadata = pairs[0]["conversation_metadata"]
    label = first_metadata["emotional_arc_key"]
    previous: dict | None = None
    for pair in pairs:
        k = pair["turn_number"]
        assert pair.keys() >= PAIR_KEYS
        assert pair["id"] == f"{label}_turn{k}"
        assert pair["conversation_id"] == label
        assert pair["conversation_metadata"] == first_metadata
        assert set(pair["conversation_metadata"]) == METADATA_KEYS
        assert isinstance(pair["system_prompt"], str) and len(pair["system_prompt"]) > 800
        assert isinstance(pair["current_user_input"], str) and pair["current_user_input"]
        assert pair["target_response"] is None or (
            isinstance(pair["target_response"], str) and pair["target_response"]
        )

        history = pair["conversation_history"]
        assert len(history) == 2 * (k - 1)
        assert [entry["role"] for entry in history] == ["user", "assistant"] * (k - 1)
        assert [entry["turn_number"] for entry in history] == [
            t for t in range(1, k) for _ in range(2)
        ]
        assert all(set(entry) == {"turn_number", "role", "content"} for entry in history)
        if previous is not None:
            assert history[:-2] == previous["conversation_history"]
            assert history[-2]["content"] == previous["current_user_input"]
            if previous["target_response"] is not None:
                assert history[-1]["content"] == previous["target_response"]

        emotions = pair["emotional_context"]
        detected = emotions["detected_emotions"]
        assert {"primary", "primary_confidence", "secondary", "intensity"} <= detected.keys()
        assert 0 <= detected["intensity"] <= 1
        assert emotions["emotional_indicators"] and emotions["client_needs_hierarchy"]
        assert "behavioral_assessment" in emotions

        training = pair["training_metadata"]
        assert training.keys() >= TRAINING_METADATA_KEYS
        assert training["conversation_turn"] == k
        assert 0 <= training["quality_score"] <= 5
        assert set(training["quality_criteria"]) == CRITERIA_KEYS
        assert isinstance(training["human_reviewed"], bool)
        assert training["reviewer_notes"] is None or training["human_reviewed"]
        previous = pair


def test_same_seed_gives_identical_rows_ids_and_bytes() -> None:
    first, second = generate_demo_dataset(3), generate_demo_dataset(3)
    assert first == second
    assert [c.file_bytes for c in first.conversations] == [
        c.file_bytes for c in second.conversations
    ]


def test_different_seeds_give_different_data() -> None:
    first, second = generate_demo_dataset(3), generate_demo_dataset(4)
    assert {c.conversation_id for c in first.conversations}.isdisjoint(
        c.conversation_id for c in second.conversations
    )
    assert {b.id for b in first.batches}.isdisjoint(b.id for b in second.batches)
    first_files = {c.file_bytes for c in first.conversations if c.file_bytes}
    second_files = {c.file_bytes for c in second.conversations if c.file_bytes}
    assert first_files.isdisjoint(second_files)


def test_dataset_has_the_requested_shape(dataset: DemoDataset) -> None:
    assert len(dataset.batches) == 3
    assert len(dataset.conversations) == 3 * 12 + 2
    assert len(dataset.items) == 3 * (12 + 1)
    assert len({c.conversation_id for c in dataset.conversations}) == len(dataset.conversations)
    assert len({c.row["id"] for c in dataset.conversations}) == len(dataset.conversations)


@pytest.mark.parametrize(
    ("batches", "per_batch", "unbatched", "ineligible"), [(1, 5, 0, 2), (4, 3, 5, 0)]
)
def test_dataset_sizes_follow_the_arguments(
    batches: int, per_batch: int, unbatched: int, ineligible: int
) -> None:
    data = generate_demo_dataset(
        11,
        batches=batches,
        conversations_per_batch=per_batch,
        unbatched=unbatched,
        ineligible_per_batch=ineligible,
    )
    assert len(data.conversations) == batches * per_batch + unbatched
    assert len(_eligible(data.conversations)) == len(data.conversations) - batches * ineligible
    assert sum(c.batch_id is None for c in data.conversations) == unbatched


def test_rows_have_exactly_the_conversations_columns(dataset: DemoDataset) -> None:
    for conversation in dataset.conversations:
        row = conversation.row
        assert list(row) == CONVERSATION_COLUMNS
        for column in ("id", "conversation_id", "created_by"):
            value = row[column]
            assert isinstance(value, str)
            assert str(uuid.UUID(value)) == value
        assert row["tier"] in {"template", "scenario", "edge_case"}
        for column in ("created_at", "updated_at"):
            assert isinstance(row[column], datetime)
            assert row[column].utcoffset() is not None
            assert row[column].utcoffset().total_seconds() == 0
        assert row["updated_at"] >= row["created_at"]
        for column in SCORE_COLUMNS:
            score = row[column]
            assert score is None or (isinstance(score, float) and 0 <= score <= 5)
            assert score is None or round(score, 2) == score


def test_some_rows_are_unscored_and_scores_vary(dataset: DemoDataset) -> None:
    scores = [c.row["quality_score"] for c in dataset.conversations]
    assert any(score is None for score in scores)
    assert len({score for score in scores if score is not None}) > 10


def test_ineligible_conversations_are_as_specified() -> None:
    data = generate_demo_dataset(5, batches=4, conversations_per_batch=6, ineligible_per_batch=2)
    ineligible = [c for c in data.conversations if c not in _eligible(data.conversations)]
    assert len(ineligible) == 8
    assert all(c.file_bytes is None and c.row["enriched_file_path"] is None for c in ineligible)
    assert all(c.batch_id is not None for c in ineligible)
    statuses = Counter(c.row["enrichment_status"] for c in ineligible)
    assert statuses["completed"] == 1
    assert {"failed", "enrichment_in_progress", "not_started"} <= statuses.keys()
    per_batch = Counter(c.batch_id for c in ineligible)
    assert set(per_batch.values()) == {2}


def test_default_dataset_ineligible_rows(dataset: DemoDataset) -> None:
    ineligible = [c for c in dataset.conversations if c not in _eligible(dataset.conversations)]
    assert len(ineligible) == 3
    assert len({c.batch_id for c in ineligible}) == 3
    assert [c.row["enrichment_status"] for c in ineligible].count("completed") == 1


def test_eligible_conversations_have_files_at_their_path(dataset: DemoDataset) -> None:
    eligible = _eligible(dataset.conversations)
    assert len(eligible) == len(dataset.conversations) - 3
    for conversation in eligible:
        row = conversation.row
        assert conversation.file_bytes is not None
        assert row["enriched_file_path"] == (
            f"{row['created_by']}/{row['conversation_id']}/enriched.json"
        )


def test_unbatched_conversations_are_eligible_and_have_no_item(dataset: DemoDataset) -> None:
    unbatched = [c for c in dataset.conversations if c.batch_id is None]
    assert len(unbatched) == 2
    assert all(c in _eligible(dataset.conversations) for c in unbatched)
    produced = {item.conversation_id for item in dataset.items}
    assert all(c.conversation_id not in produced for c in unbatched)


def test_batches_and_items_link_every_batched_conversation(dataset: DemoDataset) -> None:
    batch_ids = {batch.id for batch in dataset.batches}
    for batch in dataset.batches:
        assert batch.status == "completed"
        assert batch.tier in {"template", "scenario", "edge_case"}
        assert batch.name.startswith(f"Batch {batch.created_at:%Y-%m-%d} · ")
        items = [item for item in dataset.items if item.batch_job_id == batch.id]
        assert batch.total_items == len(items)
        queued = [item for item in items if item.conversation_id is None]
        assert [item.status for item in queued] == ["queued"]
    by_conversation = {
        item.conversation_id: item for item in dataset.items if item.conversation_id is not None
    }
    for conversation in dataset.conversations:
        if conversation.batch_id is None:
            continue
        assert conversation.batch_id in batch_ids
        item = by_conversation[conversation.conversation_id]
        assert item.batch_job_id == conversation.batch_id
        assert item.status == "completed"
        batch = next(b for b in dataset.batches if b.id == conversation.batch_id)
        assert conversation.row["tier"] == batch.tier
        assert batch.created_at <= item.created_at <= conversation.row["created_at"]
    assert len(by_conversation) == sum(c.batch_id is not None for c in dataset.conversations)


def test_every_file_matches_the_enriched_format(dataset: DemoDataset) -> None:
    for conversation in _eligible(dataset.conversations):
        assert_enriched_file(orjson.loads(conversation.file_bytes), conversation.conversation_id)


def test_streamed_files_match_the_enriched_format() -> None:
    for _, _, conversation in iter_demo_conversations(2, 60):
        assert_enriched_file(orjson.loads(conversation.file_bytes), conversation.conversation_id)


def test_rows_are_consistent_with_their_files(dataset: DemoDataset) -> None:
    for conversation in _eligible(dataset.conversations):
        row = conversation.row
        document = orjson.loads(conversation.file_bytes)
        pairs = document["training_pairs"]
        metadata = pairs[0]["conversation_metadata"]
        assert row["persona_key"] == metadata["persona_archetype"]
        assert row["emotional_arc_key"] == metadata["emotional_arc_key"]
        assert row["topic_key"] == metadata["training_topic_key"]
        created = datetime.strptime(
            document["dataset_metadata"]["created_date"], "%Y-%m-%dT%H:%M:%SZ"
        ).replace(tzinfo=UTC)
        assert created == row["created_at"]
        last_generated = datetime.strptime(
            pairs[-1]["training_metadata"]["generation_timestamp"], "%Y-%m-%dT%H:%M:%SZ"
        ).replace(tzinfo=UTC)
        assert row["created_at"] <= last_generated <= row["updated_at"]
        if row["quality_score"] is not None:
            mean = sum(p["training_metadata"]["quality_score"] for p in pairs) / len(pairs)
            assert row["quality_score"] == round(mean, 2)
            empathy = [p["training_metadata"]["quality_criteria"]["empathy_score"] for p in pairs]
            assert row["empathy_score"] == round(sum(empathy) / len(pairs), 2)


def test_scaffolding_is_varied() -> None:
    documents = _sample_documents(150)
    metadata = [doc["training_pairs"][0]["conversation_metadata"] for doc in documents]
    assert len({m["persona_archetype"] for m in metadata}) >= 5
    assert len({m["emotional_arc_key"] for m in metadata}) >= 5
    assert len({m["training_topic_key"] for m in metadata}) >= 6
    assert {m["persona_archetype"] for m in metadata} <= set(PERSONA_KEYS)
    assert {m["emotional_arc_key"] for m in metadata} <= set(EMOTIONAL_ARC_KEYS)
    assert {m["training_topic_key"] for m in metadata} <= set(TOPIC_KEYS)
    assert all(" → " in m["emotional_arc"] for m in metadata)
    assert len({doc["dataset_metadata"]["total_turns"] for doc in documents}) >= 3


def test_about_one_pair_in_ten_has_no_target_response() -> None:
    pairs = [pair for doc in _sample_documents(300) for pair in doc["training_pairs"]]
    missing = sum(pair["target_response"] is None for pair in pairs) / len(pairs)
    assert 0.04 <= missing <= 0.18
    reviewed = sum(pair["training_metadata"]["human_reviewed"] for pair in pairs) / len(pairs)
    assert 0.04 <= reviewed <= 0.18


def test_some_files_carry_unknown_fields() -> None:
    documents = _sample_documents(120)
    top_level = [doc for doc in documents if set(doc) - KNOWN_TOP_LEVEL]
    in_pairs = [
        doc for doc in documents if any(set(pair) - PAIR_KEYS for pair in doc["training_pairs"])
    ]
    assert top_level and in_pairs
    assert len(top_level) + len(in_pairs) < len(documents)


def test_all_files_share_one_consultant(dataset: DemoDataset) -> None:
    profiles = {
        orjson.dumps(orjson.loads(c.file_bytes)["consultant_profile"])
        for c in _eligible(dataset.conversations)
    }
    assert len(profiles) == 1
    assert orjson.loads(profiles.pop()) == demo_consultant_profile()
    assert demo_consultant_profile()["name"] != "Elena Morales, CFP"


def test_text_is_unicode_and_written_unescaped(dataset: DemoDataset) -> None:
    text = b"".join(c.file_bytes for c in _eligible(dataset.conversations)).decode("utf-8")
    for character in ("—", "’", "“", "→", "é"):
        assert character in text
    assert any(symbol in text for symbol in ("€", "£"))
    assert "\\u" not in text


def test_orjson_bytes_equal_json_dumps(dataset: DemoDataset) -> None:
    for conversation in _eligible(dataset.conversations):
        document = json.loads(conversation.file_bytes)
        assert json.dumps(document, indent=2, ensure_ascii=False).encode() == (
            conversation.file_bytes
        )


def test_file_sizes_are_like_real_enriched_files(dataset: DemoDataset) -> None:
    sizes = sorted(len(c.file_bytes) for c in _eligible(dataset.conversations))
    assert 45_000 <= sizes[len(sizes) // 2] <= 90_000
    assert sizes[0] >= 35_000 and sizes[-1] <= 120_000


def test_render_enriched_file_reproduces_the_dataset_file(dataset: DemoDataset) -> None:
    conversation = _eligible(dataset.conversations)[0]
    row = conversation.row
    rendered = render_enriched_file(
        conversation.conversation_id,
        persona_key=row["persona_key"],
        emotional_arc_key=row["emotional_arc_key"],
        topic_key=row["topic_key"],
        created_at=row["created_at"],
    )
    assert rendered == conversation.file_bytes


def test_render_enriched_file_with_another_consultant() -> None:
    consultant = demo_consultant_profile()
    consultant["name"] = "Someone Else, CFA"
    rendered = render_enriched_file(
        str(uuid.UUID(int=1)),
        persona_key=PERSONA_KEYS[0],
        emotional_arc_key=EMOTIONAL_ARC_KEYS[0],
        topic_key=TOPIC_KEYS[0],
        created_at=datetime(2026, 10, 1, tzinfo=UTC),
        consultant_profile=consultant,
    )
    document = orjson.loads(rendered)
    assert document["consultant_profile"]["name"] == "Someone Else, CFA"
    assert "Someone Else, CFA" in document["training_pairs"][0]["system_prompt"]


def test_render_enriched_file_rejects_unknown_keys() -> None:
    with pytest.raises(ValueError, match="no_such_persona"):
        render_enriched_file(
            str(uuid.UUID(int=1)),
            persona_key="no_such_persona",
            emotional_arc_key=EMOTIONAL_ARC_KEYS[0],
            topic_key=TOPIC_KEYS[0],
            created_at=datetime(2026, 10, 1, tzinfo=UTC),
        )


def test_reenrichment_changes_the_file_and_moves_updated_at(dataset: DemoDataset) -> None:
    conversation = _eligible(dataset.conversations)[0]
    again = reenrich_conversation(conversation, revision=1)
    assert again.file_bytes != conversation.file_bytes
    assert again.row["updated_at"] > conversation.row["updated_at"]
    assert again.conversation_id == conversation.conversation_id
    assert again.row["enriched_file_path"] == conversation.row["enriched_file_path"]
    assert_enriched_file(orjson.loads(again.file_bytes), again.conversation_id)
    assert reenrich_conversation(conversation, revision=1) == again
    failed = next(c for c in dataset.conversations if c.file_bytes is None)
    with pytest.raises(ValueError):
        reenrich_conversation(failed)


def test_streaming_yields_count_conversations_in_batches_of_batch_size() -> None:
    rows = list(iter_demo_conversations(9, 250, batch_size=80))
    assert len(rows) == 250
    batch_ids = [batch.id for batch, _, _ in rows]
    changes = [i for i in range(1, len(rows)) if batch_ids[i] != batch_ids[i - 1]]
    assert changes == [80, 160, 240]
    assert [rows[i][0].total_items for i in (0, 80, 160, 240)] == [80, 80, 80, 10]
    for batch, item, conversation in rows:
        assert item.batch_job_id == batch.id == conversation.batch_id
        assert item.conversation_id == conversation.conversation_id
        assert conversation.row["enrichment_status"] == "completed"
        assert conversation.row["enriched_file_path"] is not None
        assert conversation.file_bytes is not None
    assert len({c.conversation_id for _, _, c in rows}) == 250


def test_streaming_is_deterministic_and_seed_dependent() -> None:
    first = [c.file_bytes for _, _, c in iter_demo_conversations(9, 20)]
    assert first == [c.file_bytes for _, _, c in iter_demo_conversations(9, 20)]
    assert set(first).isdisjoint(c.file_bytes for _, _, c in iter_demo_conversations(10, 20))


def test_streaming_is_lazy() -> None:
    head = list(itertools.islice(iter_demo_conversations(1, 10**9, batch_size=50), 3))
    assert len(head) == 3
    assert list(iter_demo_conversations(1, 0)) == []


def test_streaming_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError):
        iter_demo_conversations(1, 10, batch_size=0)
    with pytest.raises(ValueError):
        iter_demo_conversations(1, -1)


def test_generator_imports_nothing_from_dagster_or_the_rest_of_the_package() -> None:
    tree = ast.parse(Path(demo_data.__file__).read_text(encoding="utf-8"))
    imported: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0
            imported.add(node.module or "")
    roots = {name.split(".")[0] for name in imported}
    assert "dagster" not in roots and "brightrun_pipeline" not in roots
    assert roots <= {
        "__future__",
        "copy",
        "random",
        "uuid",
        "collections",
        "dataclasses",
        "datetime",
        "orjson",
    }
