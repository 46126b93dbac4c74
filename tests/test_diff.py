"""Version diff (brightrun_pipeline.diff): a file grown by an append and rebuilt after a
re-enrichment, compared against figures worked out from the dataset's own rows and enriched
files; the CLI, the API and the console page; the diff on a version's materialization."""

from __future__ import annotations

import os
import re
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dagster as dg
import orjson
import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient
from seed import add_to_file, create_file, demo_dataset, eligible, seed_dataset

from assets.partitions import REQUEST_TAG, TRAINING_FILE_TAG
from brightrun_pipeline.cli import main
from brightrun_pipeline.config import RetrySettings, Settings
from brightrun_pipeline.console.app import create_app
from brightrun_pipeline.db.repository import Database
from brightrun_pipeline.db.schema import conversations
from brightrun_pipeline.definitions import build_definitions
from brightrun_pipeline.demo_data import DemoConversation, reenrich_conversation
from brightrun_pipeline.diff import VersionDiff, diff_versions
from brightrun_pipeline.errors import NotFound
from brightrun_pipeline.factory import Services
from brightrun_pipeline.rules import quality_tier
from brightrun_pipeline.service import Pipeline
from brightrun_pipeline.storage import LocalObjectStore
from brightrun_pipeline.users import add_user
from jobs import TRAINING_FILE_JOB

FILE_NAME = "Diffed file"
# approx_tokens as docs/design.md defines it, applied here to the enriched files themselves.
WORD_OR_SIGN = re.compile(r"\w+|[^\w\s]")


# --- Expectations from the dataset ----------------------------------------------------------


@dataclass(frozen=True)
class Expected:
    """One conversation as its catalog row and enriched file say it goes into a version."""

    conversation_id: str
    pairs: int
    trainable: int
    tokens: int
    persona: str | None
    arc: str | None
    topic: str | None
    tier: str


def expected(conversation: DemoConversation) -> Expected:
    assert conversation.file_bytes is not None
    pairs = orjson.loads(conversation.file_bytes)["training_pairs"]
    trainable = [p for p in pairs
                 if isinstance(p["target_response"], str) and p["target_response"]]
    tokens = sum(len(WORD_OR_SIGN.findall(text)) for pair in trainable for text in (
        pair["system_prompt"], *(turn["content"] for turn in pair["conversation_history"]),
        pair["current_user_input"], pair["target_response"]))
    row = conversation.row
    return Expected(conversation.conversation_id, len(pairs), len(trainable), tokens,
                    row["persona_key"], row["emotional_arc_key"], row["topic_key"],
                    quality_tier(row["quality_score"]))  # type: ignore[arg-type]


def totals(version: Sequence[Expected]) -> dict[str, int]:
    return {"conversations": len(version), "pairs": sum(e.pairs for e in version),
            "trainable_pairs": sum(e.trainable for e in version),
            "approx_tokens": sum(e.tokens for e in version)}


def expected_mix(a: Sequence[Expected], b: Sequence[Expected], field: str
                 ) -> dict[str | None, tuple[int, int, float]]:
    """key → (count in A, count in B, share shift in percentage points)."""
    count_a = Counter(getattr(e, field) for e in a)
    count_b = Counter(getattr(e, field) for e in b)
    return {key: (count_a[key], count_b[key],
                  round(100 * count_b[key] / len(b) - 100 * count_a[key] / len(a), 2))
            for key in {*count_a, *count_b}}


def mix_of(diff: VersionDiff, dimension: str) -> dict[str | None, tuple[int, int, float]]:
    return {r.key: (r.count_a, r.count_b, r.shift_pp) for r in getattr(diff.mix, dimension)}


def check(diff: VersionDiff, a: Sequence[Expected], b: Sequence[Expected]) -> None:
    """Every figure of a diff against the expectations of its two versions."""
    figures_a, figures_b = totals(a), totals(b)
    for name in ("conversations", "pairs", "trainable_pairs", "approx_tokens"):
        change = getattr(diff, name)
        assert (change.a, change.b, change.delta) == (
            figures_a[name], figures_b[name], figures_b[name] - figures_a[name]), name
    for dimension, field in (("persona", "persona"), ("arc", "arc"), ("topic", "topic"),
                             ("quality_tier", "tier")):
        got, want = mix_of(diff, dimension), expected_mix(a, b, field)
        assert set(got) == set(want), dimension
        for key, (count_a, count_b, shift) in want.items():
            assert got[key][:2] == (count_a, count_b), (dimension, key)
            assert got[key][2] == pytest.approx(shift, abs=0.011), (dimension, key)


