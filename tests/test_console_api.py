"""The console's JSON API on SQLite and PostgreSQL: every endpoint on real data, every error
status in the one error shape, and who may do what (tokens, cookies, CSRF, owners, open access).

One world per backend is seeded once for the module: the demo dataset, three users and two
published training files (one of them with two versions). Tests that change the database use
new file names or their own empty database, and every refused request is checked to change
nothing.
"""

from __future__ import annotations

import getpass
import hashlib
import os
import re
import secrets
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import httpx
import orjson
import psycopg
import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient
from psycopg import sql
from seed import demo_dataset, eligible, is_eligible, seed_conversations, seed_dataset
from test_near_duplicates import planted

from brightrun_pipeline.cli import main
from brightrun_pipeline.config import RetrySettings, Settings
from brightrun_pipeline.console import api, pages
from brightrun_pipeline.console.app import MAX_BODY_BYTES, create_app
from brightrun_pipeline.db.repository import Database, VersionRecord
from brightrun_pipeline.db.schema import OWNED_TABLES, training_files, users
from brightrun_pipeline.demo_data import DemoConversation, DemoDataset
from brightrun_pipeline.errors import ProcessingFailed, UsageError
from brightrun_pipeline.factory import Services
from brightrun_pipeline.service import Pipeline
from brightrun_pipeline.storage import LocalObjectStore, ObjectStore
from brightrun_pipeline.users import add_user, token_hash

POSTGRES_ADMIN = "host=127.0.0.1 port=5432 user=postgres dbname=postgres connect_timeout=5"
SOURCE_BUCKET = "conversation-files"
TRAINING_BUCKET = "training-files"
CORE_FILE = "Alice core file"
ODD_FILE = 'Ünïcødé "quoted" / sl\\ash ✓'


# --- Worlds -----------------------------------------------------------------------------------


def _postgres_admin() -> psycopg.Connection:
    try:
        return psycopg.connect(POSTGRES_ADMIN, autocommit=True)
    except psycopg.OperationalError as exc:
        pytest.fail("PostgreSQL must be running on 127.0.0.1:5432 (user postgres, trust auth) "
                    f"for the console tests; connecting failed: {exc}", pytrace=False)


@dataclass
class World:
    """A seeded database and store, its app, and the users that call it."""

    backend: str
    url: str
    pipeline: Pipeline
    services: Services
    client: TestClient
    dataset: DemoDataset
    tokens: dict[str, str]
    core_id: str
    core_versions: list[VersionRecord]
    odd_id: str
    odd_versions: list[VersionRecord]

    @property
    def db(self) -> Database:
        return self.pipeline.db

    def auth(self, user: str) -> dict[str, str]:
        """The Bearer header of a user."""
        return {"Authorization": f"Bearer {self.tokens[user]}"}

    def get(self, path: str, user: str = "alice", **kwargs: Any) -> httpx.Response:
        return self.client.get(path, headers=self.auth(user), **kwargs)

    def post(self, path: str, user: str = "alice", **kwargs: Any) -> httpx.Response:
        return self.client.post(path, headers=self.auth(user), **kwargs)

    def conversation(self, prefix: str) -> DemoConversation:
        """The dataset's conversation whose id starts with `prefix`."""
        [found] = [c for c in self.dataset.conversations
                   if c.conversation_id.startswith(prefix)]
        return found


def settings_for(url: str, directory: Path) -> Settings:
    return Settings(database_url=url, storage_root=directory / "storage",
                    dagster_home=directory / "dagster")


def new_pipeline(url: str, store: ObjectStore, *, source_bucket: str = SOURCE_BUCKET,
                 training_bucket: str = TRAINING_BUCKET) -> Pipeline:
    """A pipeline on an upgraded database, the way conftest's make_pipeline builds one."""
    database = Database(url)
    database.upgrade()
    store.ensure_bucket(source_bucket)
    store.ensure_bucket(training_bucket)
    return Pipeline(database, store, source_bucket=source_bucket,
                    training_bucket=training_bucket, fetch_concurrency=4,
                    retry=RetrySettings(attempts=3, base_delay=0.0, max_delay=0.0))


def publish(pipeline: Pipeline, rows: list[DemoConversation], requested_by: str, *,
            new_file_name: str | None = None, training_file: str | None = None
            ) -> VersionRecord:
    """One version built from a request submitted by `requested_by`, as the sensor would."""
    request = pipeline.submit(conversation_ids=[c.conversation_id for c in rows],
                              new_file_name=new_file_name, training_file=training_file,
                              description="made for the console tests" if new_file_name else None,
                              requested_by=requested_by)
    assert pipeline.claim(request.id) is not None
    return pipeline.run_request(request.id, f"run-{request.id[:8]}")


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def world(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
          ) -> Iterator[World]:
    backend: str = request.param
    directory = tmp_path_factory.mktemp(f"console-{backend}")
    name = f"brightrun_console_{secrets.token_hex(6)}"
    if backend == "sqlite":
        url = f"sqlite:///{directory / 'brightrun.db'}"
    else:
        with _postgres_admin() as admin:
            admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        url = f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}"
    pipeline = new_pipeline(url, LocalObjectStore(directory / "storage"))
    try:
        dataset = demo_dataset()
        seed_dataset(pipeline, dataset)
        tokens = {user: add_user(pipeline.db, user, admin=user == "root")[1]
                  for user in ("alice", "bob", "root")}
        chosen = eligible(dataset)
        # Batch one: a99d…, a0c7…, f39b… eligible, 75c6… failed. Batch two: 81ed…, 3925…,
        # 3350… eligible, 5ea3… without a file. 845d… is in no batch.
        core_v1 = publish(pipeline, chosen[:2], "alice", new_file_name=CORE_FILE)
        core_v2 = publish(pipeline, [chosen[3]], "root", training_file=core_v1.training_file_id)
        odd_v1 = publish(pipeline, [chosen[4]], "bob", new_file_name=ODD_FILE)
        services = Services(settings_for(url, directory), pipeline)
        client = TestClient(create_app(services), raise_server_exceptions=False)
        yield World(backend, url, pipeline, services, client, dataset, tokens,
                    core_v1.training_file_id, [core_v1, core_v2],
                    odd_v1.training_file_id, [odd_v1])
        client.close()
    finally:
        pipeline.db.dispose()
        if backend == "postgresql":
            with _postgres_admin() as admin:
                admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(
                    sql.Identifier(name)))


# --- Helpers ----------------------------------------------------------------------------------


def snapshot(db: Database) -> dict[str, list[str]]:
    """Every row the pipeline owns (requests, files, versions, members, users, …)."""
    with db.engine.connect() as connection:
        return {table.name: sorted(repr(tuple(row)) for row in
                                   connection.execute(sa.select(table)))
                for table in OWNED_TABLES}


