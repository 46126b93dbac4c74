"""The database layer on SQLite and PostgreSQL: schema, Batch ID, catalog, requests, publication."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import orjson
import pytest
import sqlalchemy as sa
from contract_oracle import check_version
from seed import (
    claimed_request,
    create_file,
    demo_dataset,
    eligible,
    insert_conversations,
    is_eligible,
    oracle_input,
    seed_dataset,
    version_objects,
)

from brightrun_pipeline.db.repository import MIGRATIONS, BuildClaim, Database
from brightrun_pipeline.db.schema import batch_items, batch_jobs, conversations
from brightrun_pipeline.demo_data import DemoConversation
from brightrun_pipeline.errors import RequestRejected, StaleVersion
from brightrun_pipeline.models import SelectionRequest
from brightrun_pipeline.service import Pipeline, new_file_id, utc_now
from brightrun_pipeline.storage import LocalObjectStore

OWNED = {"training_files", "training_file_versions", "training_file_conversations",
         "selection_requests"}
SOURCES = {"conversations", "batch_jobs", "batch_items"}

BATCH_X = "4c6f3a52-0000-4000-8000-00000000000a"
BATCH_Y = "4c6f3a52-0000-4000-8000-00000000000b"


def conversation_row(conversation_id: str, **values: object) -> dict[str, object]:
    """A `conversations` row that may go into a training file unless `values` say otherwise."""
    row: dict[str, object] = {
        "id": str(uuid.uuid4()),
        "conversation_id": conversation_id,
        "enrichment_status": "completed",
        "enriched_file_path": f"user/{conversation_id}/enriched.json",
        "created_at": datetime(2025, 11, 1, tzinfo=UTC),
        "updated_at": datetime(2025, 11, 1, tzinfo=UTC),
    }
    row.update(values)
    return row


def upgraded(make_database: Callable[[str], Database], url: str) -> Database:
    database = make_database(url)
    database.upgrade()
    return database


# --- Schema --------------------------------------------------------------------------------


def migrations_head() -> str:
    from alembic.config import Config
    from alembic.script import ScriptDirectory

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    head = ScriptDirectory.from_config(config).get_current_head()
    assert head is not None
    return head


def test_upgrade_is_idempotent(database_url: str,
                               make_database: Callable[[str], Database]) -> None:
    database = upgraded(make_database, database_url)
    cid = str(uuid.uuid4())
    with database.engine.begin() as connection:
        connection.execute(sa.insert(conversations).values(**conversation_row(cid)))

    database.upgrade()
    upgraded(make_database, database_url)

    inspector = sa.inspect(database.engine)
    assert set(inspector.get_table_names()) >= OWNED | SOURCES
    assert "conversation_catalog" in inspector.get_view_names()
    with database.engine.connect() as connection:
        versions = connection.execute(sa.text("SELECT version_num FROM brightrun_schema_version"))
        # One head (a fork in the migrations fails here), and the database is at it.
        assert versions.all() == [(migrations_head(),)]
    assert [row.conversation_id for row in database.list_conversations()] == [cid]


UPSTREAM_DDL = {
    "postgresql": [
        """CREATE TABLE batch_jobs (id uuid PRIMARY KEY, name text, status text NOT NULL,
           tier text, total_items integer NOT NULL DEFAULT 0, created_at timestamptz
           DEFAULT now(), upstream_note text)""",
        """CREATE TABLE batch_items (id uuid PRIMARY KEY, batch_job_id uuid NOT NULL
           REFERENCES batch_jobs(id), conversation_id uuid, status text NOT NULL,
           created_at timestamptz DEFAULT now())""",
        """CREATE TABLE conversations (id uuid PRIMARY KEY, conversation_id uuid NOT NULL UNIQUE,
           title text, persona_key text, emotional_arc_key text, topic_key text, tier text,
           quality_score numeric(3,2), empathy_score numeric(3,2), clarity_score numeric(3,2),
           appropriateness_score numeric(3,2), brand_voice_alignment numeric(3,2),
           enrichment_status text NOT NULL, enriched_file_path text, created_by uuid,
           created_at timestamptz DEFAULT now(), updated_at timestamptz DEFAULT now(),
           upstream_only jsonb)""",
    ],
    "sqlite": [
        """CREATE TABLE batch_jobs (id TEXT PRIMARY KEY, name TEXT, status TEXT NOT NULL,
           tier TEXT, total_items INTEGER NOT NULL DEFAULT 0, created_at TEXT
           DEFAULT CURRENT_TIMESTAMP, upstream_note TEXT)""",
        """CREATE TABLE batch_items (id TEXT PRIMARY KEY, batch_job_id TEXT NOT NULL
           REFERENCES batch_jobs(id), conversation_id TEXT, status TEXT NOT NULL,
           created_at TEXT DEFAULT CURRENT_TIMESTAMP)""",
        """CREATE TABLE conversations (id TEXT PRIMARY KEY, conversation_id TEXT NOT NULL UNIQUE,
           title TEXT, persona_key TEXT, emotional_arc_key TEXT, topic_key TEXT, tier TEXT,
           quality_score NUMERIC, empathy_score NUMERIC, clarity_score NUMERIC,
           appropriateness_score NUMERIC, brand_voice_alignment NUMERIC,
           enrichment_status TEXT NOT NULL, enriched_file_path TEXT, created_by TEXT,
           created_at TEXT DEFAULT CURRENT_TIMESTAMP, updated_at TEXT DEFAULT CURRENT_TIMESTAMP,
           upstream_only TEXT)""",
    ],
}


def test_existing_source_tables_are_left_alone(
        database_url: str, make_database: Callable[[str], Database]) -> None:
    database = make_database(database_url)
    cid = "8e4bd1a4-6c2a-4f55-9d0e-3f1f7c1b9a01"
    with database.engine.begin() as connection:
        for statement in UPSTREAM_DDL[database.engine.dialect.name]:
            connection.execute(sa.text(statement))
        connection.execute(sa.text(
            "INSERT INTO batch_jobs (id, name, status, upstream_note) "
            f"VALUES ('{BATCH_X}', 'October', 'completed', 'kept')"))
        connection.execute(sa.text(
            "INSERT INTO conversations (id, conversation_id, quality_score, enrichment_status, "
            "enriched_file_path, created_by, upstream_only) VALUES "
            f"('a0a0a0a0-0000-4000-8000-000000000001', '{cid}', 3.75, 'completed', "
            f"'u/{cid}/enriched.json', '5d2e8f7a-1b3c-4d5e-8f90-a1b2c3d4e5f6', "
            "'{\"legacy\": true}')"))
        connection.execute(sa.text(
            "INSERT INTO batch_items (id, batch_job_id, conversation_id, status) VALUES "
            f"('b0b0b0b0-0000-4000-8000-000000000001', '{BATCH_X}', '{cid}', 'completed')"))

    database.upgrade()
    database.upgrade()

    inspector = sa.inspect(database.engine)
    assert "upstream_only" in {c["name"] for c in inspector.get_columns("conversations")}
    assert "upstream_note" in {c["name"] for c in inspector.get_columns("batch_jobs")}
    assert "ix_batch_items_conversation_created" in {
        ix["name"] for ix in inspector.get_indexes("batch_items")}
    with database.engine.connect() as connection:
        assert connection.execute(sa.text(
            "SELECT upstream_only FROM conversations")).scalar_one() in (
            {"legacy": True}, '{"legacy": true}')
        assert connection.execute(sa.text(
            "SELECT upstream_note FROM batch_jobs")).scalar_one() == "kept"
    (row,) = database.list_conversations()
    assert (row.conversation_id, row.batch_id, row.quality_score) == (cid, BATCH_X, 3.75)
    assert row.enriched_file_path == f"u/{cid}/enriched.json"
    assert row.created_by == "5d2e8f7a-1b3c-4d5e-8f90-a1b2c3d4e5f6"
    assert isinstance(row.created_at, datetime)
    assert row.created_at.utcoffset() == timedelta(0)


def test_sqlite_stores_uuids_timestamps_and_json_as_text(
        sqlite_url: str, make_database: Callable[[str], Database]) -> None:
    database = upgraded(make_database, sqlite_url)
    cid = "A99D82EF-9EA9-44A7-A116-40ACE1091BC5"
    created = datetime(2025, 11, 1, 2, 0, 35, tzinfo=timezone(timedelta(hours=2)))
    with database.engine.begin() as connection:
        connection.execute(sa.insert(conversations).values(
            **conversation_row(cid, created_at=created)))
    database.insert_request(SelectionRequest(id="r-1", new_file_name="Text file",
                                             conversation_ids=[cid.lower()]),
                            datetime(2025, 11, 2, 9, 0, tzinfo=UTC))

    with database.engine.connect() as connection:
        stored = connection.execute(sa.text(
            "SELECT conversation_id, typeof(conversation_id), created_at, typeof(created_at) "
            "FROM conversations")).one()
        request = connection.execute(sa.text(
            "SELECT conversation_ids, typeof(conversation_ids), created_at "
            "FROM selection_requests")).one()

    assert stored[0] == "a99d82ef-9ea9-44a7-a116-40ace1091bc5"
    assert stored[1] == "text"
    assert stored[2] == "2025-11-01T00:00:35.000000+00:00"
    assert stored[3] == "text"
    assert orjson.loads(request[0]) == ["a99d82ef-9ea9-44a7-a116-40ace1091bc5"]
    assert request[1] == "text"
    assert request[2] == "2025-11-02T09:00:00.000000+00:00"


def test_postgresql_stores_native_types(postgres_url: str,
                                        make_database: Callable[[str], Database]) -> None:
    database = upgraded(make_database, postgres_url)
    wanted = {
        ("conversations", "conversation_id"): "uuid",
        ("conversations", "created_at"): "timestamp with time zone",
        ("batch_items", "batch_job_id"): "uuid",
        ("training_files", "consultant_profile"): "json",
        ("training_file_versions", "created_at"): "timestamp with time zone",
        ("selection_requests", "conversation_ids"): "jsonb",
        ("selection_requests", "error"): "jsonb",
        ("selection_requests", "training_file_id"): "uuid",
    }
    with database.engine.connect() as connection:
        found = {(row.table_name, row.column_name): row.data_type for row in connection.execute(
            sa.text("SELECT table_name, column_name, data_type FROM information_schema.columns "
                    "WHERE table_schema = 'public'"))}
    assert {column: found.get(column) for column in wanted} == wanted


@pytest.mark.parametrize("written", [
    "2025-11-01T00:00:35Z",
    "2025-11-01 00:00:35",
    "2025-11-01T00:00:35+00:00",
    "2025-11-01T02:00:35+02:00",
    "2025-10-31T19:00:35-05:00",
    "2025-11-01T00:00:35.000000+00:00",
])
def test_timestamps_written_with_plain_sql_read_back_as_aware_utc(
        database_url: str, make_database: Callable[[str], Database], written: str) -> None:
    database = upgraded(make_database, database_url)
    cid = str(uuid.uuid4())
    with database.engine.begin() as connection:
        connection.execute(sa.text(
            "INSERT INTO conversations (id, conversation_id, enrichment_status, created_at, "
            "updated_at) VALUES (:id, :cid, 'completed', :created, :updated)"),
            {"id": str(uuid.uuid4()), "cid": cid, "created": written, "updated": written})

    row = database.conversations_by_id([cid])[cid]

    expected = datetime(2025, 11, 1, 0, 0, 35, tzinfo=UTC)
    for moment in (row.created_at, row.updated_at):
        assert moment == expected
        assert moment is not None and moment.utcoffset() == timedelta(0)


def test_server_defaults_give_aware_timestamps(
        database_url: str, make_database: Callable[[str], Database]) -> None:
    database = upgraded(make_database, database_url)
    cid = str(uuid.uuid4())
    with database.engine.begin() as connection:
        connection.execute(sa.text(
            "INSERT INTO conversations (id, conversation_id, enrichment_status) "
            "VALUES (:id, :cid, 'not_started')"), {"id": str(uuid.uuid4()), "cid": cid})

    row = database.conversations_by_id([cid])[cid]

    assert row.created_at is not None and row.created_at.utcoffset() == timedelta(0)
    assert abs(row.created_at - datetime.now(UTC)) < timedelta(minutes=5)


# --- Batch ID and the conversation catalog ------------------------------------------------


def test_batch_id_is_the_batch_of_the_earliest_item(
        database_url: str, make_database: Callable[[str], Database]) -> None:
    database = upgraded(make_database, database_url)
    two_batches, one_batch, tied, outside = (str(uuid.uuid4()) for _ in range(4))
    plus_two = timezone(timedelta(hours=2))
    with database.engine.begin() as connection:
        connection.execute(sa.insert(batch_jobs), [
            {"id": BATCH_X, "name": "X", "status": "completed", "total_items": 3},
            {"id": BATCH_Y, "name": "Y", "status": "completed", "total_items": 2}])
        insert_conversations(connection, [
            DemoConversation(conversation_row(cid), None, None)
            for cid in (two_batches, one_batch, tied, outside)])
        connection.execute(sa.insert(batch_items), [
            # Inserted first, but later: 23:30 UTC on Oct 1.
            {"id": "00000000-0000-4000-8000-000000000001", "batch_job_id": BATCH_X,
             "conversation_id": two_batches, "status": "completed",
             "created_at": datetime(2025, 10, 1, 23, 30, tzinfo=UTC)},
            # Reads as Oct 2 in its own offset, yet it is 23:00 UTC on Oct 1: the earliest.
            {"id": "00000000-0000-4000-8000-000000000002", "batch_job_id": BATCH_Y,
             "conversation_id": two_batches, "status": "completed",
             "created_at": datetime(2025, 10, 2, 1, 0, tzinfo=plus_two)},
            {"id": "00000000-0000-4000-8000-000000000003", "batch_job_id": BATCH_X,
             "conversation_id": one_batch, "status": "completed",
             "created_at": datetime(2025, 10, 1, 8, 0, tzinfo=UTC)},
            {"id": "00000000-0000-4000-8000-000000000005", "batch_job_id": BATCH_X,
             "conversation_id": tied, "status": "completed",
             "created_at": datetime(2025, 10, 1, 9, 0, tzinfo=UTC)},
            {"id": "00000000-0000-4000-8000-000000000004", "batch_job_id": BATCH_Y,
             "conversation_id": tied, "status": "completed",
             "created_at": datetime(2025, 10, 1, 9, 0, tzinfo=UTC)},
            # A queued item has produced no conversation yet.
            {"id": "00000000-0000-4000-8000-000000000006", "batch_job_id": BATCH_X,
             "conversation_id": None, "status": "queued",
             "created_at": datetime(2025, 10, 1, 7, 0, tzinfo=UTC)},
        ])

    batch_of = {row.conversation_id: row.batch_id for row in database.list_conversations()}

    assert batch_of == {two_batches: BATCH_Y, one_batch: BATCH_X, tied: BATCH_Y,
                        outside: None}
    assert [r.conversation_id for r in database.list_conversations(batch_id=BATCH_X)] \
        == [one_batch]
    assert {r.conversation_id for r in database.list_conversations(batch_id=BATCH_Y.upper())} \
        == {two_batches, tied}
    assert database.conversations_by_id([two_batches])[two_batches].batch_id == BATCH_Y


@pytest.fixture
def seeded(pipeline: Pipeline) -> tuple[Database, list[DemoConversation]]:
    dataset = demo_dataset()
    seed_dataset(pipeline, dataset)
    return pipeline.db, dataset.conversations


def test_list_conversations_filters(seeded: tuple[Database, list[DemoConversation]]) -> None:
    database, rows = seeded
    batches = sorted({c.batch_id for c in rows if c.batch_id})

    def listed(**filters: object) -> set[str]:
        return {row.conversation_id for row in database.list_conversations(**filters)}

    assert {row.conversation_id: row.batch_id for row in database.list_conversations()} \
        == {c.conversation_id: c.batch_id for c in rows}
    for batch in batches:
        assert listed(batch_id=batch) == {c.conversation_id for c in rows if c.batch_id == batch}
    assert listed(batch_id=str(uuid.uuid4())) == set()
    for status in ("completed", "failed", "not_started"):
        assert listed(status=status) == {
            c.conversation_id for c in rows if c.row["enrichment_status"] == status}
    assert listed(eligible=True) == {c.conversation_id for c in rows if is_eligible(c)}
    assert listed(eligible=False) == {c.conversation_id for c in rows if not is_eligible(c)}
    assert listed(eligible=False, status="completed") == {
        c.conversation_id for c in rows
        if c.row["enrichment_status"] == "completed" and not is_eligible(c)}
    assert listed(batch_id=batches[0], eligible=True) == {
        c.conversation_id for c in rows if c.batch_id == batches[0] and is_eligible(c)}
    # The dataset must exercise every filter for this test to mean anything.
    assert listed(eligible=False, status="completed") and listed(status="failed")


def _nulls_last(value: object) -> tuple[bool, object]:
    return (value is None, value)


@pytest.mark.parametrize("descending", [False, True], ids=["ascending", "descending"])
@pytest.mark.parametrize("column", ["batch_id", "quality_score", "created_at"])
def test_list_conversations_sorts(seeded: tuple[Database, list[DemoConversation]],
                                  column: str, descending: bool) -> None:
    database, rows = seeded
    value_of = {c.conversation_id: (c.batch_id if column == "batch_id" else c.row[column])
                for c in rows}
    present = sorted((cid for cid in value_of if value_of[cid] is not None),
                     key=lambda cid: (value_of[cid], cid))
    if descending:
        # Ties stay in conversation-id order whichever way the column is sorted.
        present = sorted(present, key=lambda cid: value_of[cid], reverse=True)
    missing = sorted(cid for cid in value_of if value_of[cid] is None)

    listed = [row.conversation_id
              for row in database.list_conversations(sort=column, descending=descending)]

    assert listed == present + missing


def test_list_conversations_pages_and_refuses_unknown_sorts(
        seeded: tuple[Database, list[DemoConversation]]) -> None:
    database, _ = seeded
    everything = database.list_conversations(sort="quality_score", descending=True)
    page = database.list_conversations(sort="quality_score", descending=True, limit=3, offset=2)
    assert page == everything[2:5]
    with pytest.raises(ValueError, match="cannot sort by 'enriched_file_path; DROP'"):
        database.list_conversations(sort="enriched_file_path; DROP")


# --- Selection requests --------------------------------------------------------------------


def test_request_inserted_with_plain_sql_is_pending_and_claimable(
        seeded: tuple[Database, list[DemoConversation]], pipeline: Pipeline) -> None:
    database, rows = seeded
    cid = next(c.conversation_id for c in rows if is_eligible(c))
    with database.engine.begin() as connection:
        connection.execute(sa.text(
            "INSERT INTO selection_requests (id, new_file_name, conversation_ids) VALUES "
            f"('req-from-psql', 'From psql', '[\"{cid}\"]')"))
        kind = connection.execute(sa.text(
            "SELECT typeof(conversation_ids) FROM selection_requests"
            if database.engine.dialect.name == "sqlite" else
            "SELECT jsonb_typeof(conversation_ids) FROM selection_requests")).scalar_one()

    request = database.get_request("req-from-psql")

    assert kind == ("text" if database.engine.dialect.name == "sqlite" else "array")
    assert request is not None
    assert (request.status, request.conversation_ids, request.error, request.result_version) \
        == ("pending", [cid], None, None)
    assert request.created_at is not None and request.created_at.utcoffset() == timedelta(0)
    assert [r.id for r in database.list_requests(status="pending")] == ["req-from-psql"]

    claimed = pipeline.claim("req-from-psql")

    assert claimed is not None and [r.conversation_id for r in claimed.rows] == [cid]
    stored = database.get_request("req-from-psql")
    assert stored is not None
    assert (stored.status, stored.target_file_id) == ("queued", new_file_id("req-from-psql"))


@pytest.mark.parametrize(("stored", "message"), [
    ('{"ids": ["x"]}', "conversation_ids must be a JSON array"),
    ('"8e4bd1a4-6c2a-4f55-9d0e-3f1f7c1b9a01"', "conversation_ids must be a JSON array"),
    ("[]", "a request needs at least one conversation"),
    ("null", "conversation_ids must be a JSON array"),
])
def test_request_with_unusable_ids_is_rejected_on_claim(
        pipeline: Pipeline, stored: str, message: str) -> None:
    with pipeline.db.engine.begin() as connection:
        connection.execute(sa.text(
            "INSERT INTO selection_requests (id, new_file_name, conversation_ids) "
            f"VALUES ('bad-ids', 'Bad ids', '{stored}')"))

    assert pipeline.claim("bad-ids") is None

    request = pipeline.db.get_request("bad-ids")
    assert request is not None and request.status == "rejected"
    assert request.error is not None and message in request.error.message


def test_malformed_json_on_sqlite_is_read_back_and_rejected(
        sqlite_url: str, make_database: Callable[[str], Database], tmp_path: Path) -> None:
    database = upgraded(make_database, sqlite_url)
    with database.engine.begin() as connection:
        connection.execute(sa.text(
            "INSERT INTO selection_requests (id, new_file_name, conversation_ids, error) "
            "VALUES ('broken', 'Broken', '[\"8e4bd1a4-6c2a-4f55-9d0e-3f1f7c1b9a01\", ', "
            "'{not json')"))

    request = database.get_request("broken")

    assert request is not None
    assert request.conversation_ids == '["8e4bd1a4-6c2a-4f55-9d0e-3f1f7c1b9a01", '
    assert request.error is not None and request.error.message == "{not json"
    assert [r.id for r in database.list_requests(status="pending")] == ["broken"]
    pipeline = Pipeline(database, LocalObjectStore(tmp_path))
    assert pipeline.claim("broken") is None
    rejected = database.get_request("broken")
    assert rejected is not None and rejected.status == "rejected"
    assert rejected.error is not None
    assert rejected.error.message.startswith("conversation_ids must be a JSON array")


def test_transition_request_is_compare_and_set(
        database_url: str, make_database: Callable[[str], Database]) -> None:
    database = upgraded(make_database, database_url)
    first = datetime(2025, 12, 1, 9, 0, tzinfo=UTC)
    later = first + timedelta(minutes=5)
    database.insert_request(SelectionRequest(id="r-1", new_file_name="CAS",
                                             conversation_ids=[str(uuid.uuid4())]), first)

    assert database.transition_request("r-1", from_statuses=["pending"], to="queued", now=first)
    assert not database.transition_request("r-1", from_statuses=["pending"], to="queued",
                                           now=later)
    assert not database.transition_request("r-1", from_statuses=["pending"], to="rejected",
                                           now=later, error={"message": "late"})
    assert not database.transition_request("missing", from_statuses=["pending"], to="queued",
                                           now=later)
    request = database.get_request("r-1")
    assert request is not None
    assert (request.status, request.updated_at, request.error) == ("queued", first, None)

    assert database.transition_request("r-1", from_statuses=["queued"], to="running", now=later,
                                       dagster_run_id="run-7")
    request = database.get_request("r-1")
    assert request is not None
    assert (request.status, request.dagster_run_id, request.updated_at) \
        == ("running", "run-7", later)


def test_a_request_is_claimed_once(seeded: tuple[Database, list[DemoConversation]],
                                   pipeline: Pipeline) -> None:
    _, rows = seeded
    chosen = [c.conversation_id for c in rows if is_eligible(c)][:2]
    request = pipeline.submit(conversation_ids=chosen, new_file_name="Claimed once")

    assert pipeline.claim(request.id) is not None
    assert pipeline.claim(request.id) is None
    stored = pipeline.db.get_request(request.id)
    assert stored is not None and stored.status == "queued"


# --- Publication -----------------------------------------------------------------------------


def member_ids(database: Database, file_id: str) -> list[str]:
    return [m.conversation_id for m in database.iter_members(file_id)]


def test_racing_builds_publish_one_after_the_other(pipeline: Pipeline) -> None:
    dataset = demo_dataset()
    seed_dataset(pipeline, dataset)
    rows = eligible(dataset)
    database = pipeline.db
    tid = create_file(pipeline, rows[:2]).training_file_id
    winner = claimed_request(pipeline, rows[2:4], training_file=tid)
    loser = claimed_request(pipeline, rows[4:5], training_file=tid)
    winner_plan = pipeline.start(winner, "run-winner")
    loser_plan = pipeline.start(loser, "run-loser")
    assert winner_plan.spec.version == loser_plan.spec.version == 2

    winner_staged = pipeline.stage(winner_plan)
    assert winner_staged is not None and winner_staged.passed
    # While the winner holds version 2, no other build can reserve the file.
    assert database.acquire_build(tid, 2, owner="someone-else", now=utc_now(),
                                  ttl=30) is BuildClaim.BUSY
    pipeline.publish(winner_staged)

    # The loser was planned on version 1: it finds the file moved and builds on top of it.
    loser_staged = pipeline.stage(loser_plan)
    assert loser_staged is not None and loser_staged.plan.spec.version == 3
    record = pipeline.publish(loser_staged)
    assert record.version == 3
    assert [v.request_ids for v in database.list_versions(tid)] == [
        database.list_versions(tid)[0].request_ids, [winner], [loser]]
    check_version(
        *version_objects(pipeline, record), training_file_id=tid, file_name="Test file",
        description="test file", file_version=3, request_ids=[loser],
        conversations=[oracle_input(c, 1) for c in rows[:2]]
        + [oracle_input(c, 2) for c in rows[2:4]] + [oracle_input(rows[4], 3)])


def test_a_build_whose_lease_was_taken_over_cannot_publish(pipeline: Pipeline) -> None:
    dataset = demo_dataset()
    seed_dataset(pipeline, dataset)
    rows = eligible(dataset)
    database = pipeline.db
    tid = create_file(pipeline, rows[:2]).training_file_id
    request = claimed_request(pipeline, rows[2:4], training_file=tid)
    staged = pipeline.stage(pipeline.start(request, "run-slow"))
    assert staged is not None
    json_key = staged.built.json.key
    assert pipeline.store.stat(pipeline.training_bucket, json_key) is not None

    # The build stops renewing its lease (its process froze); later another build takes the
    # version over, clearing what the frozen one wrote there.
    later = utc_now() + timedelta(minutes=10)
    assert database.acquire_build(
        tid, 2, owner="taker", now=later, ttl=30,
        on_acquired=lambda: pipeline.store.delete(pipeline.training_bucket, json_key),
    ) is BuildClaim.ACQUIRED

    with pytest.raises(StaleVersion):
        pipeline.publish(staged)
    file = database.get_file(tid)
    assert file is not None and file.current_version == 1
    assert [v.version for v in database.list_versions(tid)] == [1]
    assert member_ids(database, tid) == [c.conversation_id for c in rows[:2]]
    stale = database.get_request(request)
    assert stale is not None and (stale.status, stale.result_version) == ("running", None)


def test_publication_is_all_or_nothing(pipeline: Pipeline) -> None:
    dataset = demo_dataset()
    seed_dataset(pipeline, dataset)
    rows = eligible(dataset)
    database = pipeline.db
    tid = create_file(pipeline, rows[:1]).training_file_id
    request_id = claimed_request(pipeline, rows[1:3], training_file=tid)
    staged = pipeline.stage(pipeline.start(request_id, "run-2"))
    assert staged is not None
    # An operator closes the request while its run is still building.
    assert database.transition_request(request_id, from_statuses=["running"], to="rejected",
                                       now=utc_now(), error={"message": "withdrawn"})

    with pytest.raises(StaleVersion):
        pipeline.publish(staged)

    assert [v.version for v in database.list_versions(tid)] == [1]
    file = database.get_file(tid)
    assert file is not None and file.current_version == 1
    assert member_ids(database, tid) == [rows[0].conversation_id]
    request = database.get_request(request_id)
    assert request is not None and (request.status, request.result_version) == ("rejected", None)


def test_file_names_are_unique_ignoring_case(pipeline: Pipeline) -> None:
    dataset = demo_dataset()
    seed_dataset(pipeline, dataset)
    rows = eligible(dataset)
    first = claimed_request(pipeline, rows[:1], new_file_name="Coaching Q4")
    second = claimed_request(pipeline, rows[1:2], new_file_name="  COACHING q4 ")
    first_plan, second_plan = pipeline.start(first, "run-a"), pipeline.start(second, "run-b")
    first_staged, second_staged = pipeline.stage(first_plan), pipeline.stage(second_plan)
    assert first_staged is not None and second_staged is not None
    pipeline.publish(first_staged)

    with pytest.raises(RequestRejected, match="already exists"):
        pipeline.publish(second_staged)

    assert [file.name for file, _ in pipeline.db.list_files()] == ["Coaching Q4"]
    assert pipeline.db.get_file(new_file_id(second)) is None
    assert pipeline.db.find_file("coaching q4") is not None
    with pytest.raises(RequestRejected, match="already exists"):
        pipeline.submit(conversation_ids=[rows[2].conversation_id], new_file_name="COACHING Q4")