# --- A file of three versions -----------------------------------------------------------------


@dataclass
class World:
    pipeline: Pipeline
    settings: Settings
    file_id: str
    versions: dict[int, list[Expected]]
    rows: list[DemoConversation]
    changed: DemoConversation


def reenrich(pipeline: Pipeline, conversation: DemoConversation, seed: int) -> DemoConversation:
    """The conversation's enrichment re-run: new enriched file and scores, later updated_at."""
    changed = reenrich_conversation(conversation, seed=seed)
    assert changed.file_bytes is not None
    pipeline.store.put_bytes(pipeline.source_bucket, str(changed.row["enriched_file_path"]),
                             changed.file_bytes, replace=True)
    with pipeline.db.engine.begin() as connection:
        connection.execute(sa.update(conversations).where(
            conversations.c.conversation_id == changed.conversation_id).values(
            updated_at=changed.row["updated_at"], quality_score=changed.row["quality_score"]))
    return changed


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    """Version 1 creates the file with three conversations, version 2 adds two, version 3 is
    rebuilt after the second conversation's enrichment was re-run (other pairs, other tier)."""
    directory = tmp_path_factory.mktemp("diff")
    settings = Settings(database_url=f"sqlite:///{directory / 'brightrun.db'}",
                        storage_root=directory / "storage", dagster_home=directory / "dagster")
    database = Database(settings.database_url)
    database.upgrade()
    store = LocalObjectStore(settings.storage_root)
    for bucket in (settings.source_bucket, settings.training_bucket):
        store.ensure_bucket(bucket)
    pipeline = Pipeline(database, store, source_bucket=settings.source_bucket,
                        training_bucket=settings.training_bucket, fetch_concurrency=4,
                        retry=RetrySettings(attempts=3, base_delay=0.0, max_delay=0.0))
    dataset = demo_dataset()
    seed_dataset(pipeline, dataset)
    rows = eligible(dataset)[:5]
    v1 = create_file(pipeline, rows[:3], name=FILE_NAME)
    add_to_file(pipeline, v1.training_file_id, rows[3:])
    changed = reenrich(pipeline, rows[1], seed=6)
    plan = pipeline.plan_rematerialization(v1.training_file_id, "run-v3")
    assert plan is not None
    staged = pipeline.stage(plan)
    assert staged is not None
    assert pipeline.publish(staged).version == 3
    before, after = expected(rows[1]), expected(changed)
    # The rebuild moves the conversation to another tier and changes its pairs.
    assert before.tier != after.tier and before.pairs != after.pairs
    first = [expected(c) for c in rows]
    versions = {1: first[:3], 2: first, 3: [first[0], after, *first[2:]]}
    yield World(pipeline, settings, v1.training_file_id, versions, rows, changed)
    database.dispose()


def ids(conversations: Sequence[DemoConversation]) -> list[str]:
    return [c.conversation_id for c in conversations]


def test_an_append_adds_conversations(world: World) -> None:
    diff = diff_versions(world.pipeline, world.file_id, 1, 2)
    assert (diff.version_a, diff.version_b, diff.file_name) == (1, 2, FILE_NAME)
    assert diff.added == ids(world.rows[3:])
    assert diff.rebuilt == diff.removed == []
    check(diff, world.versions[1], world.versions[2])


def test_a_rebuild_changes_pairs_tokens_and_tier(world: World) -> None:
    diff = diff_versions(world.pipeline, world.file_id, 2, 3)
    assert diff.added == diff.removed == []
    assert diff.rebuilt == [world.changed.conversation_id]
    check(diff, world.versions[2], world.versions[3])
    before, after = expected(world.rows[1]), expected(world.changed)
    assert diff.pairs.delta == after.pairs - before.pairs != 0
    assert diff.approx_tokens.delta == after.tokens - before.tokens != 0
    shifted = {r.key: r.count_b - r.count_a for r in diff.mix.quality_tier
               if r.count_a != r.count_b}
    assert shifted == {before.tier: -1, after.tier: +1}
    # Persona, arc and topic did not move.
    for dimension in ("persona", "arc", "topic"):
        assert all(r.count_a == r.count_b and r.shift_pp == 0
                   for r in getattr(diff.mix, dimension))