def error_of(response: httpx.Response, status: int) -> dict[str, Any]:
    """The error of a refused API call: the status, and the one JSON shape (no stack trace)."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json"), response.text
    assert "Traceback" not in response.text and 'File "' not in response.text
    body = response.json()
    assert list(body) == ["error"], body
    error = body["error"]
    assert set(error) == {"message", "conversations"}, body
    assert isinstance(error["message"], str) and error["message"], body
    assert isinstance(error["conversations"], dict), body
    return error


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def ids(rows: list[dict[str, Any]]) -> list[str]:
    return [row["conversation_id"] for row in rows]


def listing(world: World, **params: Any) -> dict[str, Any]:
    response = world.get("/api/conversations", params={"page_size": 500, **params})
    assert response.status_code == 200, response.text
    page: dict[str, Any] = response.json()
    return page


# --- Reading the catalog ----------------------------------------------------------------------


def test_whoami(world: World) -> None:
    assert world.get("/api/me", "alice").json() == {
        "name": "alice", "admin": False, "signed_in_via": "bearer"}
    assert world.get("/api/me", "root").json()["admin"] is True


def expected_values(conversation: DemoConversation) -> dict[str, Any]:
    """What each sort of the listing compares, from the seeded rows."""
    row = conversation.row
    return {"conversation_id": conversation.conversation_id, "batch_id": conversation.batch_id,
            "title": row["title"], "status": row["enrichment_status"],
            "persona": row["persona_key"], "arc": row["emotional_arc_key"],
            "topic": row["topic_key"], "tier": row["tier"], "quality": row["quality_score"],
            "created": row["created_at"], "updated": row["updated_at"],
            "eligible": is_eligible(conversation)}


def expected_order(world: World, sort: str, desc: bool) -> list[str]:
    """Conversation ids sorted by one column, missing values last either way, ties by id."""
    values = [expected_values(c) for c in world.dataset.conversations]
    present = [v for v in values if v[sort] is not None]
    missing = [v for v in values if v[sort] is None]
    present.sort(key=lambda v: v["conversation_id"])
    # A reversed sort is stable too: ties keep their id order.
    present.sort(key=lambda v: v[sort], reverse=desc)
    missing.sort(key=lambda v: v["conversation_id"])
    return [v["conversation_id"] for v in present + missing]


SORTS = ["conversation_id", "batch_id", "title", "status", "persona", "arc", "topic", "tier",
         "quality", "created", "updated", "eligible"]


@pytest.mark.parametrize("sort", SORTS)
def test_every_sort_orders_the_whole_listing_both_ways(world: World, sort: str) -> None:
    for desc in (False, True):
        page = listing(world, sort=sort, desc=str(desc).lower())
        assert page["total"] == len(world.dataset.conversations) == 9
        assert ids(page["rows"]) == expected_order(world, sort, desc), (sort, desc)


def test_batch_id_sort_groups_batches_with_the_unbatched_last(world: World) -> None:
    first, second = sorted(b.id for b in world.dataset.batches)
    ascending = [r["batch_id"] for r in listing(world, sort="batch_id")["rows"]]
    descending = [r["batch_id"] for r in listing(world, sort="batch_id", desc="true")["rows"]]
    assert ascending == [first] * 4 + [second] * 4 + [None]
    assert descending == [second] * 4 + [first] * 4 + [None]


def test_every_filter_keeps_what_it_names(world: World) -> None:
    dataset = world.dataset
    batch = dataset.batches[0].id

    def kept(**params: Any) -> set[str]:
        page = listing(world, sort="conversation_id", **params)
        assert page["total"] == len(page["rows"])
        return set(ids(page["rows"]))

    def where(test: Any) -> set[str]:
        return {c.conversation_id for c in dataset.conversations if test(c)}

    assert kept(batch_id=batch) == where(lambda c: c.batch_id == batch)
    assert len(kept(batch_id=batch)) == 4
    # The filter takes a UUID in any case.
    assert kept(batch_id=batch.upper()) == kept(batch_id=batch)
    assert kept(status="failed") == where(lambda c: c.row["enrichment_status"] == "failed")
    assert len(kept(status="failed")) == 1
    assert kept(persona="anxious_planner") == where(
        lambda c: c.row["persona_key"] == "anxious_planner")
    assert kept(arc="grief_to_stability") == where(
        lambda c: c.row["emotional_arc_key"] == "grief_to_stability")
    assert kept(topic="mortgage_payoff_strategy") == where(
        lambda c: c.row["topic_key"] == "mortgage_payoff_strategy")
    assert kept(tier="scenario") == where(lambda c: c.row["tier"] == "scenario")
    assert kept(eligible="true") == where(is_eligible)
    assert kept(eligible="false") == where(lambda c: not is_eligible(c))
    assert len(kept(eligible="false")) == 2
    # Text search: titles, case-insensitively, and conversation ids; wildcards are literal.
    assert kept(q="emergency FUND") == where(lambda c: "Emergency Fund" in c.row["title"])
    assert len(kept(q="emergency FUND")) == 2
    target = dataset.conversations[5].conversation_id
    assert kept(q=target[:13]) == {target}
    assert kept(q="SEÁN") == where(lambda c: "Seán" in c.row["title"]) != set()
    assert kept(q="%") == set()
    assert kept(q="_") == set()
    core = {c.conversation_id for c in eligible(dataset)[:2]} | {
        eligible(dataset)[3].conversation_id}
    assert kept(file=world.core_id) == core
    assert kept(file=world.odd_id) == {eligible(dataset)[4].conversation_id}
    # Filters combine.
    assert kept(persona="anxious_planner", eligible="true") == where(
        lambda c: c.row["persona_key"] == "anxious_planner" and is_eligible(c))
    assert len(kept(persona="anxious_planner", eligible="true")) == 3
    assert kept(batch_id=batch, file=world.core_id) == {
        c.conversation_id for c in eligible(dataset)[:2]}


def test_rows_carry_eligibility_and_the_files_holding_them(world: World) -> None:
    rows = {r["conversation_id"]: r for r in listing(world)["rows"]}
    chosen = eligible(world.dataset)
    for conversation in world.dataset.conversations:
        row = rows[conversation.conversation_id]
        assert row["eligible"] is is_eligible(conversation)
        assert (row["ineligible_reason"] is None) is is_eligible(conversation)
        assert row["title"] == conversation.row["title"]
        assert row["batch_id"] == conversation.batch_id
    failed = rows[world.conversation("75c6").conversation_id]
    assert "enrichment_status is 'failed'" in failed["ineligible_reason"]
    assert "enriched_file_path is null" in rows[
        world.conversation("5ea3").conversation_id]["ineligible_reason"]
    files = {cid: [(f["id"], f["name"], f["added_in_version"]) for f in row["files"]]
             for cid, row in rows.items()}
    assert files[chosen[0].conversation_id] == [(world.core_id, CORE_FILE, 1)]
    assert files[chosen[1].conversation_id] == [(world.core_id, CORE_FILE, 1)]
    assert files[chosen[3].conversation_id] == [(world.core_id, CORE_FILE, 2)]
    assert files[chosen[4].conversation_id] == [(world.odd_id, ODD_FILE, 1)]
    held = {chosen[i].conversation_id for i in (0, 1, 3, 4)}
    assert all(files[cid] == [] for cid in rows if cid not in held)


def test_paging(world: World) -> None:
    whole = ids(listing(world, sort="conversation_id")["rows"])
    pages = []
    for number in range(1, 6):
        response = world.get("/api/conversations", params={
            "sort": "conversation_id", "page": number, "page_size": 2})
        page = response.json()
        assert (page["page"], page["page_size"], page["total"], page["pages"]) == (
            number, 2, 9, 5)
        pages.append(ids(page["rows"]))
    assert [len(p) for p in pages] == [2, 2, 2, 2, 1]
    assert [cid for p in pages for cid in p] == whole
    beyond = world.get("/api/conversations", params={"page": 6, "page_size": 2}).json()
    assert (beyond["rows"], beyond["total"], beyond["pages"]) == ([], 9, 5)
    # The defaults: page 1 of 50.
    default = world.get("/api/conversations").json()
    assert (default["page"], default["page_size"], default["pages"]) == (1, 50, 1)
    nothing = world.get("/api/conversations", params={"q": "no such title"}).json()
    assert (nothing["rows"], nothing["total"], nothing["pages"]) == ([], 0, 1)


def test_choices(world: World) -> None:
    rows = [c.row for c in world.dataset.conversations]

    def distinct(column: str) -> list[str]:
        return sorted({r[column] for r in rows if r[column] is not None})

    assert world.get("/api/choices").json() == {
        "statuses": distinct("enrichment_status"), "personas": distinct("persona_key"),
        "arcs": distinct("emotional_arc_key"), "topics": distinct("topic_key"),
        "tiers": distinct("tier")}


def test_batches(world: World) -> None:
    listed = world.get("/api/batches").json()
    by_date = sorted(world.dataset.batches, key=lambda b: b.created_at, reverse=True)
    assert [b["id"] for b in listed] == [b.id for b in by_date]
    for shown, batch in zip(listed, by_date, strict=True):
        members = [c for c in world.dataset.conversations if c.batch_id == batch.id]
        assert (shown["name"], shown["status"], shown["tier"]) == (
            batch.name, batch.status, batch.tier)
        assert shown["conversations"] == len(members) == 4
        assert shown["eligible"] == sum(map(is_eligible, members)) == 3


def test_eligible_in_a_batch_for_a_new_and_for_an_existing_file(world: World) -> None:
    batch = world.dataset.batches[0].id
    members = [c for c in world.dataset.conversations if c.batch_id == batch]
    failed = world.conversation("75c6").conversation_id
    fresh = world.get(f"/api/batches/{batch}/eligible").json()
    assert fresh["batch_id"] == batch
    assert fresh["conversation_ids"] == [c.conversation_id for c in members if is_eligible(c)]
    assert list(fresh["left_out"]) == [failed]
    assert "enrichment_status is 'failed'" in fresh["left_out"][failed]

    for ref in (world.core_id, CORE_FILE.upper()):
        existing = world.get(f"/api/batches/{batch}/eligible", params={"file": ref}).json()
        chosen = eligible(world.dataset)
        assert existing["conversation_ids"] == [chosen[2].conversation_id]
        already = f"already in training file {CORE_FILE!r} (added in version 1)"
        assert existing["left_out"] == {chosen[0].conversation_id: already,
                                        chosen[1].conversation_id: already,
                                        failed: fresh["left_out"][failed]}


# --- Training files, versions and lineage -----------------------------------------------------


def header_of(world: World, record: VersionRecord) -> dict[str, Any]:
    """The `training_file_metadata` of a published version, parsed from its whole JSON."""
    document = orjson.loads(world.pipeline.store.get_bytes(TRAINING_BUCKET, record.json_key))
    header: dict[str, Any] = document["training_file_metadata"]
    return header


def test_files_list_figures_match_the_current_version(world: World) -> None:
    listed = {f["id"]: f for f in world.get("/api/files", "bob").json()}
    assert set(listed) == {world.core_id, world.odd_id}
    for file_id, name, owner, versions in (
            (world.core_id, CORE_FILE, "alice", world.core_versions),
            (world.odd_id, ODD_FILE, "bob", world.odd_versions)):
        shown, current = listed[file_id], versions[-1]
        assert (shown["name"], shown["owner"], shown["current_version"]) == (
            name, owner, current.version)
        assert (shown["conversations"], shown["training_pairs"], shown["trainable_pairs"]) == (
            current.conversation_count, current.training_pair_count,
            current.trainable_pair_count)
        assert (shown["json_bytes"], shown["jsonl_bytes"]) == (
            current.json_size, current.jsonl_size)
        header = header_of(world, current)
        assert shown["quality"] == header["quality_summary"]
        assert shown["quality"]["avg_quality_score"] is not None
        assert shown["scaffolding_distribution"] == header["scaffolding_distribution"]
        assert shown["scaffolding_distribution"]
    core = listed[world.core_id]
    assert core["conversations"] == 3 and core["training_pairs"] > 0
    assert core["description"] == "made for the console tests"


def test_file_detail_and_versions(world: World) -> None:
    listed = {f["id"]: f for f in world.get("/api/files").json()}
    by_id = world.get(f"/api/files/{world.core_id}").json()
    # By name too, case-insensitively.
    assert world.get(f"/api/files/{CORE_FILE.lower()}").json() == by_id
    assert by_id["file"] == listed[world.core_id]
    versions = by_id["versions"]
    assert world.get(f"/api/files/{world.core_id}/versions").json() == versions
    assert [v["version"] for v in versions] == [2, 1]
    assert [v["requested_by"] for v in versions] == [["root"], ["alice"]]
    for shown, record in zip(versions, reversed(world.core_versions), strict=True):
        assert shown["request_ids"] == record.request_ids and len(record.request_ids) == 1
        request = world.db.get_request(record.request_ids[0])
        assert request is not None and request.result_version == record.version
        assert (shown["json_sha256"], shown["jsonl_sha256"], shown["manifest_sha256"]) == (
            record.json_sha256, record.jsonl_sha256, record.manifest_sha256)
        store = world.pipeline.store
        assert shown["json_sha256"] == sha256(store.get_bytes(TRAINING_BUCKET, record.json_key))
        assert shown["jsonl_sha256"] == sha256(
            store.get_bytes(TRAINING_BUCKET, record.jsonl_key))
        assert shown["manifest_sha256"] == sha256(
            store.get_bytes(TRAINING_BUCKET, record.manifest_key))
        assert (shown["conversations"], shown["json_bytes"], shown["jsonl_bytes"]) == (
            record.conversation_count, record.json_size, record.jsonl_size)
    odd = world.get(f"/api/files/{world.odd_id}", "root").json()
    assert odd["file"]["name"] == ODD_FILE
    assert [v["requested_by"] for v in odd["versions"]] == [["bob"]]


def test_lineage_of_a_file_version(world: World) -> None:
    chosen = eligible(world.dataset)
    current = world.get(f"/api/files/{world.core_id}/lineage").json()
    pinned = world.get(f"/api/files/{world.core_id}/lineage", params={"version": 1}).json()
    assert world.get(f"/api/files/{CORE_FILE}/lineage", params={"version": 2}).json() == current
    assert ids(current) == [chosen[i].conversation_id for i in (0, 1, 3)]
    assert ids(pinned) == [chosen[i].conversation_id for i in (0, 1)]
    assert [r["added_in_version"] for r in current] == [1, 1, 2]
    for row in current:
        conversation = world.conversation(row["conversation_id"])
        assert conversation.file_bytes is not None
        assert row["source_sha256"] == sha256(conversation.file_bytes)
        assert row["source_key"] == conversation.row["enriched_file_path"]
        assert row["batch_id"] == conversation.batch_id
        assert (row["persona"], row["arc"], row["topic"], row["quality"]) == (
            conversation.row["persona_key"], conversation.row["emotional_arc_key"],
            conversation.row["topic_key"], conversation.row["quality_score"])
        assert row["pair_count"] > 0


def test_lineage_of_a_conversation(world: World) -> None:
    chosen = eligible(world.dataset)

    def lineage(conversation: DemoConversation) -> list[dict[str, Any]]:
        response = world.get(f"/api/conversations/{conversation.conversation_id}/lineage")
        assert response.status_code == 200, response.text
        found: list[dict[str, Any]] = response.json()
        return found

    first, later, unused = chosen[0], chosen[3], chosen[2]
    assert first.file_bytes is not None and later.file_bytes is not None
    assert lineage(first) == [{
        "training_file_id": world.core_id, "file_name": CORE_FILE, "added_in_version": 1,
        "current_version": 2, "versions": [1, 2], "source_sha256": sha256(first.file_bytes)}]
    assert lineage(later) == [{
        "training_file_id": world.core_id, "file_name": CORE_FILE, "added_in_version": 2,
        "current_version": 2, "versions": [2], "source_sha256": sha256(later.file_bytes)}]
    assert lineage(unused) == []
    # The id in any case.
    upper = world.get(f"/api/conversations/{first.conversation_id.upper()}/lineage")
    assert upper.json() == lineage(first)
    assert [a["file_name"] for a in lineage(chosen[4])] == [ODD_FILE]


# --- Downloads --------------------------------------------------------------------------------

SAFE_DISPOSITION = r'attachment; filename="[A-Za-z0-9._-]+"'
MEDIA = {"json": "application/json", "jsonl": "application/x-ndjson",
         "manifest": "application/json"}


def published(world: World, record: VersionRecord, fmt: str) -> tuple[bytes, str]:
    """The published bytes of one output of a version, and the hash its row records."""
    key, digest = {"json": (record.json_key, record.json_sha256),
                   "jsonl": (record.jsonl_key, record.jsonl_sha256),
                   "manifest": (record.manifest_key, record.manifest_sha256)}[fmt]
    return world.pipeline.store.get_bytes(TRAINING_BUCKET, key), digest


@pytest.mark.parametrize("fmt", ["json", "jsonl", "manifest"])
def test_download_the_current_and_a_pinned_version(world: World, fmt: str) -> None:
    v1, v2 = world.core_versions
    suffix = {"json": ".json", "jsonl": ".jsonl", "manifest": ".manifest.json"}[fmt]
    for params, record in (({}, v2), ({"version": 2}, v2), ({"version": 1}, v1)):
        response = world.get(f"/api/files/{world.core_id}/download", "bob",
                             params={"format": fmt, **params})
        assert response.status_code == 200, response.text
        data, digest = published(world, record, fmt)
        assert response.content == data
        assert sha256(response.content) == digest
        assert response.headers["content-type"].startswith(MEDIA[fmt])
        assert response.headers["content-disposition"] == (
            f'attachment; filename="Alice-core-file-v{record.version}{suffix}"')
        if fmt != "manifest":
            assert int(response.headers["content-length"]) == len(data)
    assert v1.json_sha256 != v2.json_sha256
    # JSON is the default format.
    default = world.get(f"/api/files/{CORE_FILE}/download")
    assert default.content == published(world, v2, "json")[0]


def test_download_names_are_safe_whatever_the_file_is_called(world: World) -> None:
    [record] = world.odd_versions
    response = world.get(f"/api/files/{world.odd_id}/download", params={"format": "jsonl"})
    assert response.status_code == 200
    assert response.content == published(world, record, "jsonl")[0]
    disposition = response.headers["content-disposition"]
    assert disposition == 'attachment; filename="n-c-d-quoted-sl-ash-v1.jsonl"', disposition
    # A name that reached the database by other means (CR, LF, a header of its own) stays out of
    # the response headers too.
    hostile = 'evil"\r\nSet-Cookie: brightrun_token=stolen\r\n\r\n<script>'
    with world.db.engine.begin() as connection:
        connection.execute(sa.update(training_files).where(
            training_files.c.id == world.odd_id).values(name=hostile))
    try:
        response = world.get(f"/api/files/{world.odd_id}/download")
    finally:
        with world.db.engine.begin() as connection:
            connection.execute(sa.update(training_files).where(
                training_files.c.id == world.odd_id).values(name=ODD_FILE))
    assert response.status_code == 200
    assert "set-cookie" not in response.headers
    disposition = response.headers["content-disposition"]
    assert re.fullmatch(SAFE_DISPOSITION, disposition), disposition
    assert response.content == published(world, record, "json")[0]



# --- Checking and submitting selections -------------------------------------------------------


def rejected_selection(world: World) -> tuple[list[str], dict[str, str]]:
    """A selection for the core file with one conversation per reason, and the reason each gets
    (a fragment of it)."""
    chosen = eligible(world.dataset)
    failed = world.conversation("75c6").conversation_id
    no_file = world.conversation("5ea3").conversation_id
    unknown = str(uuid.uuid4())
    repeated = chosen[2].conversation_id
    selection = [failed, no_file, chosen[0].conversation_id, repeated, unknown, "not-a-uuid",
                 repeated.upper(), chosen[3].conversation_id]
    reasons = {
        failed: "enrichment_status is 'failed', not 'completed'",
        no_file: "enriched_file_path is null",
        chosen[0].conversation_id: f"already in training file {CORE_FILE!r} (added in version 1)",
        repeated: "repeated in the request (2 times)",
        unknown: "unknown conversation ID",
        "not-a-uuid": "not a conversation ID (expected a UUID)",
        chosen[3].conversation_id: f"already in training file {CORE_FILE!r} (added in version 2)",
    }
    return selection, reasons


def test_validate_a_selection(world: World) -> None:
    chosen = eligible(world.dataset)
    before = snapshot(world.db)
    ok = world.post("/api/selections/validate", json={
        "conversation_ids": [chosen[2].conversation_id], "training_file": world.core_id})
    assert ok.status_code == 200, ok.text
    assert ok.json() == {"ok": True, "target": f"training file {CORE_FILE!r}",
                         "message": f"1 conversation can be added to training file "
                                    f"{CORE_FILE!r}", "conversations": {}, "warnings": {}}
    # A new file may take what the core file already holds.
    fresh = world.post("/api/selections/validate", json={
        "conversation_ids": [c.conversation_id for c in chosen[:3]],
        "new_file_name": "Validated only"}).json()
    assert (fresh["ok"], fresh["target"]) == (True, "new training file 'Validated only'")

    selection, reasons = rejected_selection(world)
    bad = world.post("/api/selections/validate", json={
        "conversation_ids": selection, "training_file": CORE_FILE})
    assert bad.status_code == 200, bad.text
    check = bad.json()
    assert check["ok"] is False
    assert check["message"] == (f"7 of 8 conversations cannot be added to training file "
                                f"{CORE_FILE!r}")
    assert set(check["conversations"]) == set(reasons)
    for cid, reason in reasons.items():
        assert reason in check["conversations"][cid], (cid, check["conversations"][cid])
    # Both reasons when a conversation breaks two rules.
    failed = world.conversation("75c6").conversation_id
    assert "enriched_file_path is null" in check["conversations"][failed]

    over = world.post("/api/selections/validate", json={
        "conversation_ids": [str(uuid.uuid4()) for _ in range(81)],
        "new_file_name": "Too big"}).json()
    assert over["ok"] is False
    assert "at most 80 conversations; this one holds 81" in over["message"]
    empty = world.post("/api/selections/validate", json={
        "conversation_ids": [], "new_file_name": "Empty"}).json()
    assert (empty["ok"], empty["message"]) == (False, "a request needs at least one conversation")
    taken = world.post("/api/selections/validate", json={
        "conversation_ids": [chosen[2].conversation_id],
        "new_file_name": CORE_FILE.upper()}).json()
    assert taken["ok"] is False and "already exists" in taken["message"]
    assert snapshot(world.db) == before


def test_submit_stores_a_pending_request_for_its_user(world: World) -> None:
    chosen = eligible(world.dataset)
    before = snapshot(world.db)
    selection = [chosen[2].conversation_id, chosen[5].conversation_id.upper()]
    response = world.post("/api/requests", "bob", json={
        "conversation_ids": selection, "new_file_name": "Bob second file",
        "description": "two more"})
    assert response.status_code == 202, response.text
    view = response.json()
    assert (view["status"], view["finished"], view["requested_by"]) == ("pending", False, "bob")
    assert (view["new_file_name"], view["conversation_count"], view["attempts"]) == (
        "Bob second file", 2, 0)
    stored = world.db.get_request(view["id"])
    assert stored is not None
    assert (stored.status, stored.requested_by, stored.new_file_name) == (
        "pending", "bob", "Bob second file")
    assert stored.new_file_description == "two more"
    assert [cid.lower() for cid in stored.conversation_ids] == [cid.lower() for cid in selection]
    after = snapshot(world.db)
    added = set(after["selection_requests"]) - set(before["selection_requests"])
    assert len(added) == 1 and view["id"] in next(iter(added))
    assert {k: v for k, v in after.items() if k != "selection_requests"} == {
        k: v for k, v in before.items() if k != "selection_requests"}
    # Anyone signed in may follow it; the warnings come with the submission's answer only.
    assert view.pop("warnings") == {}
    assert world.get(f"/api/requests/{view['id']}", "alice").json() == view


def test_submit_refuses_what_validate_refuses_and_stores_nothing(world: World) -> None:
    selection, reasons = rejected_selection(world)
    before = snapshot(world.db)
    response = world.post("/api/requests", json={"conversation_ids": selection,
                                                 "training_file": world.core_id})
    error = error_of(response, 422)
    assert error["message"] == (f"7 of 8 conversations cannot be added to training file "
                                f"{CORE_FILE!r}")
    assert set(error["conversations"]) == set(reasons)
    for cid, reason in reasons.items():
        assert reason in error["conversations"][cid]
    over = error_of(world.post("/api/requests", json={
        "conversation_ids": [str(uuid.uuid4()) for _ in range(81)],
        "new_file_name": "Too big"}), 422)
    assert "at most 80" in over["message"]
    for body in ({"conversation_ids": [], "new_file_name": "Empty"},
                 {"conversation_ids": [eligible(world.dataset)[2].conversation_id],
                  "new_file_name": ODD_FILE}):
        error_of(world.post("/api/requests", json=body), 422)
    assert snapshot(world.db) == before


def test_only_the_creator_or_an_admin_may_add_to_a_file(world: World) -> None:
    candidate = eligible(world.dataset)[2].conversation_id
    body = {"conversation_ids": [candidate], "training_file": world.core_id}
    before = snapshot(world.db)
    for path in ("/api/selections/validate", "/api/requests"):
        error = error_of(world.post(path, "bob", json=body), 403)
        assert "only the creator of 'Alice core file' (alice) or an admin" in error["message"]
    error_of(world.post("/api/requests", "alice", json={
        "conversation_ids": [candidate], "training_file": ODD_FILE}), 403)
    assert snapshot(world.db) == before
    # Everyone signed in may still view and download it.
    assert world.get(f"/api/files/{world.core_id}", "bob").status_code == 200
    assert world.get(f"/api/files/{world.core_id}/download", "bob").status_code == 200

    assert world.post("/api/selections/validate", "root", json=body).json()["ok"] is True
    for user in ("root", "alice"):
        response = world.post("/api/requests", user, json=body)
        assert response.status_code == 202, response.text
        assert response.json()["requested_by"] == user
        assert response.json()["training_file_id"] == world.core_id
        assert response.json()["training_file_name"] == CORE_FILE
        stored = world.db.get_request(response.json()["id"])
        assert stored is not None and stored.requested_by == user
    # The file now has requests waiting for the sensor.
    summary = world.get(f"/api/files/{world.core_id}").json()["file"]
    assert summary["busy"] is True and len(summary["open_requests"]) == 2


# --- Every error status, in the one shape, changing nothing -----------------------------------


def test_400_for_malformed_references_and_targets(world: World) -> None:
    before = snapshot(world.db)
    candidate = eligible(world.dataset)[2].conversation_id
    for path, params in (("/api/conversations", {"batch_id": "batch-1"}),
                         ("/api/conversations", {"file": CORE_FILE}),
                         ("/api/batches/batch-1/eligible", {}),
                         ("/api/conversations/not-a-uuid/lineage", {})):
        error = error_of(world.get(path, params=params), 400)
        assert "UUID" in error["message"], error
    for path in ("/api/selections/validate", "/api/requests"):
        for body in ({"conversation_ids": [candidate], "training_file": world.core_id,
                      "new_file_name": "Both"},
                     {"conversation_ids": [candidate]}):
            error = error_of(world.post(path, json=body), 400)
            assert "exactly one target" in error["message"]
    assert snapshot(world.db) == before


BAD_AUTHORIZATIONS = ["", "Bearer", "Bearer ", "Bearer brt_not-a-real-token", "Bearer not-ours",
                      "Basic YWxpY2U6c2VjcmV0", "Token {token}", "Bearer {token}x",
                      "{token}", "Bearer " + "x" * 5000]


def test_401_without_a_valid_token(world: World) -> None:
    before = snapshot(world.db)
    client = TestClient(world.client.app, raise_server_exceptions=False)
    body = {"conversation_ids": [eligible(world.dataset)[2].conversation_id],
            "new_file_name": "Never stored"}
    calls = [("GET", "/api/me"), ("GET", "/api/conversations"), ("GET", "/api/files"),
             ("GET", f"/api/files/{world.core_id}/download"), ("POST", "/api/requests"),
             ("POST", "/api/selections/validate")]
    for method, path in calls:
        response = client.request(method, path, json=body if method == "POST" else None)
        error_of(response, 401)
        assert response.headers["www-authenticate"] == "Bearer"
    for header in BAD_AUTHORIZATIONS:
        value = header.format(token=world.tokens["alice"])
        for method, path in calls[:1] + calls[4:5]:
            response = client.request(method, path, headers={"Authorization": value},
                                      json=body if method == "POST" else None)
            error_of(response, 401)
            assert response.headers["www-authenticate"] == "Bearer"
    # A sign-in cookie that belongs to nobody is no better.
    for token in ("brt_forged", world.tokens["alice"] + "x"):
        cookied = TestClient(world.client.app, raise_server_exceptions=False,
                             cookies={"brightrun_token": token})
        error_of(cookied.get("/api/me"), 401)
    assert snapshot(world.db) == before


def test_404_for_what_does_not_exist(world: World) -> None:
    before = snapshot(world.db)
    unknown = str(uuid.uuid4())
    candidate = eligible(world.dataset)[2].conversation_id
    paths = [f"/api/files/{unknown}", "/api/files/No such file",
             "/api/files/No such file/versions", "/api/files/No such file/lineage",
             f"/api/files/{unknown}/download", f"/api/requests/{unknown}",
             "/api/requests/not-a-request", f"/api/conversations/{unknown}/lineage",
             f"/api/batches/{unknown}/eligible", "/api/nothing-here", "/api/files/a/b/c"]
    for path in paths:
        error = error_of(world.get(path), 404)
        assert error["message"]
    for path, params in ((f"/api/files/{world.core_id}/lineage", {"version": 3}),
                         (f"/api/files/{world.core_id}/download", {"version": 3}),
                         (f"/api/files/{world.core_id}/download",
                          {"version": 9, "format": "manifest"})):
        error = error_of(world.get(path, params=params), 404)
        assert "has no version" in error["message"]
    error = error_of(world.get(f"/api/batches/{world.dataset.batches[0].id}/eligible",
                               params={"file": "No such file"}), 404)
    assert "No such file" in error["message"]
    for path in ("/api/selections/validate", "/api/requests"):
        error = error_of(world.post(path, json={"conversation_ids": [candidate],
                                                "training_file": "No such file"}), 404)
        assert error["message"] == "no training file named or with id 'No such file'"
    assert snapshot(world.db) == before


def test_405_for_a_method_a_route_does_not_take(world: World) -> None:
    error_of(world.client.delete(f"/api/files/{world.core_id}", headers=world.auth("root")),
             405)
    error_of(world.get("/api/requests"), 405)


def test_413_for_a_body_over_the_limit(world: World) -> None:
    before = snapshot(world.db)
    padding = "x" * (MAX_BODY_BYTES + 1)
    body = orjson.dumps({"conversation_ids": [eligible(world.dataset)[2].conversation_id],
                         "new_file_name": "Too large", "description": padding})
    headers = {**world.auth("alice"), "Content-Type": "application/json"}
    for path in ("/api/requests", "/api/selections/validate"):
        error = error_of(world.client.post(path, content=body, headers=headers), 413)
        assert str(MAX_BODY_BYTES) in error["message"]

        # Without a declared length too (chunked).
        def chunks() -> Iterator[bytes]:
            for start in range(0, len(body), 8192):
                yield body[start:start + 8192]

        error_of(world.client.post(path, content=chunks(), headers=headers), 413)
    # A chunked body under the limit reaches the handler whole.
    candidate = eligible(world.dataset)[2].conversation_id
    small = orjson.dumps({"conversation_ids": [candidate], "new_file_name": "Chunked"})
    check = world.client.post("/api/selections/validate", headers=headers,
                              content=(small[i:i + 7] for i in range(0, len(small), 7)))
    assert check.status_code == 200, check.text
    assert check.json()["target"] == "new training file 'Chunked'" and check.json()["ok"]
    # Just under the limit is read (and refused for what it says, not for its size).
    fits = orjson.dumps({"conversation_ids": ["x"] * 9000, "new_file_name": "Fits"})
    assert len(fits) < MAX_BODY_BYTES
    error_of(world.client.post("/api/requests", content=fits, headers=headers), 422)
    assert snapshot(world.db) == before


@pytest.mark.parametrize(("path", "params"), [
    ("/api/conversations", {"page": 0}),
    ("/api/conversations", {"page": "two"}),
    ("/api/conversations", {"page_size": 0}),
    ("/api/conversations", {"page_size": 501}),
    ("/api/conversations", {"sort": "bogus"}),
    ("/api/conversations", {"sort": "conversation_id; DROP TABLE users"}),
    ("/api/conversations", {"desc": "sideways"}),
    ("/api/conversations", {"eligible": "perhaps"}),
    ("/api/conversations", {"q": "q" * 201}),
    ("/api/files/{core}/lineage", {"version": 0}),
    ("/api/files/{core}/lineage", {"version": "latest"}),
    ("/api/files/{core}/download", {"version": 0}),
    ("/api/files/{core}/download", {"format": "xml"}),
])
def test_422_for_invalid_query_values(world: World, path: str, params: dict[str, Any]) -> None:
    error = error_of(world.get(path.format(core=world.core_id), params=params), 422)
    assert error["message"].startswith("invalid input: "), error
    assert list(params)[0] in error["message"], error


def test_422_for_invalid_bodies(world: World) -> None:
    before = snapshot(world.db)
    headers = {**world.auth("alice"), "Content-Type": "application/json"}
    candidate = eligible(world.dataset)[2].conversation_id
    for path in ("/api/requests", "/api/selections/validate"):
        for content in (b"{not json", b"[]", b"null",
                        orjson.dumps({"new_file_name": "No ids"}),
                        orjson.dumps({"conversation_ids": candidate, "new_file_name": "Text"}),
                        orjson.dumps({"conversation_ids": [candidate], "new_file_name": "Long",
                                      "description": "d" * 2001})):
            error = error_of(world.client.post(path, content=content, headers=headers), 422)
            assert error["message"].startswith("invalid input"), (content, error)
    # Values of the wrong kind inside the list are the rules' business: a reason each.
    error = error_of(world.post("/api/requests", json={
        "conversation_ids": [candidate, 7, None], "new_file_name": "Odd values"}), 422)
    assert set(error["conversations"]) == {"7", "None"}
    assert snapshot(world.db) == before


def test_413_stops_reading_an_undeclared_body_at_the_limit(world: World) -> None:
    """A chunked body without a length is refused once it passes the limit, not after the
    whole of it has been read into memory (the check runs before anyone signs in)."""
    pulled = 0
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        nonlocal pulled
        pulled += 1
        return {"type": "http.request", "body": b"x" * 16384, "more_body": pulled < 1000}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1",
             "method": "POST", "scheme": "http", "path": "/api/requests",
             "raw_path": b"/api/requests", "query_string": b"", "root_path": "",
             "headers": [(b"host", b"testserver"), (b"content-type", b"application/json"),
                         (b"transfer-encoding", b"chunked")],
             "client": ("127.0.0.1", 50000), "server": ("testserver", 80)}
    anyio.run(world.client.app, scope, receive, send)
    start = next(m for m in sent if m["type"] == "http.response.start")
    assert start["status"] == 413
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    assert set(orjson.loads(body)["error"]) == {"message", "conversations"}
    assert pulled <= MAX_BODY_BYTES // 16384 + 2, pulled


# --- Browsers: sign-in cookie and CSRF --------------------------------------------------------


def browser(world: World, **cookies: str) -> TestClient:
    """A client of its own (its own cookie jar), as a separate browser."""
    return TestClient(world.client.app, raise_server_exceptions=False, follow_redirects=False,
                      cookies=cookies)


def csrf_of(client: TestClient) -> str:
    """The CSRF token the sign-in page gives this browser (in a cookie)."""
    page = client.get("/sign-in")
    assert page.status_code == 200
    token = client.cookies.get("brightrun_csrf")
    assert token and token in page.text
    return token


def test_cookie_callers_need_the_csrf_token_and_bearer_callers_do_not(world: World) -> None:
    body = {"conversation_ids": [eligible(world.dataset)[2].conversation_id],
            "new_file_name": "Cookie file"}
    client = browser(world, brightrun_token=world.tokens["alice"])
    assert client.get("/api/me").json() == {
        "name": "alice", "admin": False, "signed_in_via": "cookie"}
    before = snapshot(world.db)
    for path in ("/api/requests", "/api/selections/validate"):
        error = error_of(client.post(path, json=body), 403)
        assert "CSRF" in error["message"]
        error_of(client.post(path, json=body, headers={"X-CSRF-Token": "guessed"}), 403)
    token = csrf_of(client)
    for path in ("/api/requests", "/api/selections/validate"):
        error_of(client.post(path, json=body, headers={"X-CSRF-Token": token + "x"}), 403)
        error_of(client.post(path, json=body, headers={"X-CSRF-Token": ""}), 403)
    # The token of another browser is no good either.
    other = csrf_of(browser(world))
    error_of(client.post("/api/requests", json=body, headers={"X-CSRF-Token": other}), 403)
    assert snapshot(world.db) == before

    check = client.post("/api/selections/validate", json=body, headers={"X-CSRF-Token": token})
    assert check.status_code == 200 and check.json()["ok"] is True
    submitted = client.post("/api/requests", json=body, headers={"X-CSRF-Token": token})
    assert submitted.status_code == 202, submitted.text
    assert submitted.json()["requested_by"] == "alice"
    # A Bearer caller carries no ambient credential: nothing to forge, no CSRF token needed
    # (even with a browser's cookies around it).
    bearer = client.post("/api/selections/validate", json=body, headers=world.auth("bob"))
    assert bearer.status_code == 200, bearer.text


def test_sign_in_and_out(world: World) -> None:
    client = browser(world)
    error_of(client.get("/api/me"), 401)
    csrf = csrf_of(client)
    # A wrong token: the sign-in page again, with 401 and no session cookie.
    for token in ("brt_wrong", "not even a token", world.tokens["alice"][:-1]):
        wrong = client.post("/sign-in", data={"token": token, "csrf_token": csrf,
                                              "next": "/files"})
        assert wrong.status_code == 401
        assert "text/html" in wrong.headers["content-type"]
        assert "brightrun_token" not in client.cookies
    # No CSRF token, or a wrong one: refused even with the right user token.
    for data in ({"token": world.tokens["alice"]},
                 {"token": world.tokens["alice"], "csrf_token": csrf[::-1]}):
        refused = client.post("/sign-in", data=data)
        assert refused.status_code == 403
        assert "Traceback" not in refused.text
        assert "brightrun_token" not in client.cookies
    signed = client.post("/sign-in", data={"token": f"  {world.tokens['bob']} ",
                                           "csrf_token": csrf, "next": "/files?x=1"})
    assert signed.status_code == 303
    assert signed.headers["location"] == "/files?x=1"
    cookie = signed.headers["set-cookie"]
    assert cookie.startswith(f"brightrun_token={world.tokens['bob']};")
    assert "HttpOnly" in cookie and "SameSite=strict" in cookie and "Path=/" in cookie
    assert client.get("/api/me").json() == {
        "name": "bob", "admin": False, "signed_in_via": "cookie"}

    # Signing out needs the CSRF token too (else any site could sign a curator out).
    assert client.post("/sign-out").status_code == 403
    assert client.get("/api/me").status_code == 200
    out = client.post("/sign-out", data={"csrf_token": csrf})
    assert out.status_code == 303 and out.headers["location"] == "/sign-in"
    cleared = out.headers["set-cookie"]
    assert cleared.startswith("brightrun_token=") and ("Max-Age=0" in cleared
                                                       or "expires=" in cleared.lower())
    assert "brightrun_token" not in client.cookies
    error_of(client.get("/api/me"), 401)


@pytest.mark.parametrize("target", [
    "https://evil.example/", "//evil.example/", "http:/evil.example", "evil.example",
    "javascript:alert(1)", "/\\evil.example", "/\\/evil.example", "",
    "/\t/evil.example",
])
def test_next_never_leaves_the_site(world: World, target: str) -> None:
    client = browser(world)
    csrf = csrf_of(client)
    signed = client.post("/sign-in", data={"token": world.tokens["alice"], "csrf_token": csrf,
                                           "next": target})
    assert signed.status_code == 303
    location = signed.headers["location"]
    # Browsers read a backslash as a slash and drop tabs and newlines.
    seen = location.replace("\\", "/").replace("\t", "").replace("\n", "").replace("\r", "")
    assert seen.startswith("/") and not seen.startswith("//"), location


# --- Users and tokens -------------------------------------------------------------------------


def cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    """`brightrun` in this process: exit code, standard output and standard error."""
    capsys.readouterr()
    try:
        main(list(args))
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def use_database(monkeypatch: pytest.MonkeyPatch, url: str, home: Path) -> None:
    """Only the BRIGHTRUN_* variables a deployment of this database would set."""
    for name in list(os.environ):
        if name.startswith("BRIGHTRUN_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("BRIGHTRUN_HOME", str(home))
    monkeypatch.setenv("BRIGHTRUN_DATABASE_URL", url)


def test_tokens_are_stored_as_their_sha256_only(world: World, tmp_path: Path) -> None:
    with world.db.engine.connect() as connection:
        rows = {row.name: row for row in connection.execute(sa.select(users))}
    assert set(rows) == {"alice", "bob", "root"}
    for name, token in world.tokens.items():
        assert token.startswith("brt_") and len(token) > 40
        assert rows[name].token_hash == hashlib.sha256(token.encode()).hexdigest()
        assert rows[name].token_hash == token_hash(token)
        assert rows[name].is_admin is (name == "root")
    everything = repr(snapshot(world.db))
    for token in world.tokens.values():
        assert token not in everything
        assert token[4:] not in everything
    if world.backend == "sqlite":
        # Nowhere in the database file either (free pages and journals included).
        database_file = Path(world.url.removeprefix("sqlite:///"))
        raw = b"".join(path.read_bytes() for path in database_file.parent.glob(
            database_file.name + "*"))
        assert raw and hashlib.sha256(world.tokens["alice"].encode()).hexdigest().encode() in raw
        for token in world.tokens.values():
            assert token.encode() not in raw and token[4:].encode() not in raw


def test_users_add_prints_the_token_once_and_list_never(
        world: World, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    use_database(monkeypatch, world.url, tmp_path)
    code, out, err = cli(capsys, "users", "add", "carol")
    assert code == 0, err
    token = out.strip()
    assert out == token + "\n" and token.startswith("brt_")
    assert "shown once" in err and token not in err
    try:
        assert world.client.get("/api/me", headers={"Authorization": f"Bearer {token}"}
                                ).json() == {"name": "carol", "admin": False,
                                             "signed_in_via": "bearer"}
        stored = token_hash(token)
        with world.db.engine.connect() as connection:
            assert connection.execute(sa.select(users.c.token_hash).where(
                users.c.name == "carol")).scalar_one() == stored
        code, out, err = cli(capsys, "users", "list")
        assert code == 0, err
        assert "carol" in out and "alice" in out and "root" in out
        for secret in (token, token[4:], stored, *world.tokens.values()):
            assert secret not in out + err
        code, out, err = cli(capsys, "users", "add", "CAROL")
        assert code != 0 and "already exists" in err and "brt_" not in out + err
    finally:
        code, _, err = cli(capsys, "users", "remove", "carol")
        assert code == 0, err
    # A removed user's token stops working at once.
    error_of(world.client.get("/api/me", headers={"Authorization": f"Bearer {token}"}), 401)
    assert cli(capsys, "users", "remove", "carol")[0] != 0


# --- Open access on loopback, and binding beyond it -------------------------------------------


@pytest.fixture
def empty_services(pipeline: Pipeline, tmp_path: Path, database_url: str) -> Services:
    """Services on an upgraded database with the demo data and no users."""
    seed_dataset(pipeline, demo_dataset())
    return Services(settings_for(database_url, tmp_path), pipeline)


def test_open_to_the_local_user_until_the_first_user_is_added(empty_services: Services) -> None:
    db = empty_services.db
    client = TestClient(create_app(empty_services), raise_server_exceptions=False)
    local = getpass.getuser()
    assert client.get("/api/me").json() == {"name": local, "admin": True,
                                            "signed_in_via": "open"}
    assert client.get("/api/conversations").json()["total"] == 9
    candidate = eligible(demo_dataset())[0].conversation_id
    body = {"conversation_ids": [candidate], "new_file_name": "Local file"}
    # Open access is a browser's ambient credential: state changes still need the CSRF token.
    before = snapshot(db)
    for path in ("/api/requests", "/api/selections/validate"):
        assert "CSRF" in error_of(client.post(path, json=body), 403)["message"]
    error_of(client.post("/api/requests", json=body, headers={"X-CSRF-Token": "made-up"}), 403)
    assert snapshot(db) == before
    csrf = csrf_of(client)
    submitted = client.post("/api/requests", json=body, headers={"X-CSRF-Token": csrf})
    assert submitted.status_code == 202, submitted.text
    assert submitted.json()["requested_by"] == local
    stored = db.get_request(submitted.json()["id"])
    assert stored is not None and stored.requested_by == local

    # The first user closes the running console at once.
    _, token = add_user(db, "first", admin=True)
    before = snapshot(db)
    response = client.get("/api/me")
    error_of(response, 401)
    assert response.headers["www-authenticate"] == "Bearer"
    error_of(client.post("/api/requests", json={**body, "new_file_name": "Too late"},
                         headers={"X-CSRF-Token": csrf}), 401)
    assert snapshot(db) == before
    assert client.get("/api/me", headers={"Authorization": f"Bearer {token}"}).json()[
        "name"] == "first"
    # Pages send a browser to sign in.
    page = client.get("/conversations", follow_redirects=False)
    assert page.status_code == 303 and page.headers["location"].startswith("/sign-in")


def test_beyond_loopback_users_are_required(empty_services: Services) -> None:
    for host in ("0.0.0.0", "::", "192.0.2.10", "console.example"):
        with pytest.raises(UsageError, match="no user is defined.*brightrun users add"):
            create_app(empty_services, host=host)
    for host in ("127.0.0.1", "::1", "localhost", "127.0.0.2"):
        assert TestClient(create_app(empty_services, host=host)).get(
            "/api/me").json()["signed_in_via"] == "open"
    _, token = add_user(empty_services.db, "operator")
    client = TestClient(create_app(empty_services, host="0.0.0.0"),
                        raise_server_exceptions=False)
    error_of(client.get("/api/me"), 401)
    assert client.get("/api/me", headers={"Authorization": f"Bearer {token}"}).json() == {
        "name": "operator", "admin": False, "signed_in_via": "bearer"}
    # Removing every user later never opens a console that listens beyond this machine.
    assert empty_services.db.remove_user("operator")
    error_of(client.get("/api/me"), 401)


def test_the_console_command_refuses_to_listen_beyond_loopback_without_users(
        database_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    import uvicorn

    served: list[tuple[Any, str, int]] = []
    monkeypatch.setattr(uvicorn, "run", lambda app, host, port, **_: served.append(
        (app, host, port)))
    use_database(monkeypatch, database_url, tmp_path)
    code, out, err = cli(capsys, "console", "--host", "0.0.0.0", "--port", "8123")
    assert code != 0
    assert "0.0.0.0" in err and "brightrun users add" in err
    assert "Traceback" not in out + err
    assert served == []
    # On loopback it serves, open to this machine's user.
    code, out, err = cli(capsys, "console", "--port", "8124")
    assert code == 0, err
    assert [(host, port) for _, host, port in served] == [("127.0.0.1", 8124)]
    assert "open to this machine's user" in err
    # With a user it serves beyond loopback, sign-in required.
    assert cli(capsys, "users", "add", "operator", "--admin")[0] == 0
    code, out, err = cli(capsys, "console", "--host", "0.0.0.0", "--port", "8125")
    assert code == 0, err
    assert served[-1][1:] == ("0.0.0.0", 8125) and "sign-in required" in err
    error_of(TestClient(served[-1][0], raise_server_exceptions=False).get("/api/me"), 401)


# --- Retrying a failed request: 403, 404 and 409 ----------------------------------------------


def test_retry_a_failed_request(empty_services: Services) -> None:
    pipeline, db = empty_services.pipeline, empty_services.db
    tokens = {user: add_user(db, user, admin=user == "root")[1]
              for user in ("alice", "bob", "root")}
    client = TestClient(create_app(empty_services), raise_server_exceptions=False)

    def call(method: str, path: str, user: str, **kwargs: Any) -> httpx.Response:
        return client.request(method, path, headers={"Authorization": f"Bearer {tokens[user]}"},
                              **kwargs)

    chosen = eligible(demo_dataset())
    # A source that is not JSON any more fails the build (not a rule: the request is valid).
    source = str(chosen[0].row["enriched_file_path"])
    pipeline.store.put_bytes(pipeline.source_bucket, source, b"not json", replace=True)
    submitted = call("POST", "/api/requests", "alice", json={
        "conversation_ids": [chosen[0].conversation_id], "new_file_name": "Will fail"})
    assert submitted.status_code == 202, submitted.text
    request_id = submitted.json()["id"]
    assert pipeline.claim(request_id) is not None
    with pytest.raises(ProcessingFailed):
        pipeline.run_request(request_id, "run-fails")
    failed = call("GET", f"/api/requests/{request_id}", "bob").json()
    assert (failed["status"], failed["finished"], failed["attempts"]) == ("failed", True, 1)
    assert chosen[0].conversation_id in failed["error"]["conversations"]
    waiting = call("POST", "/api/requests", "alice", json={
        "conversation_ids": [chosen[1].conversation_id], "new_file_name": "Waits"}).json()

    before = snapshot(db)
    error = error_of(call("POST", f"/api/requests/{request_id}/retry", "bob"), 403)
    assert "alice" in error["message"]
    error_of(call("POST", f"/api/requests/{uuid.uuid4()}/retry", "root"), 404)
    error_of(call("POST", "/api/requests/not-a-request/retry", "root"), 404)
    conflict = error_of(call("POST", f"/api/requests/{waiting['id']}/retry", "alice"), 409)
    assert "only failed requests can be retried" in conflict["message"]
    cookie = TestClient(client.app, raise_server_exceptions=False,
                        cookies={"brightrun_token": tokens["alice"]})
    error_of(cookie.post(f"/api/requests/{request_id}/retry"), 403)
    error_of(client.post(f"/api/requests/{request_id}/retry"), 401)
    assert snapshot(db) == before

    retried = call("POST", f"/api/requests/{request_id}/retry", "alice")
    assert retried.status_code == 200, retried.text
    assert (retried.json()["id"], retried.json()["status"]) == (request_id, "pending")
    stored = db.get_request(request_id)
    assert stored is not None and stored.status == "pending"
    error_of(call("POST", f"/api/requests/{request_id}/retry", "alice"), 409)
    # An admin may retry anyone's failed request.
    assert pipeline.claim(request_id) is not None
    with pytest.raises(ProcessingFailed):
        pipeline.run_request(request_id, "run-fails-again")
    again = call("POST", f"/api/requests/{request_id}/retry", "root")
    assert again.status_code == 200 and again.json()["status"] == "pending"


# --- Near-duplicates: a direct submission answers with the check's warnings ------------------


def test_a_direct_submission_names_its_near_duplicates_and_is_stored(
        empty_services: Services) -> None:
    pipeline, db = empty_services.pipeline, empty_services.db
    _, token = add_user(db, "alice")
    auth = {"Authorization": f"Bearer {token}"}
    client = TestClient(create_app(empty_services), raise_server_exceptions=False)
    chosen = eligible(demo_dataset())
    file_id = publish(pipeline, chosen[:2], "alice",
                      new_file_name="Warns on repeats").training_file_id
    copy = planted(chosen[1], "console submit")
    seed_conversations(pipeline, [copy])
    body = {"conversation_ids": [copy.conversation_id, chosen[3].conversation_id],
            "training_file": file_id}
    check = client.post("/api/selections/validate", json=body, headers=auth).json()

    response = client.post("/api/requests", json=body, headers=auth)

    assert response.status_code == 202, response.text
    view = response.json()
    assert (view["status"], view["conversation_count"]) == ("pending", 2)
    assert view["warnings"] == check["warnings"]
    assert list(view["warnings"]) == [copy.conversation_id]
    assert re.fullmatch(
        rf"nearly identical to {chosen[1].conversation_id} \(Jaccard ≈ 0\.\d\d\), already in "
        r"training file 'Warns on repeats' \(added in version 1\)",
        view["warnings"][copy.conversation_id])
    stored = db.get_request(view["id"])
    assert stored is not None and stored.status == "pending"
    assert stored.conversation_ids == body["conversation_ids"]
    # Not stored: following the request shows no warnings field.
    del view["warnings"]
    assert client.get(f"/api/requests/{view['id']}", headers=auth).json() == view
    # Within one request, for a new file: the later conversation names the earlier one.
    twin = planted(chosen[0], "console twin")
    seed_conversations(pipeline, [twin])
    fresh = client.post("/api/requests", headers=auth, json={
        "conversation_ids": [chosen[0].conversation_id, twin.conversation_id],
        "new_file_name": "Fresh with a repeat"})
    assert fresh.status_code == 202, fresh.text
    assert list(fresh.json()["warnings"]) == [twin.conversation_id]
    assert re.fullmatch(rf"nearly identical to {chosen[0].conversation_id} "
                        r"\(Jaccard ≈ 0\.\d\d\), earlier in this request",
                        fresh.json()["warnings"][twin.conversation_id])
    # The warned request runs as any other.
    assert pipeline.claim(view["id"]) is not None
    assert pipeline.run_request(view["id"], "run-warned").conversation_count == 4

    # A file that blocks refuses the same selection in the one error shape, storing nothing.
    assert db.configure_file(file_id, near_duplicates="block")
    other = planted(chosen[0], "console blocked")
    seed_conversations(pipeline, [other])
    before = snapshot(db)
    error = error_of(client.post("/api/requests", headers=auth, json={
        "conversation_ids": [other.conversation_id], "training_file": file_id}), 422)
    assert list(error["conversations"]) == [other.conversation_id]
    assert error["conversations"][other.conversation_id].startswith(
        f"nearly identical to {chosen[0].conversation_id} (Jaccard ≈ 0.")
    assert snapshot(db) == before

    # The submission's answer documents the field.
    document = client.get("/api/openapi.json", headers=auth).json()
    answer = document["paths"]["/api/requests"]["post"]["responses"]["202"]
    schema = answer["content"]["application/json"]["schema"]["$ref"].rsplit("/", 1)[-1]
    warnings = document["components"]["schemas"][schema]["properties"]["warnings"]
    assert "near-duplicates" in warnings["description"]


# --- Downloads from S3: a presigned redirect --------------------------------------------------


def test_s3_downloads_redirect_to_a_presigned_url(
        make_pipeline: Any, make_s3_client: Any, bucket_name: str, tmp_path: Path,
        database_url: str) -> None:
    from brightrun_pipeline.s3_store import S3ObjectStore

    pipeline = make_pipeline(S3ObjectStore(make_s3_client()),
                             source_bucket=f"{bucket_name}-src", training_bucket=bucket_name)
    dataset = demo_dataset()
    seed_dataset(pipeline, dataset)
    chosen = eligible(dataset)
    v1 = publish(pipeline, chosen[:2], "alice", new_file_name='S3 "file" / ü')
    v2 = publish(pipeline, [chosen[2]], "alice", training_file=v1.training_file_id)
    services = Services(settings_for(database_url, tmp_path), pipeline)
    _, token = add_user(pipeline.db, "viewer")
    client = TestClient(create_app(services), raise_server_exceptions=False,
                        follow_redirects=False, headers={"Authorization": f"Bearer {token}"})
    for record, params in ((v2, {}), (v1, {"version": 1})):
        for fmt, key, digest, suffix in (
                ("json", record.json_key, record.json_sha256, ".json"),
                ("jsonl", record.jsonl_key, record.jsonl_sha256, ".jsonl"),
                ("manifest", record.manifest_key, record.manifest_sha256, ".manifest.json")):
            response = client.get(f"/api/files/{record.training_file_id}/download",
                                  params={"format": fmt, **params})
            assert response.status_code == 307, response.text
            url = httpx.URL(response.headers["location"])
            assert url.path == f"/{bucket_name}/{key}"
            assert "Signature" in str(url) or "X-Amz-Signature" in str(url)
            # Short-lived: the link expires within five minutes.
            expires = url.params.get("X-Amz-Expires")
            assert expires is None or int(expires) <= 300
            fetched = httpx.get(str(url))
            assert fetched.status_code == 200
            assert sha256(fetched.content) == digest
            assert fetched.content == pipeline.store.get_bytes(bucket_name, key)
            assert fetched.headers["content-disposition"] == (
                f'attachment; filename="S3-file-v{record.version}{suffix}"')
    # Without a valid token there is no link at all.
    anonymous = TestClient(client.app, raise_server_exceptions=False, follow_redirects=False)
    response = anonymous.get(f"/api/files/{v1.training_file_id}/download")
    error_of(response, 401)
    assert "location" not in response.headers


# --- The OpenAPI document ---------------------------------------------------------------------

API_ROUTES = {
    "/api/me": {"get"},
    "/api/conversations": {"get"},
    "/api/conversations/{conversation_id}/lineage": {"get"},
    "/api/choices": {"get"},
    "/api/batches": {"get"},
    "/api/batches/{batch_id}/eligible": {"get"},
    "/api/files": {"get"},
    "/api/files/{file_ref}": {"get"},
    "/api/files/{file_ref}/versions": {"get"},
    "/api/files/{file_ref}/lineage": {"get"},
    "/api/files/{file_ref}/report": {"get"},
    "/api/files/{file_ref}/report/plots/{name}.png": {"get"},
    "/api/files/{file_ref}/diff": {"get"},
    "/api/files/{file_ref}/download": {"get"},
    "/api/selections/validate": {"post"},
    "/api/requests": {"post"},
    "/api/requests/{request_id}": {"get"},
    "/api/requests/{request_id}/retry": {"post"},
}


def test_openapi_lists_every_api_route(world: World) -> None:
    response = world.get("/api/openapi.json")
    assert response.status_code == 200
    document = orjson.loads(response.content)
    assert document["openapi"].startswith("3.")
    paths = {path: set(operations) for path, operations in document["paths"].items()}
    assert paths == API_ROUTES
    # And every /api route the app's routers define is in it (no undocumented endpoint), while
    # no page route hides under /api/.
    served: dict[str, set[str]] = {}
    for route in api.router.routes:
        served.setdefault(route.path, set()).update(m.lower() for m in route.methods)
    assert served == API_ROUTES
    assert not [r.path for r in pages.router.routes if r.path.startswith("/api")]
    # The query parameters of the listing are documented with their limits.
    listing = document["paths"]["/api/conversations"]["get"]["parameters"]
    names = {p["name"] for p in listing}
    assert {"batch_id", "status", "persona", "arc", "topic", "tier", "eligible", "q", "file",
            "sort", "desc", "page", "page_size"} <= names
    # openapi-spec-validator comes with moto[server] (a dev dependency).
    from openapi_spec_validator import validate

    validate(document)


# --- Faults inside the server: still the one shape, never a stack trace -----------------------


def test_an_unexpected_fault_answers_500_in_the_error_shape(
        world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    from brightrun_pipeline import queries

    def broken(*_: Any, **__: Any) -> Any:
        raise RuntimeError("connection to db-internal:5432 lost; secret=hunter2")

    monkeypatch.setattr(queries, "list_batches", broken)
    response = world.get("/api/batches")
    error = error_of(response, 500)
    assert "hunter2" not in response.text and "db-internal" not in response.text
    assert "RuntimeError" not in response.text
    assert error["conversations"] == {}


def test_a_missing_published_object_is_an_error_not_a_truncated_download(
        empty_services: Services) -> None:
    pipeline = empty_services.pipeline
    chosen = eligible(demo_dataset())
    record = publish(pipeline, chosen[:2], "keeper", new_file_name="Lost objects")
    _, token = add_user(pipeline.db, "viewer")
    client = TestClient(create_app(empty_services), raise_server_exceptions=False,
                        headers={"Authorization": f"Bearer {token}"})
    assert client.get(f"/api/files/{record.training_file_id}/download",
                      params={"format": "jsonl"}).status_code == 200
    root = empty_services.store.root  # type: ignore[attr-defined]
    (root / TRAINING_BUCKET / record.jsonl_key).unlink()
    response = client.get(f"/api/files/{record.training_file_id}/download",
                          params={"format": "jsonl"})
    error = error_of(response, 500)
    assert "content-disposition" not in response.headers
    assert "missing" in error["message"]


def test_the_icon_is_served_without_signing_in(world: World) -> None:
    for path in ("/favicon.ico", "/static/favicon.svg"):
        response = world.client.get(path)
        assert response.status_code == 200, path
        assert response.headers["content-type"].startswith("image/svg+xml")
        assert response.content.startswith(b"<svg")
    page = world.get("/conversations")
    assert b'rel="icon"' in page.content
