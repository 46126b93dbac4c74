"""Schema migrations: revision 0001 creates today what it always created, and later revisions
upgrade databases that hold data (on SQLite and PostgreSQL)."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from datetime import UTC, datetime

import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from alembic.script import ScriptDirectory

from brightrun_pipeline.db.repository import (
    MIGRATIONS,
    Database,
    NewFile,
    Publication,
    VersionRecord,
)
from brightrun_pipeline.members import MemberRecord

VERSION_TABLE = "brightrun_schema_version"
WIDENED = ("json_size", "jsonl_size", "json_body_start", "json_body_end")


def alembic_config() -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    return config


def head_revision() -> str:
    """The revision `Database.upgrade` brings a database to."""
    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    assert head is not None
    return head


def upgrade_to(database: Database, revision: str) -> None:
    """Run the migrations up to `revision` only, as `Database.upgrade` runs them to the head."""
    config = alembic_config()
    with database.engine.begin() as connection:
        config.attributes["connection"] = connection
        command.upgrade(config, revision)


def schema_version(database: Database) -> list[str]:
    with database.engine.connect() as connection:
        return list(connection.execute(sa.text(f"SELECT version_num FROM {VERSION_TABLE}"))
                    .scalars())


def describe(engine: sa.Engine) -> list[str]:
    """Every table's columns (declared type, nullability, server default), keys, constraints
    and indexes, and every view's columns and definition, as lines of text."""
    inspector = sa.inspect(engine)
    lines = []
    for table in sorted(set(inspector.get_table_names()) - {VERSION_TABLE}):
        lines.append(f"table {table}")
        for column in inspector.get_columns(table):
            line = f"  {column['name']} {column['type'].compile(dialect=engine.dialect)}"
            line += "" if column["nullable"] else " not null"
            line += "" if column.get("default") is None else f" default {column['default']}"
            lines.append(line)
        pk = inspector.get_pk_constraint(table)["constrained_columns"]
        keys = [f"  primary key ({', '.join(pk)})"]
        keys += [f"  foreign key ({', '.join(fk['constrained_columns'])}) references "
                 f"{fk['referred_table']} ({', '.join(fk['referred_columns'])})"
                 for fk in inspector.get_foreign_keys(table)]
        keys += [f"  unique {uq['name'] or '-'} ({', '.join(uq['column_names'])})"
                 for uq in inspector.get_unique_constraints(table)]
        # PostgreSQL also lists the index behind each unique constraint.
        keys += [f"  {'unique ' if ix['unique'] else ''}index {ix['name']} "
                 f"({', '.join(ix['column_names'])})"
                 for ix in inspector.get_indexes(table) if not ix.get("duplicates_constraint")]
        lines.extend(sorted(keys))
    for view in sorted(inspector.get_view_names()):
        lines.append(f"view {view}")
        lines.extend(f"  {column['name']}" for column in inspector.get_columns(view))
        lines.append(f"  as {' '.join(inspector.get_view_definition(view).split())}")
    return lines


