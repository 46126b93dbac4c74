"""All reads and writes of our tables, on SQLite and PostgreSQL alike."""

from __future__ import annotations

import enum
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.dialects.postgresql import distinct_on
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import IntegrityError

from brightrun_pipeline.db.schema import (
    CATALOG_VIEW,
    batch_items,
    batch_jobs,
    conversation_signatures,
    conversations,
    run_heartbeats,
    selection_requests,
    training_file_builds,
    training_file_conversations,
    training_file_version_objects,
    training_file_versions,
    training_files,
    users,
)
from brightrun_pipeline.errors import RequestRejected, StaleVersion
from brightrun_pipeline.members import MemberRecord
from brightrun_pipeline.models import RequestError, SelectionRequest
from brightrun_pipeline.rules import ELIGIBLE_STATUS, name_key

MIGRATIONS = Path(__file__).parent / "migrations"

CATALOG_SORT_COLUMNS = (
    "batch_id", "created_at", "updated_at", "conversation_id", "title", "persona_key",
    "emotional_arc_key", "topic_key", "tier", "quality_score", "enrichment_status", "eligible",
)

catalog = sa.table(CATALOG_VIEW, *(sa.column(c.name) for c in conversations.c),
                   sa.column("batch_id"))
# Typed access to the view: reuse the table's column types so values decode the same way.
catalog_columns = [sa.type_coerce(catalog.c[c.name], c.type).label(c.name)
                   for c in conversations.c] + [
    sa.type_coerce(catalog.c.batch_id, batch_items.c.batch_job_id.type).label("batch_id")]
# The eligibility rule (brightrun_pipeline.rules.ineligibility_reason) as a condition on the
# catalog, for filtering and sorting in the database.
ELIGIBLE_CONDITION = sa.and_(catalog.c.enrichment_status == ELIGIBLE_STATUS,
                             catalog.c.enriched_file_path.is_not(None))


@dataclass(frozen=True)
class CatalogRow:
    """A conversation as the catalog lists it, with its Batch ID."""

    id: str
    conversation_id: str
    title: str | None
    persona_key: str | None
    emotional_arc_key: str | None
    topic_key: str | None
    tier: str | None
    quality_score: float | None
    empathy_score: float | None
    clarity_score: float | None
    appropriateness_score: float | None
    brand_voice_alignment: float | None
    enrichment_status: str | None
    enriched_file_path: str | None
    created_by: str | None
    created_at: datetime | None
    updated_at: datetime | None
    batch_id: str | None


@dataclass(frozen=True)
class BatchJobRecord:
    """A row of `batch_jobs`."""

    id: str
    name: str | None
    status: str
    tier: str | None
    total_items: int
    created_at: datetime | None


@dataclass(frozen=True)
class BatchRecord:
    """A batch job with the size of its catalog share."""

    id: str
    name: str | None
    status: str
    tier: str | None
    created_at: datetime | None
    conversations: int
    eligible: int


@dataclass(frozen=True)
class UserRecord:
    """A console user (the token itself is never stored, only its hash)."""

    id: str
    name: str
    is_admin: bool
    created_at: datetime


@dataclass(frozen=True)
class TrainingFileRecord:
    """A row of `training_files`."""

    id: str
    name: str
    description: str | None
    created_by: str | None
    created_at: datetime
    updated_at: datetime
    current_version: int | None
    status: str
    vertical: str | None
    consultant_profile: dict[str, Any] | None
    near_duplicates: str = "warn"
    validation_fraction: float | None = None


@dataclass(frozen=True)
class VersionRecord:
    """A row of `training_file_versions`: one published version."""

    training_file_id: str
    version: int
    reason: str
    json_key: str
    json_sha256: str
    json_size: int
    jsonl_key: str
    jsonl_sha256: str
    jsonl_size: int
    manifest_key: str
    manifest_sha256: str
    json_body_start: int
    json_body_end: int
    conversation_count: int
    training_pair_count: int
    trainable_pair_count: int
    jsonl_line_count: int
    human_reviewed_count: int
    avg_quality_score: float | None
    request_ids: list[str]
    dagster_run_id: str | None
    created_at: datetime


@dataclass(frozen=True)
class NewFile:
    """The training file a first version creates."""

    id: str
    name: str
    description: str | None
    created_by: str | None
    created_at: datetime
    near_duplicates: str = "warn"
    validation_fraction: float | None = None


class BuildClaim(enum.Enum):
    """What became of an attempt to reserve a file's next version for one build."""

    ACQUIRED = "acquired"
    BUSY = "busy"  # another live build holds the file
    MOVED = "moved"  # the file is no longer at the version the build was planned on


@dataclass(frozen=True)
class ObjectRecord:
    """One object of a published version (size unknown only for manifests published before
    objects were recorded by name)."""

    name: str
    key: str
    sha256: str
    size: int | None


@dataclass
class Publication:
    """Everything that changes, in one transaction, when a version is published."""

    version: VersionRecord
    expected_current_version: int | None
    new_file: NewFile | None
    vertical: str | None
    consultant_profile: dict[str, Any] | None
    added_members: list[MemberRecord] = field(default_factory=list)
    rebuilt_members: list[MemberRecord] = field(default_factory=list)
    published_at: datetime | None = None
    # The build lease this publication must still hold (None: no lease, tests of the table only).
    build_owner: str | None = None
    # The attempt of the request(s) that built it (None: any attempt).
    request_attempt: int | None = None
    # Every object of the version (training.json, training.jsonl, exports, manifest.json).
    objects: list[ObjectRecord] = field(default_factory=list)
    # Split sides given to conversations already in the file (they had none).
    placed: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class SignatureRecord:
    """A row of `conversation_signatures`: the near-duplicate signature of one version of a
    conversation's enriched file (brightrun_pipeline.near_duplicates)."""

    conversation_id: str
    source_sha256: str
    scheme: str
    hashvalues: bytes
    source_key: str
    source_updated_at: datetime | None
    created_at: datetime


