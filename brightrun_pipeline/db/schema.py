"""Table definitions: the upstream source tables (contract §1) and the tables we own (§2)."""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    Numeric,
    String,
    Table,
    Text,
    UniqueConstraint,
    false,
)

from brightrun_pipeline.db.types import ForeignText, JSONDocument, Timestamp, UUIDText, utc_now

metadata = MetaData()

Score = Numeric(asdecimal=False)
# Scores we computed or copied keep every bit: PostgreSQL's float-to-numeric cast keeps only 15
# significant digits, and later versions' headers are computed from these.
ExactScore = Float(asdecimal=False)

# --- Source tables, written by the upstream application --------------------------------

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
    Column("quality_score", Score),
    Column("empathy_score", Score),
    Column("clarity_score", Score),
    Column("appropriateness_score", Score),
    Column("brand_voice_alignment", Score),
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

SOURCE_TABLES = (conversations, batch_jobs, batch_items)

# Indexes we add to the source tables so that Batch ID lookups, filters and sorts stay cheap.
SOURCE_INDEXES = (
    Index("ix_batch_items_conversation_created", batch_items.c.conversation_id,
          batch_items.c.created_at, batch_items.c.id),
    Index("ix_batch_items_batch_job", batch_items.c.batch_job_id),
    Index("ix_conversations_updated_at", conversations.c.updated_at),
    # The console's catalog (revision 0005): the view's Batch ID subquery read from the index
    # alone, and pages sorted by title, or by created time on PostgreSQL (SQLite sorts created
    # times by instant, `julianday`, which this index does not hold), read off an index.
    Index("ix_batch_items_conversation_first", batch_items.c.conversation_id,
          batch_items.c.created_at, batch_items.c.id, batch_items.c.batch_job_id),
    Index("ix_conversations_created", conversations.c.created_at,
          conversations.c.conversation_id).ddl_if(dialect="postgresql"),
    Index("ix_conversations_title", conversations.c.title, conversations.c.conversation_id),
    # The console's filter choices (revision 0010): distinct values read off an index.
    *(Index(f"ix_conversations_{column}", conversations.c[column])
      for column in ("enrichment_status", "persona_key", "emotional_arc_key", "topic_key",
                     "tier")),
)

# --- Tables the pipeline owns --------------------------------------------------------------

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
    # "warn" or "block": what a near-duplicate of a conversation already in the file does.
    Column("near_duplicates", String(10), nullable=False, server_default="warn"),
    # The share of conversations held out for validation (NULL: no split).
    Column("validation_fraction", Float),
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
    Column("json_size", BigInteger, nullable=False),
    Column("jsonl_key", Text, nullable=False),
    Column("jsonl_sha256", String(64), nullable=False),
    Column("jsonl_size", BigInteger, nullable=False),
    Column("manifest_key", Text, nullable=False),
    Column("manifest_sha256", String(64), nullable=False),
    Column("json_body_start", BigInteger, nullable=False),
    Column("json_body_end", BigInteger, nullable=False),
    Column("conversation_count", Integer, nullable=False),
    Column("training_pair_count", Integer, nullable=False),
    Column("trainable_pair_count", Integer, nullable=False),
    Column("jsonl_line_count", Integer, nullable=False),
    Column("human_reviewed_count", Integer, nullable=False),
    Column("avg_quality_score", ExactScore),
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
    Column("quality_score", ExactScore),
    Column("persona_key", Text),
    Column("emotional_arc_key", Text),
    Column("topic_key", Text),
    Column("created_at", Timestamp, nullable=False),
    # "train" or "validation" once the file holds out a validation share; never changes after.
    Column("split", String(12)),
    UniqueConstraint("training_file_id", "conversation_id", name="uq_training_file_conversation"),
    UniqueConstraint("training_file_id", "position", name="uq_training_file_position"),
    Index("ix_training_file_conversations_conversation", "conversation_id"),
)