# What revision 0001 created before its definitions were written out in the revision itself
# (inspected from a database the earlier code made), with what differs by backend in braces.
SCHEMA_0001 = """\
table batch_items
  id {uuid} not null
  batch_job_id {uuid} not null
  conversation_id {uuid}
  status TEXT not null default 'queued'{as_text}
  created_at {time}{now}
  foreign key (batch_job_id) references batch_jobs (id)
  index ix_batch_items_batch_job (batch_job_id)
  index ix_batch_items_conversation_created (conversation_id, created_at, id)
  primary key (id)
table batch_jobs
  id {uuid} not null
  name TEXT
  status TEXT not null default 'queued'{as_text}
  tier TEXT
  total_items INTEGER not null default {zero}
  created_at {time}{now}
  primary key (id)
table conversations
  id {uuid} not null
  conversation_id {uuid} not null
  title TEXT
  persona_key TEXT
  emotional_arc_key TEXT
  topic_key TEXT
  tier TEXT
  quality_score NUMERIC
  empathy_score NUMERIC
  clarity_score NUMERIC
  appropriateness_score NUMERIC
  brand_voice_alignment NUMERIC
  enrichment_status TEXT not null default 'not_started'{as_text}
  enriched_file_path TEXT
  created_by TEXT
  created_at {time}{now}
  updated_at {time}{now}
  index ix_conversations_updated_at (updated_at)
  primary key (id)
  unique {conversation_id_key} (conversation_id)
table selection_requests
  id TEXT not null
  training_file_id {uuid}
  new_file_name TEXT
  new_file_description TEXT
  conversation_ids {json} not null
  requested_by TEXT
  status VARCHAR(20) not null default 'pending'{as_varchar}
  error {json}
  result_version INTEGER
  dagster_run_id TEXT
  target_file_id {uuid}
  attempts INTEGER not null default {zero}
  created_at {time}{now}
  updated_at {time}{now}
  index ix_selection_requests_status_created (status, created_at)
  index ix_selection_requests_target (target_file_id)
  primary key (id)
table training_file_conversations
  id INTEGER not null{members_id}
  training_file_id {uuid} not null
  conversation_id {uuid} not null
  position INTEGER not null
  added_in_version INTEGER not null
  built_in_version INTEGER not null
  batch_id {uuid}
  source_key TEXT not null
  source_sha256 VARCHAR(64) not null
  source_updated_at {time}
  pair_count INTEGER not null
  trainable_pair_count INTEGER not null
  human_reviewed_count INTEGER not null
  quality_score {double}
  persona_key TEXT
  emotional_arc_key TEXT
  topic_key TEXT
  created_at {time} not null
  foreign key (training_file_id) references training_files (id)
  index ix_training_file_conversations_conversation (conversation_id)
  primary key (id)
  unique uq_training_file_conversation (training_file_id, conversation_id)
  unique uq_training_file_position (training_file_id, position)
table training_file_versions
  id INTEGER not null{versions_id}
  training_file_id {uuid} not null
  version INTEGER not null
  reason VARCHAR(40) not null
  json_key TEXT not null
  json_sha256 VARCHAR(64) not null
  json_size INTEGER not null
  jsonl_key TEXT not null
  jsonl_sha256 VARCHAR(64) not null
  jsonl_size INTEGER not null
  manifest_key TEXT not null
  manifest_sha256 VARCHAR(64) not null
  json_body_start INTEGER not null
  json_body_end INTEGER not null
  conversation_count INTEGER not null
  training_pair_count INTEGER not null
  trainable_pair_count INTEGER not null
  jsonl_line_count INTEGER not null
  human_reviewed_count INTEGER not null
  avg_quality_score {double}
  request_ids {json} not null
  dagster_run_id TEXT
  created_at {time} not null
  foreign key (training_file_id) references training_files (id)
  primary key (id)
  unique uq_training_file_versions_version (training_file_id, version)
table training_files
  id {uuid} not null
  name VARCHAR(120) not null
  name_key VARCHAR(480) not null
  description TEXT
  created_by TEXT
  created_at {time} not null
  updated_at {time} not null
  current_version INTEGER
  status VARCHAR(20) not null
  vertical TEXT
  consultant_profile {ordered_json}
  primary key (id)
  unique {name_key_key} (name_key)
view conversation_catalog
  id
  conversation_id
  title
  persona_key
  emotional_arc_key
  topic_key
  tier
  quality_score
  empathy_score
  clarity_score
  appropriateness_score
  brand_voice_alignment
  enrichment_status
  enriched_file_path
  created_by
  created_at
  updated_at
  batch_id
  as {view}
"""