@dataclass(frozen=True)
class MemberSignature:
    """A member of a training file with the stored signature of the source it was built from;
    when none is stored (`hashvalues` None), where to read that source."""

    conversation_id: str
    added_in_version: int
    hashvalues: bytes | None
    source_key: str | None = None
    source_updated_at: datetime | None = None


def _first_items() -> sa.Subquery:
    """Each conversation's Batch ID as a set (PostgreSQL): the batch job of its earliest batch
    item, ties broken by item id, the rule of the catalog view (schema.catalog_view_sql) in one
    ordered pass over ix_batch_items_conversation_first."""
    return (sa.select(batch_items.c.conversation_id, batch_items.c.batch_job_id)
            .ext(distinct_on(batch_items.c.conversation_id))
            .order_by(batch_items.c.conversation_id, batch_items.c.created_at, batch_items.c.id)
            .subquery("first_items"))


def _record(cls: type, row: sa.Row[Any]) -> Any:
    return cls(**{name: row._mapping[name] for name in cls.__dataclass_fields__})


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.execute("PRAGMA foreign_keys=ON")
    # Sorts that spill (a deep catalog page skips tens of thousands of rows) stay in memory.
    cursor.execute("PRAGMA temp_store=MEMORY")
    cursor.close()


def create_db_engine(url: str) -> Engine:
    """An engine for our database URL; SQLite gets WAL, a busy timeout and its parent directory."""
    if url.startswith("sqlite"):
        database = sa.engine.make_url(url).database
        if database and database != ":memory:":
            Path(database).parent.mkdir(parents=True, exist_ok=True)
        engine = sa.create_engine(url, connect_args={"timeout": 30})
        sa.event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    # A server that stops answering (rather than refusing) must not hang a connect for minutes:
    # the attempt fails as a transient database error and is retried.
    return sa.create_engine(url, pool_pre_ping=True, connect_args={"connect_timeout": 10})