def test_any_two_versions_in_either_order(world: World) -> None:
    backwards = diff_versions(world.pipeline, world.file_id, 3, 1)
    assert backwards.added == []
    assert backwards.rebuilt == [world.changed.conversation_id]
    assert backwards.removed == ids(world.rows[3:])
    check(backwards, world.versions[3], world.versions[1])

    same = diff_versions(world.pipeline, world.file_id, 2, 2)
    assert same.unchanged and same.added == same.rebuilt == same.removed == []
    assert same.pairs.delta == same.trainable_pairs.delta == same.approx_tokens.delta == 0
    assert all(r.shift_pp == 0 and r.count_a == r.count_b for r in same.mix.persona)

    # Without the totals, the change of approx_tokens is counted on the changed conversations.
    delta_only = diff_versions(world.pipeline, world.file_id, 1, 3, token_totals=False)
    full = diff_versions(world.pipeline, world.file_id, 1, 3)
    assert delta_only.approx_tokens.a is None and delta_only.approx_tokens.b is None
    assert delta_only.approx_tokens.delta == full.approx_tokens.delta == (
        totals(world.versions[3])["approx_tokens"] - totals(world.versions[1])["approx_tokens"])
    assert delta_only.model_dump(exclude={"approx_tokens"}) == full.model_dump(
        exclude={"approx_tokens"})


def test_an_unknown_version_is_not_found(world: World) -> None:
    for a, b in ((1, 4), (0, 2), (5, 1)):
        with pytest.raises(NotFound, match="has no version"):
            diff_versions(world.pipeline, world.file_id, a, b)


# --- CLI, API, console -----------------------------------------------------------------------