BACKEND_0001 = {
    "sqlite": {
        "uuid": "VARCHAR(36)", "time": "VARCHAR(40)", "json": "TEXT", "ordered_json": "TEXT",
        "double": "FLOAT", "now": " default strftime('%Y-%m-%dT%H:%M:%f000+00:00', 'now')",
        "as_text": "", "as_varchar": "", "zero": "'0'", "versions_id": "", "members_id": "",
        "conversation_id_key": "-", "name_key_key": "-",
        "view": "CREATE VIEW conversation_catalog AS SELECT c.*, (SELECT bi.batch_job_id FROM "
                "batch_items bi WHERE bi.conversation_id = c.conversation_id ORDER BY "
                "julianday(bi.created_at), bi.id LIMIT 1) AS batch_id FROM conversations c",
    },
    "postgresql": {
        "uuid": "UUID", "time": "TIMESTAMP WITH TIME ZONE", "json": "JSONB",
        "ordered_json": "JSON", "double": "DOUBLE PRECISION", "now": " default CURRENT_TIMESTAMP",
        "as_text": "::text", "as_varchar": "::character varying", "zero": "0",
        "versions_id": " default nextval('training_file_versions_id_seq'::regclass)",
        "members_id": " default nextval('training_file_conversations_id_seq'::regclass)",
        "conversation_id_key": "conversations_conversation_id_key",
        "name_key_key": "training_files_name_key_key",
        "view": "SELECT c.id, c.conversation_id, c.title, c.persona_key, c.emotional_arc_key, "
                "c.topic_key, c.tier, c.quality_score, c.empathy_score, c.clarity_score, "
                "c.appropriateness_score, c.brand_voice_alignment, c.enrichment_status, "
                "c.enriched_file_path, c.created_by, c.created_at, c.updated_at, ( SELECT "
                "bi.batch_job_id FROM batch_items bi WHERE (bi.conversation_id = "
                "c.conversation_id) ORDER BY bi.created_at, bi.id LIMIT 1) AS batch_id FROM "
                "conversations c;",
    },
}


def test_revision_0001_creates_the_schema_it_always_did(
        database_url: str, make_database: Callable[[str], Database]) -> None:
    database = make_database(database_url)

    upgrade_to(database, "0001_initial")

    expected = SCHEMA_0001.format(**BACKEND_0001[database.engine.dialect.name]).splitlines()
    assert describe(database.engine) == expected
    assert schema_version(database) == ["0001_initial"]


def _column_types(database: Database, table: str) -> dict[str, str]:
    return {column["name"]: column["type"].compile(dialect=database.engine.dialect)
            for column in sa.inspect(database.engine).get_columns(table)}


FILE_ID = "6f1c2b9e-0000-4000-8000-000000000001"
CONVERSATION_ID = "6f1c2b9e-0000-4000-8000-0000000000c1"


def _fill_0001_database(database: Database) -> None:
    """A published version, its membership, its request and a source row, written with plain
    SQL into the tables as revision 0001 made them."""
    at = "2025-12-01T09:00:00+00:00"
    statements = [
        ("INSERT INTO conversations (id, conversation_id, enrichment_status, enriched_file_path)"
         " VALUES (:id, :cid, 'completed', 'u/c1/enriched.json')",
         {"id": str(uuid.uuid4()), "cid": CONVERSATION_ID}),
        ("INSERT INTO training_files (id, name, name_key, created_at, updated_at, "
         "current_version, status) VALUES (:id, 'Before', 'before', :at, :at, 1, 'ready')",
         {"id": FILE_ID, "at": at}),
        ("INSERT INTO training_file_versions (training_file_id, version, reason, json_key, "
         "json_sha256, json_size, jsonl_key, jsonl_sha256, jsonl_size, manifest_key, "
         "manifest_sha256, json_body_start, json_body_end, conversation_count, "
         "training_pair_count, trainable_pair_count, jsonl_line_count, human_reviewed_count, "
         "avg_quality_score, request_ids, dagster_run_id, created_at) VALUES (:id, 1, "
         "'request', :key || '/training.json', :sha, 2147483647, :key || '/training.jsonl', "
         ":sha, 1000, :key || '/manifest.json', :sha, 1200, 2147483000, 1, 4, 3, 3, 2, 4.25, "
         "'[\"req-1\"]', 'run-1', :at)",
         {"id": FILE_ID, "key": f"{FILE_ID}/v1", "sha": "ab" * 32, "at": at}),
        ("INSERT INTO training_file_conversations (training_file_id, conversation_id, position,"
         " added_in_version, built_in_version, source_key, source_sha256, pair_count, "
         "trainable_pair_count, human_reviewed_count, created_at) VALUES (:id, :cid, 0, 1, 1, "
         "'u/c1/enriched.json', :sha, 4, 3, 2, :at)",
         {"id": FILE_ID, "cid": CONVERSATION_ID, "sha": "cd" * 32, "at": at}),
        ("INSERT INTO selection_requests (id, new_file_name, conversation_ids, status, "
         "result_version, target_file_id) VALUES ('req-1', 'Before', :ids, 'succeeded', 1, :id)",
         {"ids": f'["{CONVERSATION_ID}"]', "id": FILE_ID}),
    ]
    with database.engine.begin() as connection:
        for statement, values in statements:
            connection.execute(sa.text(statement), values)