# Every object of a published version, by name (training.json, training.jsonl, the exports,
# manifest.json): written in the version's publication transaction.
training_file_version_objects = Table(
    "training_file_version_objects",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("training_file_id", UUIDText, ForeignKey("training_files.id"), nullable=False),
    Column("version", Integer, nullable=False),
    Column("name", String(120), nullable=False),
    Column("key", Text, nullable=False),
    Column("sha256", String(64), nullable=False),
    Column("size", BigInteger),
    UniqueConstraint("training_file_id", "version", "name",
                     name="uq_training_file_version_objects_name"),
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
    # Who holds a claimed request: "sensor" (the daemon launches its run) or "cli" (a
    # `--wait` process runs it itself), and when its holder last showed it was alive.
    Column("claimed_by", Text),
    Column("heartbeat_at", Timestamp),
    # The settings a file created by this request starts with (brightrun_pipeline.rules
    # FileSettings); NULL: the defaults.
    Column("new_file_settings", JSONDocument),
    Index("ix_selection_requests_status_created", "status", "created_at"),
    Index("ix_selection_requests_target", "target_file_id"),
)

# The one build allowed to write a file's next version: it owns that version's object keys until
# it publishes (the row goes in the publication transaction) or its lease expires.
training_file_builds = Table(
    "training_file_builds",
    metadata,
    Column("training_file_id", UUIDText, primary_key=True),
    Column("version", Integer, nullable=False),
    Column("owner", String(64), nullable=False),
    Column("dagster_run_id", Text),
    Column("acquired_at", Timestamp, nullable=False),
    Column("expires_at", Timestamp, nullable=False),
)

# Liveness of the runs that build training files, beaten while a run executes: a run whose
# beats stop is abandoned (its process died) and is failed so that nothing waits on it.
run_heartbeats = Table(
    "run_heartbeats",
    metadata,
    Column("run_id", String(64), primary_key=True),
    Column("training_file_id", UUIDText),
    Column("request_id", Text),
    Column("beat_at", Timestamp, nullable=False),
)

# People who use the console: a token is shown once when the user is added; only its SHA-256
# is kept.
users = Table(
    "users",
    metadata,
    Column("id", UUIDText, primary_key=True),
    Column("name", String(120), nullable=False),
    Column("name_key", String(480), nullable=False, unique=True),
    Column("is_admin", Boolean, nullable=False, server_default=false()),
    Column("token_hash", String(64), nullable=False, unique=True),
    Column("created_at", Timestamp, nullable=False),
)

# The MinHash signature of a conversation's training text (brightrun_pipeline.near_duplicates),
# computed once from the bytes of one version of its enriched file: a cache of derived data,
# never part of what a request or a version changes. `scheme` names the method that computed
# `hashvalues` (little-endian uint32 values; empty: no training text).
conversation_signatures = Table(
    "conversation_signatures",
    metadata,
    Column("conversation_id", UUIDText, primary_key=True),
    Column("source_sha256", String(64), primary_key=True),
    Column("scheme", String(60), nullable=False),
    Column("hashvalues", LargeBinary, nullable=False),
    # Where the bytes were read from, and the conversation's `updated_at` then: how a check
    # tells that a stored signature is that of the source a catalog row names now.
    Column("source_key", Text, nullable=False),
    Column("source_updated_at", Timestamp),
    Column("created_at", Timestamp, nullable=False),
)

OWNED_TABLES = (training_files, training_file_versions, training_file_conversations,
                selection_requests, training_file_builds, run_heartbeats, users,
                training_file_version_objects)

CATALOG_VIEW = "conversation_catalog"

# Batch ID of a conversation: the batch job of its earliest batch item (ties broken by item id).
def catalog_view_sql(dialect: str) -> str:
    """The view's DDL. SQLite keeps timestamps as text in whatever ISO-8601 form a client
    wrote (`Z`, `+02:00`, a space for `T`), so there the earliest item is found by instant,
    not by text."""
    created = "julianday(bi.created_at)" if dialect == "sqlite" else "bi.created_at"
    return f"""
CREATE VIEW {CATALOG_VIEW} AS
SELECT c.*,
       (SELECT bi.batch_job_id FROM batch_items bi
         WHERE bi.conversation_id = c.conversation_id
         ORDER BY {created}, bi.id LIMIT 1) AS batch_id
FROM conversations c
"""
