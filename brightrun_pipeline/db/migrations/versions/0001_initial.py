"""Initial schema: source tables when missing, owned tables, Batch ID indexes and catalog view.

Revision ID: 0001_initial
Revises:

The tables, indexes and view are written out here (not imported from schema.py) so that later
changes to the live definitions can never alter what this revision creates.
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy import (
    Column,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    Numeric,
    String,
    Table,
    Text,
    UniqueConstraint,
)

from brightrun_pipeline.db.types import ForeignText, JSONDocument, Timestamp, UUIDText, utc_now

revision = "0001_initial"
down_revision = None
branch_labels = None
depends_on = None

CATALOG_VIEW = "conversation_catalog"


def _source_tables(metadata: MetaData) -> tuple[Table, ...]:
    score = Numeric(asdecimal=False)
    conversations = Table(
        "conversations",
        metadata,
        Column("id", UUIDText, primary_key=True),
        Column("conversation_id", UUIDText, nullable=False, unique=True),
        Column("title", Text),
        Column("persona_key", Text),
        Column("emotional_arc_key", Text),
        Column("topic_key", Text),
        Column("tier", Text),
        Column("quality_score", score),
        Column("empathy_score", score),
        Column("clarity_score", score),
        Column("appropriateness_score", score),
        Column("brand_voice_alignment", score),
        Column("enrichment_status", Text, nullable=False, server_default="not_started"),
        Column("enriched_file_path", Text),
        Column("created_by", ForeignText),
        Column("created_at", Timestamp, server_default=utc_now()),
        Column("updated_at", Timestamp, server_default=utc_now()),
    )
    batch_jobs = Table(
        "batch_jobs",
        metadata,
        Column("id", UUIDText, primary_key=True),
        Column("name", Text),
        Column("status", Text, nullable=False, server_default="queued"),
        Column("tier", Text),
        Column("total_items", Integer, nullable=False, server_default="0"),
        Column("created_at", Timestamp, server_default=utc_now()),
    )
    batch_items = Table(
        "batch_items",
        metadata,
        Column("id", UUIDText, primary_key=True),
        Column("batch_job_id", UUIDText, ForeignKey("batch_jobs.id"), nullable=False),
        Column("conversation_id", UUIDText),
        Column("status", Text, nullable=False, server_default="queued"),
        Column("created_at", Timestamp, server_default=utc_now()),
    )
    return conversations, batch_jobs, batch_items


def _source_indexes(conversations: Table, batch_items: Table) -> tuple[Index, ...]:
    return (
        Index("ix_batch_items_conversation_created", batch_items.c.conversation_id,
              batch_items.c.created_at, batch_items.c.id),
        Index("ix_batch_items_batch_job", batch_items.c.batch_job_id),
        Index("ix_conversations_updated_at", conversations.c.updated_at),
    )


def _owned_tables(metadata: MetaData) -> tuple[Table, ...]:
    exact_score = Float(asdecimal=False)
    training_files = Table(
        "training_files",
        metadata,
        Column("id", UUIDText, primary_key=True),
        Column("name", String(120), nullable=False),
        Column("name_key", String(480), nullable=False, unique=True),
        Column("description", Text),
        Column("created_by", Text),
        Column("created_at", Timestamp, nullable=False),
        Column("updated_at", Timestamp, nullable=False),
        Column("current_version", Integer),
        Column("status", String(20), nullable=False),
        Column("vertical", Text),
        Column("consultant_profile", JSONDocument(keep_key_order=True)),
    )
    training_file_versions = Table(
        "training_file_versions",
        metadata,
        Column("id", Integer, primary_key=True, autoincrement=True),
        Column("training_file_id", UUIDText, ForeignKey("training_files.id"), nullable=False),
        Column("version", Integer, nullable=False),
        Column("reason", String(40), nullable=False),
        Column("json_key", Text, nullable=False),
        Column("json_sha256", String(64), nullable=False),
        Column("json_size", Integer, nullable=False),
        Column("jsonl_key", Text, nullable=False),
        Column("jsonl_sha256", String(64), nullable=False),
        Column("jsonl_size", Integer, nullable=False),
        Column("manifest_key", Text, nullable=False),
        Column("manifest_sha256", String(64), nullable=False),
        Column("json_body_start", Integer, nullable=False),
        Column("json_body_end", Integer, nullable=False),
        Column("conversation_count", Integer, nullable=False),
        Column("training_pair_count", Integer, nullable=False),
        Column("trainable_pair_count", Integer, nullable=False),
        Column("jsonl_line_count", Integer, nullable=False),
        Column("human_reviewed_count", Integer, nullable=False),
        Column("avg_quality_score", exact_score),
        Column("request_ids", JSONDocument, nullable=False),
        Column("dagster_run_id", Text),
        Column("created_at", Timestamp, nullable=False),
        UniqueConstraint("training_file_id", "version", name="uq_training_file_versions_version"),
    )
    training_file_conversations = Table(
        "training_file_conversations",
        metadata,
        Column("id", Integer, primary_key=True, autoincrement=True),
        Column("training_file_id", UUIDText, ForeignKey("training_files.id"), nullable=False),
        Column("conversation_id", UUIDText, nullable=False),
        Column("position", Integer, nullable=False),
        Column("added_in_version", Integer, nullable=False),
        Column("built_in_version", Integer, nullable=False),
        Column("batch_id", UUIDText),
        Column("source_key", Text, nullable=False),
        Column("source_sha256", String(64), nullable=False),
        Column("source_updated_at", Timestamp),
        Column("pair_count", Integer, nullable=False),
        Column("trainable_pair_count", Integer, nullable=False),
        Column("human_reviewed_count", Integer, nullable=False),
        Column("quality_score", exact_score),
        Column("persona_key", Text),
        Column("emotional_arc_key", Text),
        Column("topic_key", Text),
        Column("created_at", Timestamp, nullable=False),
        UniqueConstraint("training_file_id", "conversation_id",
                         name="uq_training_file_conversation"),
        UniqueConstraint("training_file_id", "position", name="uq_training_file_position"),
        Index("ix_training_file_conversations_conversation", "conversation_id"),
    )
    selection_requests = Table(
        "selection_requests",
        metadata,
        Column("id", Text, primary_key=True),
        Column("training_file_id", UUIDText),
        Column("new_file_name", Text),
        Column("new_file_description", Text),
        Column("conversation_ids", JSONDocument, nullable=False),
        Column("requested_by", Text),
        Column("status", String(20), nullable=False, server_default="pending"),
        Column("error", JSONDocument),
        Column("result_version", Integer),
        Column("dagster_run_id", Text),
        Column("target_file_id", UUIDText),
        Column("attempts", Integer, nullable=False, server_default="0"),
        Column("created_at", Timestamp, server_default=utc_now()),
        Column("updated_at", Timestamp, server_default=utc_now()),
        Index("ix_selection_requests_status_created", "status", "created_at"),
        Index("ix_selection_requests_target", "target_file_id"),
    )
    return training_files, training_file_versions, training_file_conversations, selection_requests


# Batch ID of a conversation: the batch job of its earliest batch item (ties broken by item id).
# SQLite keeps timestamps as text in whatever ISO-8601 form a client wrote, so there the earliest
# item is found by instant (julianday), not by text.
def _catalog_view_sql(dialect: str) -> str:
    created = "julianday(bi.created_at)" if dialect == "sqlite" else "bi.created_at"
    return f"""