def test_a_0001_database_with_data_upgrades_to_the_head(
        database_url: str, make_database: Callable[[str], Database]) -> None:
    database = make_database(database_url)
    upgrade_to(database, "0001_initial")
    _fill_0001_database(database)
    assert {_column_types(database, "training_file_versions")[c] for c in WIDENED} == {"INTEGER"}

    database.upgrade()

    head = head_revision()
    assert schema_version(database) == [head]
    types = _column_types(database, "training_file_versions")
    assert {name: types[name] for name in WIDENED} == dict.fromkeys(WIDENED, "BIGINT")
    version = database.get_version(FILE_ID)
    assert version is not None
    assert (version.json_size, version.jsonl_size, version.json_body_start,
            version.json_body_end) == (2147483647, 1000, 1200, 2147483000)
    assert (version.request_ids, version.avg_quality_score, version.dagster_run_id) \
        == (["req-1"], 4.25, "run-1")
    assert [m.conversation_id for m in database.iter_members(FILE_ID)] == [CONVERSATION_ID]
    request = database.get_request("req-1")
    assert request is not None and (request.status, request.result_version) == ("succeeded", 1)
    assert [row.conversation_id for row in database.list_conversations()] == [CONVERSATION_ID]
    with database.engine.begin() as connection:
        connection.execute(sa.text(
            "UPDATE training_file_versions SET json_size = :size"), {"size": 2**40})
    assert database.get_version(FILE_ID).json_size == 2**40  # type: ignore[union-attr]

    database.upgrade()
    assert schema_version(database) == [head]


def test_a_version_above_2_gib_is_published_and_read_back(
        database_url: str, make_database: Callable[[str], Database]) -> None:
    database = make_database(database_url)
    database.upgrade()
    file_id = str(uuid.uuid4())
    now = datetime(2026, 1, 5, 8, 30, 15, 123456, tzinfo=UTC)
    key = f"{file_id}/v1"
    record = VersionRecord(
        training_file_id=file_id, version=1, reason="request",
        json_key=f"{key}/training.json", json_sha256="1" * 64, json_size=5 * 2**31 + 17,
        jsonl_key=f"{key}/training.jsonl", jsonl_sha256="2" * 64, jsonl_size=3 * 2**31 + 1,
        manifest_key=f"{key}/manifest.json", manifest_sha256="3" * 64,
        json_body_start=2**31 + 5, json_body_end=5 * 2**31 + 15,
        conversation_count=80, training_pair_count=900_000, trainable_pair_count=850_000,
        jsonl_line_count=850_000, human_reviewed_count=12, avg_quality_score=4.0,
        request_ids=["req-big"], dagster_run_id="run-big", created_at=now)
    member = MemberRecord(
        training_file_id=file_id, conversation_id=str(uuid.uuid4()), position=0,
        added_in_version=1, built_in_version=1, batch_id=None, source_key="u/big/enriched.json",
        source_sha256="4" * 64, source_updated_at=now, pair_count=900_000,
        trainable_pair_count=850_000, human_reviewed_count=12, quality_score=4.0,
        persona_key=None, emotional_arc_key=None, topic_key=None)
    publication = Publication(
        version=record, expected_current_version=None,
        new_file=NewFile(id=file_id, name="Big file", description=None, created_by=None,
                         created_at=now),
        vertical=None, consultant_profile=None, added_members=[member], published_at=now)

    database.publish_version(publication, [])

    assert database.get_version(file_id) == record
    assert database.list_versions(file_id) == [record]
    ((file, current),) = database.list_files()
    assert (file.id, file.current_version, current) == (file_id, 1, record)