def run_cli(world: World, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
            *args: object) -> tuple[int, str, str]:
    for name in [n for n in os.environ if n.startswith("BRIGHTRUN_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("BRIGHTRUN_DATABASE_URL", world.settings.database_url)
    monkeypatch.setenv("BRIGHTRUN_STORAGE_ROOT", str(world.settings.storage_root))
    monkeypatch.setenv("DAGSTER_HOME", str(world.settings.dagster_home))
    capsys.readouterr()
    try:
        main([str(a) for a in args])
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_cli_text_and_json(world: World, monkeypatch: pytest.MonkeyPatch,
                           capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run_cli(world, monkeypatch, capsys, "files", "diff", FILE_NAME, "1", "3")
    assert code == 0, err
    first, second = totals(world.versions[1]), totals(world.versions[3])
    assert f"{FILE_NAME}: version 1 → version 3" in out
    assert "conversations: 3 → 5 (+2): 2 added, 1 rebuilt, 0 removed" in out
    assert f"  added: {', '.join(ids(world.rows[3:]))}" in out
    assert f"  rebuilt: {world.changed.conversation_id}" in out
    delta = second["pairs"] - first["pairs"]
    assert f"pairs: {first['pairs']} → {second['pairs']} ({delta:+d})" in out
    tokens = second["approx_tokens"] - first["approx_tokens"]
    assert (f"approx_tokens: {first['approx_tokens']:,} → {second['approx_tokens']:,} "
            f"({tokens:+,})") in out
    for title in ("persona mix", "emotional arc mix", "topic mix", "quality tier mix"):
        assert f"\n{title}\n" in out
    assert re.search(r"^key +v1 +v3 +change +share v1 % +share v3 % +shift pp$", out, re.M)

    code, out, err = run_cli(world, monkeypatch, capsys, "files", "diff", FILE_NAME, "1", "3",
                             "--format", "json")
    assert code == 0, err
    assert VersionDiff.model_validate_json(out) == diff_versions(
        world.pipeline, world.file_id, 1, 3)

    code, out, err = run_cli(world, monkeypatch, capsys, "files", "diff", FILE_NAME, "1", "7")
    assert code == 2 and "has no version 7" in err and "Traceback" not in out + err


@pytest.fixture(scope="module")
def client(world: World) -> Iterator[tuple[TestClient, dict[str, str]]]:
    token = add_user(world.pipeline.db, "curator")[1]
    with TestClient(create_app(Services(world.settings, world.pipeline)),
                    raise_server_exceptions=False) as test_client:
        yield test_client, {"Authorization": f"Bearer {token}"}


def test_api_diff(world: World, client: tuple[TestClient, dict[str, str]]) -> None:
    http, auth = client
    response = http.get(f"/api/files/{world.file_id}/diff", params={"a": 2, "b": 3},
                        headers=auth)
    assert response.status_code == 200, response.text
    assert VersionDiff.model_validate(response.json()) == diff_versions(
        world.pipeline, world.file_id, 2, 3)
    missing = http.get(f"/api/files/{FILE_NAME}/diff", params={"a": 1, "b": 9}, headers=auth)
    assert missing.status_code == 404
    assert missing.json()["error"]["message"] == f"training file {FILE_NAME!r} has no version 9"


def test_console_page_shows_changes_and_a_comparison(
        world: World, client: tuple[TestClient, dict[str, str]]) -> None:
    http, auth = client
    page = http.get(f"/training-files/{world.file_id}", headers=auth)
    assert page.status_code == 200, page.text
    assert "Changes in version 3" in page.text
    assert 'data-a="2" data-b="3"' in page.text and world.changed.conversation_id in page.text
    assert 'data-a="1" data-b="2"' not in page.text
    compared = http.get(f"/training-files/{world.file_id}", params={"a": 1, "b": 2},
                        headers=auth)
    assert compared.status_code == 200, compared.text
    assert "Version 1 → version 2" in compared.text and 'data-a="1" data-b="2"' in compared.text
    assert all(cid in compared.text for cid in ids(world.rows[3:]))
    assert http.get(f"/training-files/{world.file_id}", params={"a": 1, "b": 9},
                    headers=auth).status_code == 404


# --- Dagster ---------------------------------------------------------------------------------


def test_each_version_materialization_carries_its_diff(
        pipeline: Pipeline, database_url: str, tmp_path: Path) -> None:
    settings = Settings(database_url=database_url, storage_root=tmp_path / "storage",
                        dagster_home=tmp_path / "dagster")
    defs = build_definitions(settings)
    dataset = demo_dataset()
    seed_dataset(pipeline, dataset)
    rows = eligible(dataset)

    def run(selection: Sequence[DemoConversation], **target: Any) -> dict[str, Any]:
        request = pipeline.submit(conversation_ids=ids(selection), **target)
        claimed = pipeline.claim(request.id)
        assert claimed is not None and claimed.target_file_id is not None
        file_id = claimed.target_file_id
        if not instance.has_dynamic_partition("training_files", file_id):
            instance.add_dynamic_partitions("training_files", [file_id])
        result = defs.resolve_job_def(TRAINING_FILE_JOB).execute_in_process(
            instance=instance, partition_key=file_id, raise_on_error=False,
            tags={REQUEST_TAG: request.id, TRAINING_FILE_TAG: file_id})
        assert result.success
        [event] = [m for m in result.get_asset_materialization_events()
                   if m.asset_key == dg.AssetKey("training_file_version")]
        return {k: v.value for k, v in event.materialization.metadata.items()}

    with dg.instance_for_test() as instance:
        first = run(rows[:2], new_file_name="Materialized", description="diff metadata")
        second = run(rows[2:5], training_file="Materialized")
    one, two = [expected(c) for c in rows[:2]], [expected(c) for c in rows[:5]]
    assert first["conversations_added"] == 2 and first["pairs_delta"] == totals(one)["pairs"]
    assert "nothing → version 1" in first["changes"]
    assert second["conversations_added"] == 3
    assert second["conversations_rebuilt"] == second["conversations_removed"] == 0
    assert second["pairs_delta"] == totals(two)["pairs"] - totals(one)["pairs"]
    assert second["trainable_pairs_delta"] == (totals(two)["trainable_pairs"]
                                               - totals(one)["trainable_pairs"])
    assert second["approx_tokens_delta"] == (totals(two)["approx_tokens"]
                                             - totals(one)["approx_tokens"])
    markdown = second["changes"]
    assert "**Materialized: version 1 → version 2**" in markdown
    assert "3 added, 0 rebuilt, 0 removed" in markdown and "| key |" in markdown
