"""The train/validation split: by conversation, deterministic, stratified, stable across versions,
checked before publication, reproduced by `files verify`, downloadable by side."""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import orjson
import pytest
from seed import claimed_request, copy_of, eligible, seed_conversations, seed_dataset

from brightrun_pipeline.builder import object_key
from brightrun_pipeline.cli import main
from brightrun_pipeline.db.repository import VersionRecord
from brightrun_pipeline.demo_data import DemoConversation, DemoDataset, generate_demo_dataset
from brightrun_pipeline.errors import RequestRejected
from brightrun_pipeline.models import SelectionRequest
from brightrun_pipeline.outputs import EXPORTS, SPLITS, split_name
from brightrun_pipeline.reproduce import reproduce_version
from brightrun_pipeline.rules import FileSettings
from brightrun_pipeline.service import Pipeline
from brightrun_pipeline.splits import VALIDATION, Placed, assign_sides, validation_target
from brightrun_pipeline.storage import LocalObjectStore
from brightrun_pipeline.verification import verify_built_version

STRATA = [(p, a, t) for p in ("anxious", "avoider", "planner") for a in ("calm", "fear")
          for t in ("debt", "savings")]


def dataset() -> DemoDataset:
    """Three batches of ten conversations, 27 of them eligible."""
    return generate_demo_dataset(11, batches=3, conversations_per_batch=10, unbatched=0,
                                 ineligible_per_batch=1)


def conversations(count: int, seed: int) -> list[Placed]:
    rng = random.Random(seed)
    return [Placed(f"c{seed}-{n:05d}", rng.choice(STRATA), None) for n in range(count)]


# --- The assignment ---------------------------------------------------------------------------


@pytest.mark.parametrize("fraction", [0.05, 0.1, 0.2, 0.5])
def test_the_validation_share_is_the_fraction_rounded_in_every_version(fraction: float) -> None:
    placed: list[Placed] = []
    for batch in range(12):
        placed += conversations(80, batch)
        sides = assign_sides(fraction, placed)
        placed = [Placed(c.conversation_id, c.stratum, c.side or sides[c.conversation_id])
                  for c in placed]
        validation = sum(c.side == VALIDATION for c in placed)
        assert validation == validation_target(fraction, len(placed))
        assert abs(validation - fraction * len(placed)) <= 0.5


def test_a_side_once_given_never_changes() -> None:
    placed: list[Placed] = []
    history: dict[str, str] = {}
    for batch in range(10):
        placed += conversations(37, batch)
        sides = assign_sides(0.15, placed)
        assert not set(sides) & set(history), "a placed conversation was placed again"
        history.update(sides)
        placed = [Placed(c.conversation_id, c.stratum, history[c.conversation_id])
                  for c in placed]


def test_the_assignment_is_stratified_as_far_as_counts_allow() -> None:
    everything = conversations(1200, 7)
    sides = assign_sides(0.1, everything)
    totals = Counter(c.stratum for c in everything)
    held = Counter(c.stratum for c in everything if sides[c.conversation_id] == VALIDATION)
    for stratum, total in totals.items():
        assert abs(held[stratum] - 0.1 * total) <= 1, (stratum, held[stratum], total)


def test_the_assignment_depends_on_the_conversations_not_on_their_order() -> None:
    everything = conversations(300, 3)
    shuffled = everything[:]
    random.Random(1).shuffle(shuffled)
    assert assign_sides(0.2, everything) == assign_sides(0.2, shuffled)


def test_forced_sides_are_kept() -> None:
    everything = conversations(50, 4)
    forced = {everything[0].conversation_id: VALIDATION, everything[1].conversation_id: "train"}
    sides = assign_sides(0.1, everything, forced)
    assert sides[everything[0].conversation_id] == VALIDATION
    assert sides[everything[1].conversation_id] == "train"
    assert sum(s == VALIDATION for s in sides.values()) == validation_target(0.1, 50)


@pytest.mark.parametrize("seed", range(40))
def test_groups_of_near_duplicates_share_a_side_and_keep_the_share_exact(seed: int) -> None:
    rng = random.Random(seed)
    everything = conversations(rng.randint(8, 60), seed)
    ids = [c.conversation_id for c in everything]
    rng.shuffle(ids)
    # Disjoint groups of 2–4; each member follows the one before it (a chain to the first).
    follows: dict[str, str] = {}
    largest = 1
    for _ in range(rng.randint(1, 4)):
        size = rng.randint(2, 4)
        group, ids = ids[:size], ids[size:]
        largest = max(largest, len(group))
        follows.update(zip(group[1:], group[:-1], strict=False))
    fraction = rng.choice((0.1, 0.25, 0.5))
    sides = assign_sides(fraction, everything, follows=follows)
    assert set(sides) == {c.conversation_id for c in everything}
    for follower, leader in follows.items():
        assert sides[follower] == sides[leader], (follower, leader)
    held, target = sum(s == VALIDATION for s in sides.values()), validation_target(
        fraction, len(everything))
    # Never over the quota; under it only by less than a group that no longer fits.
    assert target - largest < held <= target