class Database:
    """The pipeline's view of its database."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.engine = create_db_engine(url)

    def dispose(self) -> None:
        """Close every pooled connection."""
        self.engine.dispose()

    def upgrade(self) -> None:
        """Create or upgrade the schema (idempotent)."""
        # Alembic is loaded only here: building and reading need none of it.
        from alembic import command
        from alembic.config import Config

        config = Config()
        config.set_main_option("script_location", str(MIGRATIONS))
        with self.engine.begin() as connection:
            config.attributes["connection"] = connection
            command.upgrade(config, "head")

    # --- Catalog -------------------------------------------------------------------------------

    def list_conversations(
        self,
        *,
        sort: str = "created_at",
        descending: bool = False,
        limit: int | None = None,
        offset: int = 0,
        **filters: Any,
    ) -> list[CatalogRow]:
        """Conversations with their Batch ID, filtered (see `_catalog_filter`) and sorted as a
        curator asks."""
        if sort not in CATALOG_SORT_COLUMNS:
            raise ValueError(
                f"cannot sort by {sort!r}; choose one of {', '.join(CATALOG_SORT_COLUMNS)}"
            )
        order: sa.ColumnElement[Any] = (ELIGIBLE_CONDITION if sort == "eligible"
                                        else catalog.c[sort])
        if sort in ("created_at", "updated_at") and self.engine.dialect.name == "sqlite":
            # Text in any ISO-8601 form: compare the instants it denotes.
            order = sa.func.julianday(order)
        # Missing values go last either way, on SQLite and PostgreSQL alike (their defaults differ).
        ordering = ((order.desc() if descending else order.asc()).nulls_last(),
                    catalog.c.conversation_id.asc())
        if limit is None:
            query = self._catalog_filter(sa.select(*catalog_columns), **filters).order_by(
                *ordering).offset(offset or None)
        else:
            # A page: its conversation IDs first, from a query that reads only what the filters
            # and the sort need (the view works a Batch ID out only where it is asked for, and an
            # index on the sort column is read in order), then the page's rows in full.
            keys = sa.select(catalog.c.conversation_id)
            page_order = ordering
            if (sort == "batch_id" and filters.get("batch_id") is None
                    and self.engine.dialect.name == "postgresql"):
                # Every conversation's Batch ID is needed to sort by it: one pass over the batch
                # items' index costs a third of the view's subquery run once per conversation.
                first = _first_items()
                keys = keys.select_from(catalog.outerjoin(
                    first, first.c.conversation_id == catalog.c.conversation_id))
                batch = first.c.batch_job_id
                page_order = ((batch.desc() if descending else batch.asc()).nulls_last(),
                              catalog.c.conversation_id.asc())
            page = self._catalog_filter(keys, **filters).order_by(
                *page_order).limit(limit).offset(offset or None)
            query = sa.select(*catalog_columns).where(
                catalog.c.conversation_id.in_(page)).order_by(*ordering)
        with self.engine.connect() as connection:
            return [_record(CatalogRow, row) for row in connection.execute(query)]

    def count_conversations(self, **filters: Any) -> int:
        """How many conversations `list_conversations` would list with these filters."""
        query = self._catalog_filter(sa.select(sa.func.count()).select_from(catalog), **filters)
        with self.engine.connect() as connection:
            return int(connection.execute(query).scalar_one())

    @staticmethod
    def _catalog_filter(
        query: sa.Select[Any], *, batch_id: str | None = None, status: str | None = None,
        eligible: bool | None = None, persona: str | None = None, arc: str | None = None,
        topic: str | None = None, tier: str | None = None, text: str | None = None,
        in_file: str | None = None,
    ) -> sa.Select[Any]:
        """The catalog rows a curator's filters keep (every filter given must hold)."""
        if batch_id is not None:
            # The semi-join lets the index on batch_items.batch_job_id narrow the rows first.
            query = query.where(
                catalog.c.conversation_id.in_(
                    sa.select(batch_items.c.conversation_id).where(
                        batch_items.c.batch_job_id == batch_id)),
                catalog.c.batch_id == sa.type_coerce(batch_id, batch_items.c.batch_job_id.type),
            )
        for column, value in (("enrichment_status", status), ("persona_key", persona),
                              ("emotional_arc_key", arc), ("topic_key", topic), ("tier", tier)):
            if value is not None:
                query = query.where(catalog.c[column] == value)
        if eligible is not None:
            query = query.where(ELIGIBLE_CONDITION if eligible else sa.not_(ELIGIBLE_CONDITION))
        if text:
            pattern = "%" + text.lower().replace("\\", "\\\\").replace("%", "\\%").replace(
                "_", "\\_") + "%"
            query = query.where(sa.or_(
                sa.func.lower(catalog.c.title).like(pattern, escape="\\"),
                sa.func.lower(sa.cast(catalog.c.conversation_id, sa.Text)).like(
                    pattern, escape="\\")))
        if in_file is not None:
            query = query.where(catalog.c.conversation_id.in_(
                sa.select(training_file_conversations.c.conversation_id).where(
                    training_file_conversations.c.training_file_id == in_file)))
        return query

    def catalog_values(self) -> dict[str, list[str]]:
        """The distinct values of the catalog's filterable columns (for filter choices)."""
        values: dict[str, list[str]] = {}
        with self.engine.connect() as connection:
            for column in ("enrichment_status", "persona_key", "emotional_arc_key", "topic_key",
                           "tier"):
                rows = connection.execute(
                    sa.select(conversations.c[column]).where(
                        conversations.c[column].is_not(None)).distinct().order_by(
                        conversations.c[column]))
                values[column] = [row[0] for row in rows]
        return values

    def list_batches(self) -> list[BatchRecord]:
        """Every batch job with how many conversations it holds and how many are eligible."""
        members = sa.select(catalog.c.batch_id.label("batch_id"),
                            sa.func.count().label("conversations"),
                            sa.cast(sa.func.sum(sa.case((ELIGIBLE_CONDITION, 1), else_=0)),
                                    sa.Integer).label("eligible")).group_by(catalog.c.batch_id).subquery()
        query = sa.select(
            batch_jobs.c.id, batch_jobs.c.name, batch_jobs.c.status, batch_jobs.c.tier,
            batch_jobs.c.created_at,
            sa.func.coalesce(members.c.conversations, 0).label("conversations"),
            sa.func.coalesce(members.c.eligible, 0).label("eligible"),
        ).select_from(batch_jobs.outerjoin(
            members, sa.type_coerce(members.c.batch_id, batch_jobs.c.id.type) == batch_jobs.c.id)
        ).order_by(batch_jobs.c.created_at.desc(), batch_jobs.c.id)
        with self.engine.connect() as connection:
            return [_record(BatchRecord, row) for row in connection.execute(query)]

    def batch_jobs(self) -> list[BatchJobRecord]:
        """Every batch job, newest first (no counting)."""
        with self.engine.connect() as connection:
            return [_record(BatchJobRecord, row) for row in connection.execute(
                sa.select(batch_jobs).order_by(batch_jobs.c.created_at.desc(), batch_jobs.c.id))]

    def batch_job(self, batch_id: str) -> BatchJobRecord | None:
        """One batch job by id."""
        with self.engine.connect() as connection:
            row = connection.execute(
                sa.select(batch_jobs).where(batch_jobs.c.id == batch_id)).first()
        return None if row is None else _record(BatchJobRecord, row)

    def memberships(self, conversation_ids: Iterable[str]
                    ) -> dict[str, list[tuple[str, str, int]]]:
        """For each of these conversations, the files holding it: (file id, name, version that
        added it), by file name."""
        ids = sorted(set(conversation_ids))
        found: dict[str, list[tuple[str, str, int]]] = {}
        with self.engine.connect() as connection:
            for start in range(0, len(ids), 500):
                chunk = ids[start:start + 500]
                rows = connection.execute(
                    sa.select(training_file_conversations.c.conversation_id,
                              training_files.c.id, training_files.c.name,
                              training_file_conversations.c.added_in_version).join(
                        training_files,
                        training_files.c.id == training_file_conversations.c.training_file_id,
                    ).where(training_file_conversations.c.conversation_id.in_(
                        [sa.type_coerce(i, conversations.c.conversation_id.type)
                         for i in chunk])).order_by(training_files.c.name_key))
                for row in rows:
                    found.setdefault(row.conversation_id, []).append(
                        (row.id, row.name, row.added_in_version))
        return found

    def conversations_by_id(self, conversation_ids: Iterable[str]) -> dict[str, CatalogRow]:
        """The catalog rows of the given (normalized) conversation IDs that exist."""
        ids = sorted(set(conversation_ids))
        found: dict[str, CatalogRow] = {}
        with self.engine.connect() as connection:
            for chunk_start in range(0, len(ids), 500):
                chunk = ids[chunk_start:chunk_start + 500]
                query = sa.select(*catalog_columns).where(
                    catalog.c.conversation_id.in_(
                        [sa.type_coerce(i, conversations.c.conversation_id.type) for i in chunk]))
                for row in connection.execute(query):
                    record = _record(CatalogRow, row)
                    found[record.conversation_id] = record
        return found

    # --- Near-duplicate signatures ---------------------------------------------------------

    def signatures_of(self, conversation_ids: Iterable[str], scheme: str
                      ) -> dict[str, list[SignatureRecord]]:
        """The stored signatures (computed by `scheme`) of these conversations' sources."""
        ids = sorted(set(conversation_ids))
        found: dict[str, list[SignatureRecord]] = {}
        with self.engine.connect() as connection:
            for start in range(0, len(ids), 500):
                chunk = ids[start:start + 500]
                rows = connection.execute(sa.select(conversation_signatures).where(
                    conversation_signatures.c.scheme == scheme,
                    conversation_signatures.c.conversation_id.in_(chunk)))
                for row in rows:
                    record = _record(SignatureRecord, row)
                    found.setdefault(record.conversation_id, []).append(record)
        return found

    def member_signatures(self, file_id: str, scheme: str) -> list[MemberSignature]:
        """A file's members in file order, each with the stored signature (by `scheme`) of the
        source it was built from."""
        members, signatures = training_file_conversations, conversation_signatures
        missing = signatures.c.hashvalues.is_(None)
        # Thousands of rows: only what is needed, and the source only where there is no
        # signature (what a check reads on every call, kept cheap to decode).
        query = sa.select(
            members.c.conversation_id, members.c.added_in_version, signatures.c.hashvalues,
            sa.case((missing, members.c.source_key)),
            sa.case((missing, members.c.source_updated_at)),
        ).select_from(members.outerjoin(signatures, sa.and_(
            signatures.c.conversation_id == members.c.conversation_id,
            signatures.c.source_sha256 == members.c.source_sha256,
            signatures.c.scheme == scheme,
        ))).where(members.c.training_file_id == file_id).order_by(members.c.position)
        with self.engine.connect() as connection:
            return [MemberSignature(*row) for row in connection.execute(query)]

    def save_signatures(self, records: Sequence[SignatureRecord]) -> None:
        """Store signatures, replacing any stored for the same conversation and source bytes
        (two checks computing the same one at once store the same values)."""
        if not records:
            return
        insert = (postgresql.insert if self.engine.dialect.name == "postgresql"
                  else sqlite.insert)(conversation_signatures)
        statement = insert.on_conflict_do_update(
            index_elements=[conversation_signatures.c.conversation_id,
                            conversation_signatures.c.source_sha256],
            set_={name: insert.excluded[name] for name in (
                "scheme", "hashvalues", "source_key", "source_updated_at", "created_at")})
        # One order for every writer, so concurrent upserts of the same keys cannot deadlock.
        rows = [vars(record) for record in sorted(
            records, key=lambda r: (r.conversation_id, r.source_sha256))]
        with self.engine.begin() as connection:
            connection.execute(statement, rows)

    def batch_exists(self, batch_id: str) -> bool:
        """Whether a batch job with this id exists."""
        with self.engine.connect() as connection:
            return connection.execute(
                sa.select(batch_jobs.c.id).where(batch_jobs.c.id == batch_id)).first() is not None

    # --- Users -----------------------------------------------------------------------------------

    def add_user(self, user: UserRecord, token_hash: str) -> bool:
        """Store a new user; False when the name is taken (case-insensitive)."""
        try:
            with self.engine.begin() as connection:
                connection.execute(sa.insert(users).values(
                    id=user.id, name=user.name, name_key=name_key(user.name),
                    is_admin=user.is_admin, token_hash=token_hash, created_at=user.created_at))
        except IntegrityError:
            return False
        return True

    def user_by_token_hash(self, token_hash: str) -> tuple[UserRecord, str] | None:
        """The user holding a token with this hash, with the stored hash."""
        with self.engine.connect() as connection:
            row = connection.execute(sa.select(users).where(
                users.c.token_hash == token_hash)).first()
        return None if row is None else (_record(UserRecord, row), row.token_hash)

    def list_users(self) -> list[UserRecord]:
        """Every user, by name."""
        with self.engine.connect() as connection:
            return [_record(UserRecord, row) for row in connection.execute(
                sa.select(users).order_by(users.c.name_key))]

    def count_users(self) -> int:
        """How many users exist."""
        with self.engine.connect() as connection:
            return int(connection.execute(
                sa.select(sa.func.count()).select_from(users)).scalar_one())

    def remove_user(self, name: str) -> bool:
        """Delete a user by (case-insensitive) name; False when there is none."""
        with self.engine.begin() as connection:
            return connection.execute(sa.delete(users).where(
                users.c.name_key == name_key(name))).rowcount == 1

    # --- Training files ------------------------------------------------------------------------

    def find_file(self, ref: str) -> TrainingFileRecord | None:
        """A training file by id or (case-insensitive) name."""
        from brightrun_pipeline.rules import normalize_uuid

        file_id = normalize_uuid(ref)
        with self.engine.connect() as connection:
            if file_id is not None:
                row = connection.execute(
                    sa.select(training_files).where(training_files.c.id == file_id)).first()
                if row is not None:
                    return _record(TrainingFileRecord, row)
            row = connection.execute(
                sa.select(training_files).where(training_files.c.name_key == name_key(ref))
            ).first()
            return None if row is None else _record(TrainingFileRecord, row)

    def get_file(self, file_id: str) -> TrainingFileRecord | None:
        """A training file by id."""
        with self.engine.connect() as connection:
            row = connection.execute(
                sa.select(training_files).where(training_files.c.id == file_id)).first()
            return None if row is None else _record(TrainingFileRecord, row)

    def file_name_taken(self, name: str) -> bool:
        """Whether a training file already uses this name (case-insensitive)."""
        with self.engine.connect() as connection:
            return connection.execute(
                sa.select(training_files.c.id).where(training_files.c.name_key == name_key(name))
            ).first() is not None

    def list_files(self) -> list[tuple[TrainingFileRecord, VersionRecord | None]]:
        """Every training file with its current version, newest activity first."""
        joined = training_files.outerjoin(
            training_file_versions,
            sa.and_(training_file_versions.c.training_file_id == training_files.c.id,
                    training_file_versions.c.version == training_files.c.current_version))
        version_cols = [c.label(f"v_{c.name}") for c in training_file_versions.c]
        query = sa.select(training_files, *version_cols).select_from(joined).order_by(
            training_files.c.updated_at.desc(), training_files.c.name_key)
        result = []
        with self.engine.connect() as connection:
            for row in connection.execute(query):
                file = _record(TrainingFileRecord, row)
                version = None
                if row._mapping["v_version"] is not None:
                    values = {name: row._mapping[f"v_{name}"]
                              for name in VersionRecord.__dataclass_fields__}
                    version = VersionRecord(**values)
                result.append((file, version))
        return result

    def configure_file(self, file_id: str, **settings: Any) -> bool:
        """Change a file's settings (near_duplicates, validation_fraction); False when the file
        does not exist."""
        with self.engine.begin() as connection:
            return connection.execute(sa.update(training_files).where(
                training_files.c.id == file_id).values(**settings)).rowcount == 1

    def get_version(self, file_id: str, version: int | None = None) -> VersionRecord | None:
        """A published version of a file (the current one when `version` is None)."""
        with self.engine.connect() as connection:
            if version is None:
                version = connection.execute(
                    sa.select(training_files.c.current_version).where(
                        training_files.c.id == file_id)).scalar()
                if version is None:
                    return None
            row = connection.execute(
                sa.select(training_file_versions).where(
                    training_file_versions.c.training_file_id == file_id,
                    training_file_versions.c.version == version)).first()
            return None if row is None else _record(VersionRecord, row)

    def version_objects(self, file_id: str, version: int) -> list[ObjectRecord]:
        """The objects of a published version, in the order they were recorded."""
        objects = training_file_version_objects
        with self.engine.connect() as connection:
            rows = connection.execute(sa.select(objects).where(
                objects.c.training_file_id == file_id, objects.c.version == version,
            ).order_by(objects.c.id))
            return [_record(ObjectRecord, row) for row in rows]

    def version_object_names(self, file_id: str) -> dict[int, set[str]]:
        """The names of the objects of each version of a file that lists them."""
        objects = training_file_version_objects
        found: dict[int, set[str]] = {}
        with self.engine.connect() as connection:
            for row in connection.execute(sa.select(objects.c.version, objects.c.name).where(
                    objects.c.training_file_id == file_id)):
                found.setdefault(row.version, set()).add(row.name)
        return found

    def list_versions(self, file_id: str) -> list[VersionRecord]:
        """Every published version of a file, oldest first."""
        with self.engine.connect() as connection:
            rows = connection.execute(
                sa.select(training_file_versions).where(
                    training_file_versions.c.training_file_id == file_id
                ).order_by(training_file_versions.c.version))
            return [_record(VersionRecord, row) for row in rows]

    def member_versions(self, file_id: str, conversation_ids: Iterable[str]) -> dict[str, int]:
        """Which of these conversations the file already holds, with the version that added each."""
        ids = sorted(set(conversation_ids))
        found: dict[str, int] = {}
        with self.engine.connect() as connection:
            for start in range(0, len(ids), 500):
                chunk = ids[start:start + 500]
                rows = connection.execute(
                    sa.select(training_file_conversations.c.conversation_id,
                              training_file_conversations.c.added_in_version).where(
                        training_file_conversations.c.training_file_id == file_id,
                        training_file_conversations.c.conversation_id.in_(
                            [sa.type_coerce(i, conversations.c.conversation_id.type)
                             for i in chunk])))
                found.update({row.conversation_id: row.added_in_version for row in rows})
        return found

    def iter_members(self, file_id: str) -> Iterator[MemberRecord]:
        """The conversations of a file in file order, streamed."""
        query = sa.select(training_file_conversations).where(
            training_file_conversations.c.training_file_id == file_id
        ).order_by(training_file_conversations.c.position)
        with self.engine.connect() as connection:
            result = connection.execution_options(yield_per=1000).execute(query)
            for row in result:
                yield _record(MemberRecord, row)

    def files_containing(
        self, conversation_id: str
    ) -> list[tuple[TrainingFileRecord, MemberRecord]]:
        """Every training file that holds this conversation, with its membership row."""
        query = sa.select(training_files, *[c.label(f"m_{c.name}")
                                            for c in training_file_conversations.c]).join(
            training_file_conversations,
            training_file_conversations.c.training_file_id == training_files.c.id,
        ).where(training_file_conversations.c.conversation_id == sa.type_coerce(
            conversation_id, conversations.c.conversation_id.type)
        ).order_by(training_files.c.name_key)
        with self.engine.connect() as connection:
            result = []
            for row in connection.execute(query):
                member = MemberRecord(**{name: row._mapping[f"m_{name}"]
                                         for name in MemberRecord.__dataclass_fields__})
                result.append((_record(TrainingFileRecord, row), member))
            return result

    # --- Selection requests ----------------------------------------------------------------------

    def insert_request(self, request: SelectionRequest, now: datetime) -> None:
        """Store a new selection request."""
        values = request.model_dump(exclude={"error"})
        values["error"] = None if request.error is None else request.error.model_dump()
        values["created_at"] = values["created_at"] or now
        values["updated_at"] = now
        with self.engine.begin() as connection:
            connection.execute(sa.insert(selection_requests).values(**values))

    def get_request(self, request_id: str) -> SelectionRequest | None:
        """A selection request by id."""
        with self.engine.connect() as connection:
            row = connection.execute(sa.select(selection_requests).where(
                selection_requests.c.id == request_id)).first()
            return None if row is None else _request(row)

    def list_requests(
        self, *, status: str | None = None, limit: int | None = None,
        after_id: str | None = None,
    ) -> list[SelectionRequest]:
        """Requests oldest first, optionally by status. With `after_id`, a keyset page in id order
        (stable whatever text form other writers gave `created_at`)."""
        query = sa.select(selection_requests)
        if status is not None:
            query = query.where(selection_requests.c.status == status)
        if after_id is not None:
            query = query.where(selection_requests.c.id > after_id).order_by(
                selection_requests.c.id)
        else:
            query = query.order_by(selection_requests.c.created_at, selection_requests.c.id)
        if limit is not None:
            query = query.limit(limit)
        with self.engine.connect() as connection:
            return [_request(row) for row in connection.execute(query)]

    def transition_request(
        self, request_id: str, *, from_statuses: Sequence[str], to: str, now: datetime,
        **values: Any,
    ) -> bool:
        """Move a request to a new status only if it is in `from_statuses` (compare-and-set)."""
        if "error" in values and isinstance(values["error"], RequestError):
            values["error"] = values["error"].model_dump()
        with self.engine.begin() as connection:
            result = connection.execute(
                sa.update(selection_requests).where(
                    selection_requests.c.id == request_id,
                    selection_requests.c.status.in_(list(from_statuses)),
                ).values(status=to, updated_at=now, **values))
            return result.rowcount == 1

    def claim_request(self, request_id: str, target_file_id: str, now: datetime,
                      claimed_by: str = "sensor") -> bool:
        """pending → queued, exactly once: only the caller whose update matched the row wins."""
        with self.engine.begin() as connection:
            result = connection.execute(
                sa.update(selection_requests).where(
                    selection_requests.c.id == request_id,
                    selection_requests.c.status == "pending",
                ).values(status="queued", target_file_id=target_file_id,
                         attempts=selection_requests.c.attempts + 1, updated_at=now,
                         claimed_by=claimed_by, heartbeat_at=now))
            return result.rowcount == 1

    def fail_attempt(
        self, request_id: str, *, attempt: int | None, status: str, error: dict[str, Any],
        now: datetime, retry_below: int = 0, dagster_run_id: str | None = None,
    ) -> str | None:
        """End the current attempt of a claimed request: back to `pending` when the failure is
        transient and fewer than `retry_below` attempts were made, else `status`.

        Only a request still `queued` or `running` under `attempt` (any attempt if None) changes:
        a late report about an attempt that already ended or was superseded changes nothing.
        Returns the status written, or None when nothing changed.
        """
        table = selection_requests
        conditions = [table.c.id == request_id, table.c.status.in_(["queued", "running"])]
        if attempt is not None:
            conditions.append(table.c.attempts == attempt)
        new_status = sa.case((table.c.attempts < retry_below, "pending"), else_=status)
        values: dict[str, Any] = {"status": new_status, "error": error, "updated_at": now,
                                  "claimed_by": None, "heartbeat_at": None}
        if dagster_run_id is not None:
            values["dagster_run_id"] = dagster_run_id
        with self.engine.begin() as connection:
            result = connection.execute(sa.update(table).where(*conditions).values(**values))
            if result.rowcount != 1:
                return None
            return connection.execute(sa.select(table.c.status).where(
                table.c.id == request_id)).scalar_one()

    def requests_in_flight(self, limit: int = 500) -> list[SelectionRequest]:
        """Claimed requests that have not ended (`queued` or `running`), oldest claim first."""
        query = sa.select(selection_requests).where(
            selection_requests.c.status.in_(["queued", "running"])
        ).order_by(selection_requests.c.updated_at, selection_requests.c.id).limit(limit)
        with self.engine.connect() as connection:
            return [_request(row) for row in connection.execute(query)]

    def open_requests_by_file(self) -> dict[str, list[SelectionRequest]]:
        """Requests that have not ended (pending, queued, running), by the existing file they
        target, oldest first."""
        target = sa.func.coalesce(selection_requests.c.target_file_id,
                                  selection_requests.c.training_file_id)
        query = sa.select(selection_requests).where(
            selection_requests.c.status.in_(["pending", "queued", "running"]),
            target.is_not(None)).order_by(selection_requests.c.created_at,
                                          selection_requests.c.id)
        found: dict[str, list[SelectionRequest]] = {}
        with self.engine.connect() as connection:
            for row in connection.execute(query):
                request = _request(row)
                file_id = request.target_file_id or request.training_file_id
                assert file_id is not None
                found.setdefault(file_id, []).append(request)
        return found

    def requests_by_id(self, request_ids: Iterable[str]) -> dict[str, SelectionRequest]:
        """The requests with these ids that exist."""
        ids = sorted(set(request_ids))
        found: dict[str, SelectionRequest] = {}
        with self.engine.connect() as connection:
            for start in range(0, len(ids), 500):
                rows = connection.execute(sa.select(selection_requests).where(
                    selection_requests.c.id.in_(ids[start:start + 500])))
                found.update({row.id: _request(row) for row in rows})
        return found

    def hand_over_request(self, request_id: str, *, from_holder: str | None, to: str,
                          now: datetime) -> bool:
        """Give a queued request's claim to another holder (a dead `--wait` to the sensor)."""
        holder = selection_requests.c.claimed_by
        with self.engine.begin() as connection:
            result = connection.execute(sa.update(selection_requests).where(
                selection_requests.c.id == request_id,
                selection_requests.c.status == "queued",
                holder.is_(None) if from_holder is None else holder == from_holder,
            ).values(claimed_by=to, heartbeat_at=now, updated_at=now))
            return result.rowcount == 1

    # --- Liveness ------------------------------------------------------------------------------

    def beat(self, *, now: datetime, run_id: str | None = None,
             training_file_id: str | None = None, request_id: str | None = None) -> None:
        """Record that a run (and the request it works on) is alive."""
        with self.engine.begin() as connection:
            if request_id is not None:
                connection.execute(sa.update(selection_requests).where(
                    selection_requests.c.id == request_id,
                    selection_requests.c.status.in_(["queued", "running"]),
                ).values(heartbeat_at=now))
            if run_id is None:
                return
            updated = connection.execute(sa.update(run_heartbeats).where(
                run_heartbeats.c.run_id == run_id).values(beat_at=now))
            if updated.rowcount == 0:
                connection.execute(sa.insert(run_heartbeats).values(
                    run_id=run_id, training_file_id=training_file_id, request_id=request_id,
                    beat_at=now))

    def end_beats(self, run_id: str) -> None:
        """Forget a run's heartbeat once it is over."""
        with self.engine.begin() as connection:
            connection.execute(sa.delete(run_heartbeats).where(run_heartbeats.c.run_id == run_id))

    def forget_silent_beats(self, before: datetime) -> int:
        """Forget the heartbeats of runs silent since before `before` (their processes died)."""
        with self.engine.begin() as connection:
            return connection.execute(sa.delete(run_heartbeats).where(
                run_heartbeats.c.beat_at < before)).rowcount

    def last_beats(self, run_ids: Iterable[str]) -> dict[str, datetime]:
        """When each of these runs last beat (runs that never did are absent)."""
        ids = list(run_ids)
        if not ids:
            return {}
        with self.engine.connect() as connection:
            return {row.run_id: row.beat_at for row in connection.execute(
                sa.select(run_heartbeats.c.run_id, run_heartbeats.c.beat_at).where(
                    run_heartbeats.c.run_id.in_(ids)))}

    # --- Build leases --------------------------------------------------------------------------

    def acquire_build(
        self, file_id: str, version: int, *, owner: str, now: datetime, ttl: float,
        dagster_run_id: str | None = None, on_acquired: Callable[[], None] = lambda: None,
    ) -> BuildClaim:
        """Reserve `version` of a file for one build, if the file stands at `version - 1` and no
        other live build holds it. A lease whose holder stopped renewing it is taken over.

        `on_acquired` runs inside the reserving transaction, while no other build can take the
        lease or publish: the place to clear what an abandoned build left at the version's keys.
        """
        builds = training_file_builds
        expires = now + timedelta(seconds=ttl)
        values = {"version": version, "owner": owner, "dagster_run_id": dagster_run_id,
                  "acquired_at": now, "expires_at": expires}
        try:
            with self.engine.begin() as connection:
                # Writes first: on SQLite the transaction takes the write lock before it reads,
                # and on PostgreSQL the row stays locked until commit.
                taken = connection.execute(sa.update(builds).where(
                    builds.c.training_file_id == file_id, builds.c.expires_at < now,
                ).values(**values)).rowcount == 1
                if not taken:
                    try:
                        with connection.begin_nested():
                            connection.execute(sa.insert(builds).values(
                                training_file_id=file_id, **values))
                    except IntegrityError:
                        return BuildClaim.BUSY
                current = connection.execute(sa.select(training_files.c.current_version).where(
                    training_files.c.id == file_id)).scalar()
                if (current or 0) != version - 1:
                    raise _Moved
                on_acquired()
                return BuildClaim.ACQUIRED
        except _Moved:
            return BuildClaim.MOVED

    def renew_build(self, file_id: str, *, owner: str, now: datetime, ttl: float) -> bool:
        """Extend a build lease; False when this owner no longer holds it."""
        builds = training_file_builds
        with self.engine.begin() as connection:
            return connection.execute(sa.update(builds).where(
                builds.c.training_file_id == file_id, builds.c.owner == owner,
            ).values(expires_at=now + timedelta(seconds=ttl))).rowcount == 1

    def release_build(self, file_id: str, *, owner: str,
                      on_release: Callable[[], None] = lambda: None) -> bool:
        """Give a build lease up (after a failed build); `on_release` runs while it is held."""
        builds = training_file_builds
        with self.engine.begin() as connection:
            held = connection.execute(sa.delete(builds).where(
                builds.c.training_file_id == file_id, builds.c.owner == owner)).rowcount == 1
            if held:
                on_release()
            return held

    def request_attempts(self, request_id: str) -> int:
        """How many times a request has been claimed (part of its run key)."""
        with self.engine.connect() as connection:
            return int(connection.execute(sa.select(selection_requests.c.attempts).where(
                selection_requests.c.id == request_id)).scalar() or 0)

    # --- Staleness -------------------------------------------------------------------------------

    def stale_members(self, file_id: str | None = None) -> list[tuple[MemberRecord, CatalogRow]]:
        """Members whose conversation changed since it was built into its file: a newer
        `updated_at` or another enriched file path (compared as instants, whatever the
        text form)."""
        query = sa.select(training_file_conversations, *[
            c.label(f"c_{name}") for name, c in zip(
                [c.name for c in conversations.c] + ["batch_id"], catalog_columns, strict=True)
        ]).join(catalog, catalog.c.conversation_id == training_file_conversations.c.conversation_id)
        if file_id is not None:
            query = query.where(training_file_conversations.c.training_file_id == file_id)
        query = query.order_by(training_file_conversations.c.training_file_id,
                               training_file_conversations.c.position)
        stale = []
        with self.engine.connect() as connection:
            for row in connection.execution_options(yield_per=1000).execute(query):
                member = _record(MemberRecord, row)
                current = CatalogRow(**{name: row._mapping[f"c_{name}"]
                                        for name in CatalogRow.__dataclass_fields__})
                moved = (current.updated_at is not None and member.source_updated_at is not None
                         and current.updated_at > member.source_updated_at)
                if moved or current.enriched_file_path != member.source_key:
                    stale.append((member, current))
        return stale

    # --- Publication -------------------------------------------------------------------------

    def publish_version(self, publication: Publication, request_ids: Sequence[str]) -> None:
        """Make a built version current: file pointer (compare-and-swap), version row, membership
        and request statuses change together or not at all."""
        version = publication.version
        now = publication.published_at or version.created_at
        with self.engine.begin() as connection:
            if publication.build_owner is not None:
                builds = training_file_builds
                held = connection.execute(sa.delete(builds).where(
                    builds.c.training_file_id == version.training_file_id,
                    builds.c.owner == publication.build_owner,
                    builds.c.version == version.version,
                )).rowcount == 1
                if not held:
                    raise StaleVersion(
                        f"version {version.version} of training file {version.training_file_id} "
                        "was taken over by another build while this one was building it")
            if publication.new_file is not None:
                self._insert_file(connection, publication, now)
            else:
                self._advance_file(connection, publication, now)
            connection.execute(sa.insert(training_file_versions).values(
                **{name: getattr(version, name) for name in VersionRecord.__dataclass_fields__}))
            if publication.objects:
                connection.execute(sa.insert(training_file_version_objects), [
                    {"training_file_id": version.training_file_id, "version": version.version,
                     "name": o.name, "key": o.key, "sha256": o.sha256, "size": o.size}
                    for o in publication.objects])
            if publication.added_members:
                connection.execute(sa.insert(training_file_conversations), [
                    {**_member_values(m), "created_at": now} for m in publication.added_members])
            for member in publication.rebuilt_members:
                connection.execute(sa.update(training_file_conversations).where(
                    training_file_conversations.c.training_file_id == member.training_file_id,
                    training_file_conversations.c.conversation_id == member.conversation_id,
                ).values(**_member_values(member)))
            for conversation_id, side in publication.placed.items():
                connection.execute(sa.update(training_file_conversations).where(
                    training_file_conversations.c.training_file_id == version.training_file_id,
                    training_file_conversations.c.conversation_id == conversation_id,
                    training_file_conversations.c.split.is_(None),
                ).values(split=side))
            for request_id in request_ids:
                conditions = [selection_requests.c.id == request_id,
                              selection_requests.c.status.in_(["queued", "running"])]
                if publication.request_attempt is not None:
                    conditions.append(
                        selection_requests.c.attempts == publication.request_attempt)
                updated = connection.execute(sa.update(selection_requests).where(
                    *conditions,
                ).values(status="succeeded", result_version=version.version, error=None,
                         dagster_run_id=version.dagster_run_id, updated_at=now,
                         claimed_by=None, heartbeat_at=None))
                if updated.rowcount != 1:
                    raise StaleVersion(
                        f"request {request_id} is no longer waiting to be published")

    def _insert_file(self, connection: Connection, publication: Publication, now: datetime) -> None:
        new = publication.new_file
        assert new is not None
        try:
            with connection.begin_nested():
                connection.execute(sa.insert(training_files).values(
                    id=new.id, name=new.name, name_key=name_key(new.name),
                    description=new.description, created_by=new.created_by,
                    created_at=new.created_at, updated_at=now,
                    current_version=publication.version.version, status="ready",
                    vertical=publication.vertical,
                    consultant_profile=publication.consultant_profile,
                    near_duplicates=new.near_duplicates,
                    validation_fraction=new.validation_fraction))
        except IntegrityError as exc:
            if self.get_file_in(connection, new.id) is not None:
                raise StaleVersion(f"training file {new.id} was already created") from exc
            raise RequestRejected(
                f"a training file named {new.name!r} already exists") from exc

    @staticmethod
    def get_file_in(connection: Connection, file_id: str) -> sa.Row[Any] | None:
        """A training_files row read inside an open transaction."""
        return connection.execute(
            sa.select(training_files.c.id).where(training_files.c.id == file_id)).first()

    @staticmethod
    def _advance_file(connection: Connection, publication: Publication, now: datetime) -> None:
        version = publication.version
        expected = publication.expected_current_version
        current = training_files.c.current_version
        result = connection.execute(sa.update(training_files).where(
            training_files.c.id == version.training_file_id,
            current.is_(None) if expected is None else current == expected,
        ).values(current_version=version.version, updated_at=now, status="ready"))
        if result.rowcount != 1:
            raise StaleVersion(
                f"training file {version.training_file_id} moved past version {expected} "
                f"while version {version.version} was being built")


class _Moved(Exception):
    """Rolls a lease back: the file moved past the version it was asked for."""


def _member_values(member: MemberRecord) -> dict[str, Any]:
    return {name: getattr(member, name) for name in MemberRecord.__dataclass_fields__}


def _request(row: sa.Row[Any]) -> SelectionRequest:
    values = dict(row._mapping)
    error = values.get("error")
    if isinstance(error, dict):
        try:
            values["error"] = RequestError.model_validate(error)
        except ValueError:
            values["error"] = RequestError(message=str(error))
    elif error is not None:
        values["error"] = RequestError(message=str(error))
    return SelectionRequest.model_validate(values)