CREATE VIEW {CATALOG_VIEW} AS
SELECT c.*,
       (SELECT bi.batch_job_id FROM batch_items bi
         WHERE bi.conversation_id = c.conversation_id
         ORDER BY {created}, bi.id LIMIT 1) AS batch_id
FROM conversations c
"""


def upgrade() -> None:
    bind = op.get_bind()
    metadata = MetaData()
    source_tables = _source_tables(metadata)
    conversations, _, batch_items = source_tables
    # Made before the tables: a source table created here gets its indexes with it.
    source_indexes = _source_indexes(conversations, batch_items)
    owned_tables = _owned_tables(metadata)
    existing = set(sa.inspect(bind).get_table_names())
    # The upstream application owns the source tables in production; create them only when absent.
    for table in source_tables:
        if table.name not in existing:
            table.create(bind)
    for index in source_indexes:
        present = {ix["name"] for ix in sa.inspect(bind).get_indexes(index.table.name)}
        if index.name not in present:
            index.create(bind)
    for table in owned_tables:
        table.create(bind, checkfirst=True)
    if CATALOG_VIEW not in set(sa.inspect(bind).get_view_names()):
        op.execute(_catalog_view_sql(bind.dialect.name))


def downgrade() -> None:
    op.execute(f"DROP VIEW IF EXISTS {CATALOG_VIEW}")
    for table in reversed(_owned_tables(MetaData())):
        table.drop(op.get_bind(), checkfirst=True)