def test_a_group_that_would_pass_the_quota_is_not_taken() -> None:
    # Two conversations in one stratum: the first in hash order has two near-duplicates; a
    # quota of one validation conversation must take the lone one, not the group of three.
    stratum = STRATA[0]
    group = [Placed(f"g{n}", stratum, None) for n in range(3)]
    lone = Placed("lone", stratum, None)
    everything = [*group, lone]
    follows = {"g1": "g0", "g2": "g1"}
    sides = assign_sides(0.25, everything, follows=follows)
    assert sides == {"g0": "train", "g1": "train", "g2": "train", "lone": VALIDATION}


# --- Versions ---------------------------------------------------------------------------------


def run(pipeline: Pipeline, request_id: str) -> VersionRecord:
    return pipeline.run_request(request_id, f"run-{request_id[:8]}")


def split_file_request(pipeline: Pipeline, rows: Sequence[DemoConversation], name: str,
                       fraction: float) -> SelectionRequest:
    """A claimed request for a new file holding out `fraction` for validation."""
    request = pipeline.submit(conversation_ids=[c.conversation_id for c in rows],
                              new_file_name=name, requested_by="test",
                              settings=FileSettings(validation_fraction=fraction))
    assert pipeline.claim(request.id) is not None
    return request


def objects(pipeline: Pipeline, record: VersionRecord) -> dict[str, bytes]:
    return {o.name: pipeline.store.get_bytes(pipeline.training_bucket, o.key)
            for o in pipeline.db.version_objects(record.training_file_id, record.version)}


def sides_of(pipeline: Pipeline, file_id: str) -> dict[str, str | None]:
    return {m.conversation_id: m.split for m in pipeline.db.iter_members(file_id)}


def assert_split_objects_follow_the_sides(pipeline: Pipeline, record: VersionRecord) -> None:
    stored = objects(pipeline, record)
    manifest = orjson.loads(stored["manifest.json"])
    sides = {c["conversation_id"]: c["split"] for c in manifest["conversations"]}
    assert sides == sides_of(pipeline, record.training_file_id)
    held, total = Counter(sides.values())[VALIDATION], len(sides)
    assert abs(held - 0.25 * total) <= 1, "validation share more than one conversation off"
    line_sides = [sides[orjson.loads(line)["conversation_id"]]
                  for line in stored["training.jsonl"].splitlines()]
    for export in EXPORTS:
        rows = stored[export.name].splitlines()
        for side in SPLITS:
            part = stored[split_name(export, side)].splitlines()
            assert part == [row for row, s in zip(rows, line_sides, strict=True) if s == side]
        assert set(manifest["files"]) >= {export.name, *(split_name(export, s) for s in SPLITS)}


@pytest.fixture
def dataset_pipeline(pipeline: Pipeline) -> Pipeline:
    seed_dataset(pipeline, dataset())
    return pipeline


def test_a_split_file_publishes_train_and_validation_parts_stable_across_versions(
        dataset_pipeline: Pipeline) -> None:
    pipeline = dataset_pipeline
    rows = eligible(dataset())
    first, second = rows[: len(rows) // 2], rows[len(rows) // 2:]
    request = split_file_request(pipeline, first, "Split file", 0.25)
    v1 = run(pipeline, request.id)
    assert_split_objects_follow_the_sides(pipeline, v1)
    before = sides_of(pipeline, v1.training_file_id)
    assert Counter(before.values())[VALIDATION] == validation_target(0.25, len(first))

    v2 = run(pipeline, claimed_request(pipeline, second, training_file=v1.training_file_id))
    assert_split_objects_follow_the_sides(pipeline, v2)
    after = sides_of(pipeline, v1.training_file_id)
    assert {cid: after[cid] for cid in before} == before, "a conversation changed side"
    # Appending copied version 1's parts and added the new rows after them.
    old, new = objects(pipeline, v1), objects(pipeline, v2)
    for export in EXPORTS:
        for side in SPLITS:
            assert new[split_name(export, side)].startswith(old[split_name(export, side)])
    for version in (1, 2):
        comparisons = reproduce_version(pipeline, v1.training_file_id, version)
        assert comparisons and all(c.matches for c in comparisons), comparisons
        assert len(comparisons) == len(objects(pipeline, v1 if version == 1 else v2))


def test_a_split_configured_later_places_the_existing_conversations_once(
        dataset_pipeline: Pipeline) -> None:
    pipeline = dataset_pipeline
    rows = eligible(dataset())
    v1 = run(pipeline, claimed_request(pipeline, rows[:12], new_file_name="Later split"))
    assert set(sides_of(pipeline, v1.training_file_id).values()) == {None}
    assert not any(".train." in name for name in objects(pipeline, v1))
    pipeline.db.configure_file(v1.training_file_id, validation_fraction=0.25)

    v2 = run(pipeline, claimed_request(pipeline, rows[12:16], training_file=v1.training_file_id))
    assert_split_objects_follow_the_sides(pipeline, v2)
    assert None not in sides_of(pipeline, v1.training_file_id).values()
    comparisons = reproduce_version(pipeline, v1.training_file_id, 2)
    assert all(c.matches for c in comparisons)


def test_the_blocking_check_catches_a_row_on_the_wrong_side(dataset_pipeline: Pipeline) -> None:
    pipeline = dataset_pipeline
    rows = eligible(dataset())
    request = split_file_request(pipeline, rows[:10], "Tampered split", 0.3)
    built = pipeline.build(pipeline.start(request.id, "run-split"))
    assert verify_built_version(pipeline, built)["split_is_leak_free"].passed
    store = pipeline.store
    assert isinstance(store, LocalObjectStore)
    chat = EXPORTS[0]
    train_key = built.exports[split_name(chat, "train")].key
    validation_key = built.exports[split_name(chat, VALIDATION)].key
    train = store.get_bytes(pipeline.training_bucket, train_key).splitlines(keepends=True)
    validation = store.get_bytes(pipeline.training_bucket, validation_key)
    # One training row moved to the validation part: a conversation on both sides.
    path = store.local_path(pipeline.training_bucket, validation_key)
    assert path is not None
    Path(path).write_bytes(validation + train[0])

    outcome = verify_built_version(pipeline, built)["split_is_leak_free"]
    assert not outcome.passed
    assert "rows of no validation conversation" in outcome.detail


def test_settings_go_with_a_new_file_only(dataset_pipeline: Pipeline) -> None:
    pipeline = dataset_pipeline
    rows = eligible(dataset())
    v1 = run(pipeline, claimed_request(pipeline, rows[:3], new_file_name="Plain"))
    with pytest.raises(RequestRejected, match="settings go with a new training file"):
        pipeline.submit(conversation_ids=[rows[4].conversation_id],
                        training_file=v1.training_file_id,
                        settings=FileSettings(validation_fraction=0.1))


def test_the_cli_downloads_one_side(dataset_pipeline: Pipeline, tmp_path: Path,
                                    monkeypatch: pytest.MonkeyPatch,
                                    capsys: pytest.CaptureFixture[str]) -> None:
    pipeline = dataset_pipeline
    rows = eligible(dataset())
    request = split_file_request(pipeline, rows[:10], "Downloaded split", 0.2)
    record = run(pipeline, request.id)
    store = pipeline.store
    assert isinstance(store, LocalObjectStore)
    monkeypatch.setenv("BRIGHTRUN_DATABASE_URL", pipeline.db.url)
    monkeypatch.setenv("BRIGHTRUN_STORAGE_ROOT", str(store.root))
    monkeypatch.setenv("BRIGHTRUN_SOURCE_BUCKET", pipeline.source_bucket)
    monkeypatch.setenv("BRIGHTRUN_TRAINING_BUCKET", pipeline.training_bucket)
    target = tmp_path / "validation.jsonl"
    main(["files", "download", "Downloaded split", "--format", "chat", "--split",
          "validation", "--output", str(target)])
    key = object_key(record.training_file_id, 1, split_name(EXPORTS[0], VALIDATION))
    assert target.read_bytes() == store.get_bytes(pipeline.training_bucket, key)
    with pytest.raises(SystemExit) as exit_info:
        main(["files", "download", "Downloaded split", "--format", "json", "--split", "train",
              "--output", str(tmp_path / "x")])
    assert exit_info.value.code == 2
    assert "json has no train split" in capsys.readouterr().err


def test_near_duplicates_go_to_the_side_of_what_they_repeat(dataset_pipeline: Pipeline) -> None:
    pipeline = dataset_pipeline
    rows = eligible(dataset())
    request = split_file_request(pipeline, rows[:20], "Split with twins", 0.25)
    v1 = run(pipeline, request.id)
    sides = sides_of(pipeline, v1.training_file_id)
    held_out = next(c for c in rows[:20] if sides[c.conversation_id] == VALIDATION)
    # Exact copies under new IDs: one of a validation member, and a pair within the request.
    twin_of_member = copy_of(held_out)
    first, second = copy_of(rows[21]), copy_of(rows[21])
    seed_conversations(pipeline, [twin_of_member, first, second])
    extra = [twin_of_member, *rows[20:24], first, second]
    v2 = run(pipeline, claimed_request(pipeline, extra, training_file=v1.training_file_id))

    after = sides_of(pipeline, v1.training_file_id)
    assert after[twin_of_member.conversation_id] == VALIDATION
    assert after[first.conversation_id] == after[second.conversation_id]
    assert after[rows[21].conversation_id] == after[first.conversation_id]
    assert_split_objects_follow_the_sides(pipeline, v2)
