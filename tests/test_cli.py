"""End-to-end tests of the `brightrun` command line on SQLite and on a real PostgreSQL database.

The source tables are filled with plain SQL INSERT statements and the enriched files are written
straight into the local bucket directory, the way the upstream application and a reviewer with
`psql` would. Every published version is checked with the independent contract oracle.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import re
import secrets
import stat
import subprocess
import sys
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, redirect_stderr, redirect_stdout
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import orjson
import psycopg
import pytest
import sqlalchemy as sa
from contract_oracle import SourceConversation, check_version
from psycopg import sql

from brightrun_pipeline.cli import main
from brightrun_pipeline.demo_data import (
    BASE_TIME,
    DemoBatch,
    DemoBatchItem,
    DemoConversation,
    generate_demo_dataset,
    iter_demo_conversations,
)

BACKENDS = ("sqlite", "postgresql")
POSTGRES_ADMIN = "host=127.0.0.1 port=5432 user=postgres dbname=postgres connect_timeout=5"
VENV_BRIGHTRUN = Path(sys.executable).parent / "brightrun"
UUID_RE = r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"

FILE_NAME = "Harbourlight Core LoRA"
FILE_DESCRIPTION = "Two batches of eighty, picked by hand"


# --- Running the CLI ------------------------------------------------------------------------


@dataclass(frozen=True)
class Result:
    """What one `brightrun` invocation did."""

    code: int
    out: str
    err: str

    @property
    def output(self) -> str:
        """Standard output and standard error together."""
        return self.out + self.err

    def expect(self, code: int) -> Result:
        """Assert the exit code (output shown when it differs) and that no traceback leaked."""
        assert self.code == code, f"exit {self.code}, expected {code}\n{self.output}"
        assert "Traceback" not in self.output, self.output
        assert "Stack Trace" not in self.output, self.output
        return self

    def json(self) -> Any:
        """Standard output parsed as JSON."""
        return json.loads(self.out)


def _exit_code(exc: SystemExit) -> int:
    if exc.code is None:
        return 0
    return exc.code if isinstance(exc.code, int) else 1


def _call_main(args: Sequence[str]) -> int:
    try:
        main([str(a) for a in args])
    except SystemExit as exc:
        return _exit_code(exc)
    return 0


class Cli:
    """`brightrun` run in this process with the test's environment; output captured by capsys."""

    def __init__(self, capsys: pytest.CaptureFixture[str]) -> None:
        self.capsys = capsys

    def __call__(self, *args: object) -> Result:
        self.capsys.readouterr()
        code = _call_main([str(a) for a in args])
        captured = self.capsys.readouterr()
        return Result(code, captured.out, captured.err)


def _run_redirected(*args: object) -> Result:
    """`brightrun` in this process for module-scoped setup, where capsys is not available."""
    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        code = _call_main([str(a) for a in args])
    return Result(code, out.getvalue(), err.getvalue())


# --- Databases and environments -------------------------------------------------------------


def _postgres_admin() -> psycopg.Connection:
    try:
        return psycopg.connect(POSTGRES_ADMIN, autocommit=True)
    except psycopg.OperationalError as exc:
        pytest.fail("PostgreSQL must be running on 127.0.0.1:5432 (user postgres, trust auth) "
                    f"for the CLI tests; connecting failed: {exc}", pytrace=False)


@contextmanager
def _database_url(backend: str, directory: Path) -> Iterator[str]:
    """A database nobody else uses: a SQLite file, or a throwaway PostgreSQL database."""
    if backend == "sqlite":
        yield f"sqlite:///{directory / 'brightrun.db'}"
        return
    name = f"brightrun_cli_{secrets.token_hex(6)}"
    with _postgres_admin() as admin:
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        # The plain URL a user would write: SQLAlchemy picks its default PostgreSQL driver.
        yield f"postgresql://postgres@127.0.0.1:5432/{name}"
    finally:
        with _postgres_admin() as admin:
            admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(
                sql.Identifier(name)))


def _environment(database_url: str, directory: Path) -> dict[str, str]:
    return {
        "BRIGHTRUN_DATABASE_URL": database_url,
        "BRIGHTRUN_STORAGE_ROOT": str(directory / "storage"),
        "DAGSTER_HOME": str(directory / "dagster"),
    }


def _apply(monkeypatch: pytest.MonkeyPatch, env: dict[str, str]) -> None:
    for name in list(os.environ):
        if name.startswith("BRIGHTRUN_"):
            monkeypatch.delenv(name)
    for name, value in env.items():
        monkeypatch.setenv(name, value)


# --- Source rows written with plain SQL -------------------------------------------------------


def _literal(value: object) -> str:
    """A SQL literal for text(): strings quoted, colons escaped from bind-parameter parsing."""
    if value is None:
        return "NULL"
    if isinstance(value, bool):
        raise TypeError("no booleans in the source tables")
    if isinstance(value, int | float):
        return repr(value)
    text = str(value).replace("'", "''").replace(":", "\\:")
    return f"'{text}'"


def _insert(connection: sa.Connection, table: str, rows: Sequence[dict[str, object]]) -> None:
    if not rows:
        return
    columns = list(rows[0])
    values = ",\n".join("(" + ", ".join(_literal(row[c]) for c in columns) + ")" for row in rows)
    connection.execute(sa.text(f"INSERT INTO {table} ({', '.join(columns)}) VALUES\n{values}"))


def _iso(moment: datetime) -> str:
    return moment.isoformat()


# Different SQL clients write timestamps differently; the output must not care.
_TIMESTAMP_STYLES = (
    lambda m: m.isoformat(),
    lambda m: m.strftime("%Y-%m-%dT%H:%M:%SZ"),
    lambda m: m.astimezone(timezone(timedelta(hours=2))).isoformat(),
    lambda m: m.isoformat(sep=" "),
)


def _contract_created(moment: datetime) -> str:
    """`created_date` of a conversation block: ISO-8601 in UTC with microseconds."""
    return moment.astimezone(UTC).isoformat(timespec="microseconds")


@dataclass
class Source:
    """One conversation as inserted, with what the oracle needs to know about it."""

    conversation: DemoConversation
    batch_id: str | None
    created_at: datetime

    @property
    def id(self) -> str:
        """The conversation ID."""
        return self.conversation.conversation_id

    @property
    def key(self) -> str:
        """Its enriched_file_path."""
        return str(self.conversation.row["enriched_file_path"])

    @property
    def file_bytes(self) -> bytes:
        """The bytes of its (intact) enriched file."""
        assert self.conversation.file_bytes is not None
        return self.conversation.file_bytes

    def oracle(self, added_in_version: int) -> SourceConversation:
        """The oracle's view of this conversation in a version."""
        row = self.conversation.row
        score = row["quality_score"]
        return SourceConversation(
            conversation_id=self.id, batch_id=self.batch_id, source_key=self.key,
            source_bytes=self.file_bytes,
            quality_score=None if score is None else float(score),  # type: ignore[arg-type]
            persona_key=row["persona_key"],  # type: ignore[arg-type]
            emotional_arc_key=row["emotional_arc_key"],  # type: ignore[arg-type]
            topic_key=row["topic_key"],  # type: ignore[arg-type]
            created_at=_contract_created(self.created_at),
            added_in_version=added_in_version)


@dataclass
class Sources:
    """Everything inserted into the source tables and the source bucket."""

    batch1: DemoBatch
    batch2: DemoBatch
    earlier_batch: DemoBatch
    later_batch: DemoBatch
    mixed_batch: DemoBatch
    broken_batch: DemoBatch
    by_id: dict[str, Source]
    first: list[Source]          # batch 1, the first 80: version 1
    second: list[Source]         # batch 2, the first 80: version 2
    spares: list[Source]         # the other 10 of batches 1 and 2, in no file
    mixed: list[Source]          # a batch with ineligible conversations
    ineligible: dict[str, Source]
    broken: dict[str, Source]    # eligible by the rules, but their source file is not usable
    good_of_broken_batch: list[Source]
    unbatched: Source
    batch_of: dict[str, str | None] = field(default_factory=dict)


def _write_source(storage: Path, key: str, data: bytes) -> None:
    path = storage / "conversation-files" / key
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


def _conversation_row(conversation: DemoConversation, index: int) -> tuple[dict[str, object],
                                                                            datetime]:
    row = dict(conversation.row)
    created = row["created_at"]
    updated = row["updated_at"]
    assert isinstance(created, datetime) and isinstance(updated, datetime)
    if index % 4 == 3:
        created = created + timedelta(microseconds=123456)
    row["created_at"] = _TIMESTAMP_STYLES[index % 4](created)
    row["updated_at"] = _iso(updated)
    return row, created


def _item_row(item: DemoBatchItem) -> dict[str, object]:
    return {"id": item.id, "batch_job_id": item.batch_job_id,
            "conversation_id": item.conversation_id, "status": item.status,
            "created_at": _iso(item.created_at)}


def _batch_row(batch: DemoBatch) -> dict[str, object]:
    return {"id": batch.id, "name": batch.name, "status": batch.status, "tier": batch.tier,
            "total_items": batch.total_items, "created_at": _iso(batch.created_at)}


def _extra_batch(name: str, created: datetime) -> DemoBatch:
    return DemoBatch(id=str(uuid.uuid4()), name=name, status="completed", tier="scenario",
                     total_items=3, created_at=created)


def seed_sources(database_url: str, storage: Path) -> Sources:
    """170 conversations in two batches of 85, plus a batch with ineligible conversations, one
    with broken source files, one outside any batch, and extra batch items that move or keep the
    Batch ID — all with plain SQL."""
    streamed = list(iter_demo_conversations(29, 170, batch_size=85))
    batch1, batch2 = streamed[0][0], streamed[85][0]
    assert batch1 is not None and batch2 is not None and batch1.id != batch2.id
    extra = generate_demo_dataset(31, batches=2, conversations_per_batch=8, unbatched=1,
                                  ineligible_per_batch=2)
    mixed_batch, broken_batch = extra.batches

    batches = [batch1, batch2, mixed_batch, broken_batch]
    items: list[DemoBatchItem] = []
    conversations: list[tuple[DemoConversation, str | None]] = []
    for _, item, conversation in streamed:
        assert item is not None
        items.append(item)
        conversations.append((conversation, item.batch_job_id))
    items.extend(extra.items)
    conversations.extend((c, c.batch_id) for c in extra.conversations)

    # A conversation's Batch ID is the batch of its earliest item: three of batch 2 were first
    # produced by an earlier batch, three of batch 1 were produced again by a later one.
    earlier = _extra_batch("Batch replayed", BASE_TIME - timedelta(days=3))
    later = _extra_batch("Batch re-run", BASE_TIME + timedelta(days=20))
    batches += [earlier, later]
    second_ids = [c.conversation_id for c, _ in conversations[85:88]]
    first_ids = [c.conversation_id for c, _ in conversations[0:3]]
    for offset, cid in enumerate(second_ids):
        items.append(DemoBatchItem(str(uuid.uuid4()), earlier.id, cid, "completed",
                                   earlier.created_at + timedelta(seconds=offset)))
    for offset, cid in enumerate(first_ids):
        items.append(DemoBatchItem(str(uuid.uuid4()), later.id, cid, "completed",
                                   later.created_at + timedelta(seconds=offset)))
    items.append(DemoBatchItem(str(uuid.uuid4()), later.id, None, "queued",
                               later.created_at + timedelta(seconds=9)))
    batch_of = {c.conversation_id: b for c, b in conversations}
    batch_of.update({cid: earlier.id for cid in second_ids})

    rows = []
    by_id: dict[str, Source] = {}
    for index, (conversation, _) in enumerate(conversations):
        row, created = _conversation_row(conversation, index)
        rows.append(row)
        by_id[conversation.conversation_id] = Source(
            conversation, batch_of[conversation.conversation_id], created)

    engine = sa.create_engine(database_url)
    try:
        with engine.begin() as connection:
            _insert(connection, "batch_jobs", [_batch_row(b) for b in batches])
            _insert(connection, "conversations", rows)
            _insert(connection, "batch_items", [_item_row(i) for i in items])
    finally:
        engine.dispose()

    ordered = [by_id[c.conversation_id] for c, _ in conversations]
    mixed = [s for s in ordered[170:] if s.conversation.batch_id == mixed_batch.id]
    in_broken_batch = [s for s in ordered[170:] if s.conversation.batch_id == broken_batch.id]
    ineligible = {s.id: s for s in ordered[170:]
                  if s.conversation.row["enrichment_status"] != "completed"
                  or s.conversation.row["enriched_file_path"] is None}
    eligible_broken_batch = [s for s in in_broken_batch if s.id not in ineligible]
    assert len(ineligible) == 4 and len(eligible_broken_batch) == 6
    broken = dict(zip(("missing", "not_json", "not_enriched", "recoverable"),
                      eligible_broken_batch[:4], strict=True))
    for source in ordered:
        if source.conversation.file_bytes is not None and source not in broken.values():
            _write_source(storage, source.key, source.file_bytes)
    _write_source(storage, broken["not_json"].key, b'{"training_pairs": [ truncated')
    _write_source(storage, broken["recoverable"].key, b"\x00\x01 not JSON at all")
    document = orjson.loads(broken["not_enriched"].file_bytes)
    del document["training_pairs"]
    _write_source(storage, broken["not_enriched"].key, orjson.dumps(document))

    unbatched = [s for s in ordered[170:] if s.batch_id is None]
    assert len(unbatched) == 1
    return Sources(
        batch1=batch1, batch2=batch2, earlier_batch=earlier, later_batch=later,
        mixed_batch=mixed_batch, broken_batch=broken_batch, by_id=by_id,
        first=ordered[0:80], second=ordered[85:165], spares=ordered[80:85] + ordered[165:170],
        mixed=mixed, ineligible=ineligible, broken=broken,
        good_of_broken_batch=eligible_broken_batch[4:], unbatched=unbatched[0],
        batch_of=batch_of)


# --- What the database and the training bucket hold -------------------------------------------


@dataclass(frozen=True)
class Snapshot:
    """Row counts of the owned tables and the objects of the training bucket."""

    files: int
    versions: int
    members: int
    requests: int
    objects: frozenset[str]


def snapshot(database_url: str, storage: Path) -> Snapshot:
    """What a rejected request must leave untouched."""
    engine = sa.create_engine(database_url)
    try:
        with engine.connect() as connection:
            counts = [connection.execute(sa.text(f"SELECT count(*) FROM {table}")).scalar_one()
                      for table in ("training_files", "training_file_versions",
                                    "training_file_conversations", "selection_requests")]
    finally:
        engine.dispose()
    bucket = storage / "training-files"
    objects = frozenset(str(p.relative_to(bucket)) for p in bucket.rglob("*") if p.is_file())
    return Snapshot(*counts, objects=objects)


def file_row_named(database_url: str, name: str) -> list[Any]:
    """training_files rows whose name equals `name` exactly."""
    engine = sa.create_engine(database_url)
    try:
        with engine.connect() as connection:
            return list(connection.execute(
                sa.text("SELECT id FROM training_files WHERE name = :name"), {"name": name}))
    finally:
        engine.dispose()


def _ids_file(path: Path, ids: Sequence[str]) -> Path:
    path.write_text("\n".join(ids) + "\n", encoding="utf-8")
    return path


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# --- The shared world: one per backend, with a file published at versions 1 and 2 -------------


@dataclass
class World:
    """A database and storage with source data and the training file FILE_NAME at version 2."""

    backend: str
    directory: Path
    env: dict[str, str]
    sources: Sources
    file_id: str
    request_ids: list[str]
    create: Result
    add: Result

    @property
    def database_url(self) -> str:
        """BRIGHTRUN_DATABASE_URL."""
        return self.env["BRIGHTRUN_DATABASE_URL"]

    @property
    def storage(self) -> Path:
        """BRIGHTRUN_STORAGE_ROOT."""
        return Path(self.env["BRIGHTRUN_STORAGE_ROOT"])

    def snapshot(self) -> Snapshot:
        """Row counts and training objects now."""
        return snapshot(self.database_url, self.storage)


@pytest.fixture(scope="module", params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    """The database the CLI talks to."""
    return request.param


@pytest.fixture(scope="module")
def world(backend: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    """`brightrun init`, source rows by SQL, then `files create` (80) and `files add` (80 more)."""
    directory = tmp_path_factory.mktemp(f"cli-{backend}")
    with _database_url(backend, directory) as url, pytest.MonkeyPatch.context() as patch:
        env = _environment(url, directory)
        _apply(patch, env)
        _run_redirected("init").expect(0)
        sources = seed_sources(url, Path(env["BRIGHTRUN_STORAGE_ROOT"]))

        first_ids = [s.id for s in sources.first]
        # Pasted lists are not always tidy: a comment, a blank line, upper case, stray spaces.
        first_lines = ["# batch 1, first eighty", "", first_ids[0].upper(),
                       f"  {first_ids[1]}  ", *first_ids[2:]]
        ids_a = _ids_file(directory / "a.txt", first_lines)
        ids_b = _ids_file(directory / "b.txt", [s.id for s in sources.second])
        create = _run_redirected("files", "create", FILE_NAME, "--description",
                                 FILE_DESCRIPTION, "--ids-file", ids_a, "--wait").expect(0)
        add = _run_redirected("files", "add", FILE_NAME.lower(), "--ids-file", ids_b,
                              "--wait").expect(0)
        shown = _run_redirected("files", "show", FILE_NAME, "--format", "json").expect(0).json()
        request_ids = [v["request_ids"][0] for v in shown["versions"]]
        yield World(backend, directory, env, sources, shown["id"], request_ids, create, add)


@pytest.fixture
def cli(world: World, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> Cli:
    """The CLI on the shared world of this backend."""
    _apply(monkeypatch, world.env)
    return Cli(capsys)


@dataclass
class Fresh:
    """An empty environment: a new database and storage, nothing initialised."""

    backend: str
    env: dict[str, str]
    directory: Path
    cli: Cli


@pytest.fixture
def fresh(backend: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
          capsys: pytest.CaptureFixture[str]) -> Iterator[Fresh]:
    """A brand-new database (of this backend) and storage directory."""
    with _database_url(backend, tmp_path) as url:
        env = _environment(url, tmp_path)
        _apply(monkeypatch, env)
        yield Fresh(backend, env, tmp_path, Cli(capsys))


# --- Create, add, download, verify ----------------------------------------------------------


def test_create_and_add_publish_versions_1_and_2(world: World, cli: Cli) -> None:
    assert re.search(rf"published '{FILE_NAME}' \({world.file_id}\) version 1: 80 conversations",
                     world.create.out), world.create.output
    assert re.search(rf"published '{FILE_NAME}' \({world.file_id}\) version 2: 160 conversations",
                     world.add.out), world.add.output
    assert re.search(rf"dagster run {UUID_RE}", world.create.out)
    for version, request_id in enumerate(world.request_ids, start=1):
        shown = cli("requests", "show", request_id).expect(0).json()
        assert shown["status"] == "succeeded"
        assert shown["result_version"] == version
        assert shown["error"] is None
        assert shown["dagster_run_id"]
    # init is idempotent on a database that already holds everything.
    assert "database ready" in cli("init").expect(0).out


@pytest.mark.parametrize("version", [1, 2])
def test_downloaded_versions_satisfy_the_contract(world: World, cli: Cli, tmp_path: Path,
                                                  version: int) -> None:
    downloaded = {}
    umask = os.umask(0)
    os.umask(umask)
    for fmt in ("json", "jsonl", "manifest"):
        target = tmp_path / "out" / f"v{version}.{fmt}"
        result = cli("files", "download", FILE_NAME, "--format", fmt, "--version", version,
                     "--output", target).expect(0)
        assert f"version {version}" in result.err
        downloaded[fmt] = target.read_bytes()
        # A file of the user's like any other (their umask), not a private temporary file.
        assert stat.S_IMODE(target.stat().st_mode) == 0o666 & ~umask
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        f"v{version}.{fmt}" for fmt in ("json", "jsonl", "manifest")]
    sources = world.sources
    expected = [s.oracle(1) for s in sources.first]
    if version == 2:
        expected += [s.oracle(2) for s in sources.second]
    check_version(downloaded["json"], downloaded["jsonl"], downloaded["manifest"],
                  training_file_id=world.file_id, file_name=FILE_NAME,
                  description=FILE_DESCRIPTION, file_version=version, conversations=expected,
                  request_ids=[world.request_ids[version - 1]])
    # Spot checks of what the oracle derives, stated in the words.
    blocks = orjson.loads(downloaded["json"])["conversations"]
    moved = blocks[80]["conversation_metadata"] if version == 2 else None
    if moved is not None:
        assert moved["batch_id"] == sources.earlier_batch.id
        assert moved["added_in_version"] == 2
    kept = blocks[0]["conversation_metadata"]
    assert kept["batch_id"] == sources.batch1.id
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}\+00:00", kept["created_date"])
    streamed = cli("files", "download", world.file_id, "--format", "jsonl", "--version",
                   version, "--output", "-").expect(0)
    assert streamed.out.encode() == downloaded["jsonl"]
    # The current version is what a download without --version gives.
    if version == 2:
        current = tmp_path / "current.jsonl"
        cli("files", "download", FILE_NAME, "--format", "jsonl", "--output", current).expect(0)
        assert current.read_bytes() == downloaded["jsonl"]


def test_verify_rebuilds_the_published_bytes(world: World, cli: Cli) -> None:
    versions = cli("files", "show", FILE_NAME, "--format", "json").expect(0).json()["versions"]
    for args, record in ((("--version", "1"), versions[0]), ((), versions[1])):
        result = cli("files", "verify", FILE_NAME, *args).expect(0)
        assert "verified" in result.out
        lines = {line.split()[0]: line.split() for line in result.out.splitlines()
                 if line.startswith("training.")}
        for name, expected_sha in (("training.json", record["json_sha256"]),
                                   ("training.jsonl", record["jsonl_sha256"])):
            words = lines[name]
            assert words[1] == "same"
            assert words[3] == words[5] == expected_sha


# --- Lineage --------------------------------------------------------------------------------


def test_lineage_of_a_conversation(world: World, cli: Cli) -> None:
    first, second = world.sources.first[5], world.sources.second[5]
    table = cli("lineage", "conversation", first.id).expect(0).out
    assert FILE_NAME in table and world.file_id in table
    assert "1–2" in table
    records = cli("lineage", "conversation", second.id, "--format", "json").expect(0).json()
    assert records == [{
        "training_file_id": world.file_id, "file_name": FILE_NAME, "added_in_version": 2,
        "versions": [2], "current_version": 2, "source_sha256": _sha256(second.file_bytes)}]
    spare = world.sources.spares[0]
    assert "is in no training file" in cli("lineage", "conversation", spare.id).expect(0).out
    unknown = str(uuid.uuid4())
    assert unknown in cli("lineage", "conversation", unknown).expect(2).err
    cli("lineage", "conversation", "not-a-uuid").expect(2)


def test_lineage_of_a_version(world: World, cli: Cli) -> None:
    rows = cli("lineage", "file", FILE_NAME, "--version", "1", "--format", "json").expect(0).json()
    assert [r["conversation_id"] for r in rows] == [s.id for s in world.sources.first]
    for row, source in zip(rows, world.sources.first, strict=True):
        assert row["source_sha256"] == _sha256(source.file_bytes)
        assert row["batch_id"] == world.sources.batch1.id
        assert row["added_in_version"] == 1
        assert row["source_key"] == source.key
    current = cli("lineage", "file", world.file_id, "--format", "csv").expect(0).out
    parsed = list(csv.DictReader(io.StringIO(current)))
    assert len(parsed) == 160
    assert {r["added_in_version"] for r in parsed} == {"1", "2"}
    assert world.sources.second[-1].id in cli("lineage", "file", FILE_NAME).expect(0).out


# --- Browsing conversations -----------------------------------------------------------------


def test_conversations_list_filters_by_batch_id(world: World, cli: Cli) -> None:
    sources = world.sources
    for batch, expected in (
        (sources.batch1.id, [s.id for s in sources.by_id.values()
                             if sources.batch_of[s.id] == sources.batch1.id]),
        (sources.batch2.id, [s.id for s in sources.by_id.values()
                             if sources.batch_of[s.id] == sources.batch2.id]),
        (sources.earlier_batch.id, [s.id for s in sources.second[:3]]),
    ):
        rows = cli("conversations", "list", "--batch", batch, "--format", "json").expect(0).json()
        assert sorted(r["conversation_id"] for r in rows) == sorted(expected)
        assert {r["batch_id"] for r in rows} == {batch}
    assert len(expected) == 3
    by_batch = {sources.batch1.id: 85, sources.batch2.id: 82}
    for batch, count in by_batch.items():
        rows = cli("conversations", "list", "--batch", batch.upper(), "--format",
                   "json").expect(0).json()
        assert len(rows) == count
    # The later batch re-ran three conversations but produced none first.
    assert cli("conversations", "list", "--batch", sources.later_batch.id, "--format",
               "json").expect(0).json() == []


def test_conversations_list_sorts_by_batch_id(world: World, cli: Cli) -> None:
    rows = cli("conversations", "list", "--sort", "batch_id", "--desc", "--format",
               "json").expect(0).json()
    assert len(rows) == len(world.sources.by_id)
    batch_ids = [r["batch_id"] for r in rows if r["batch_id"] is not None]
    assert batch_ids == sorted(batch_ids, reverse=True)
    # Conversations made outside batches come last, in either direction, on both databases.
    assert rows[-1]["conversation_id"] == world.sources.unbatched.id
    assert rows[-1]["batch_id"] is None
    for row in rows:
        assert row["batch_id"] == world.sources.batch_of[row["conversation_id"]]
    ascending = cli("conversations", "list", "--sort", "batch_id", "--format",
                    "json").expect(0).json()
    ascending_ids = [r["batch_id"] for r in ascending if r["batch_id"] is not None]
    assert ascending_ids == sorted(ascending_ids)
    assert ascending[-1]["conversation_id"] == world.sources.unbatched.id


def test_conversations_list_eligible_and_csv(world: World, cli: Cli) -> None:
    sources = world.sources
    eligible = cli("conversations", "list", "--eligible", "--format", "json").expect(0).json()
    assert {r["conversation_id"] for r in eligible} == set(sources.by_id) - set(
        sources.ineligible)
    assert all(r["eligible"] and r["status"] == "completed" for r in eligible)

    everything = cli("conversations", "list", "--format", "csv").expect(0).out
    parsed = list(csv.DictReader(io.StringIO(everything)))
    assert len(parsed) == len(sources.by_id)
    assert {"conversation_id", "batch_id", "status", "eligible"} <= set(parsed[0])
    by_id = {r["conversation_id"]: r for r in parsed}
    for cid in sources.ineligible:
        assert by_id[cid]["eligible"] == "False"
    assert by_id[sources.unbatched.id]["batch_id"] == ""
    assert by_id[sources.second[0].id]["batch_id"] == sources.earlier_batch.id

    failed = cli("conversations", "list", "--status", "failed", "--format", "json").expect(0)
    assert {r["conversation_id"] for r in failed.json()} == {
        cid for cid, s in sources.ineligible.items()
        if s.conversation.row["enrichment_status"] == "failed"}
    table = cli("conversations", "list", "--batch", sources.mixed_batch.id, "--limit", "3")
    assert len(table.expect(0).out.strip().splitlines()) == 2 + 3


# --- Files and requests -----------------------------------------------------------------------


def test_files_list_and_show(world: World, cli: Cli) -> None:
    listed = cli("files", "list", "--format", "json").expect(0).json()
    entry = next(f for f in listed if f["id"] == world.file_id)
    assert entry["name"] == FILE_NAME
    assert entry["version"] == 2
    assert entry["conversations"] == 160
    pairs = sum(len(orjson.loads(s.file_bytes)["training_pairs"])
                for s in world.sources.first + world.sources.second)
    assert entry["training_pairs"] == pairs
    assert FILE_NAME in cli("files", "list").expect(0).out

    for ref in (FILE_NAME, FILE_NAME.upper(), world.file_id):
        shown = cli("files", "show", ref, "--format", "json").expect(0).json()
        assert shown["id"] == world.file_id
        assert shown["version"] == 2 and shown["conversations"] == 160
        assert [(v["version"], v["conversations"]) for v in shown["versions"]] == [
            (1, 80), (2, 160)]
        assert shown["description"] == FILE_DESCRIPTION
    text = cli("files", "show", FILE_NAME).expect(0).out
    assert FILE_NAME in text and "160" in text


def test_requests_list_and_show(world: World, cli: Cli) -> None:
    listed = cli("requests", "list", "--format", "json").expect(0).json()
    by_id = {r["id"]: r for r in listed}
    for version, request_id in enumerate(world.request_ids, start=1):
        assert by_id[request_id]["status"] == "succeeded"
        assert by_id[request_id]["version"] == version
        assert by_id[request_id]["conversations"] == 80
    succeeded = cli("requests", "list", "--status", "succeeded", "--format", "json").expect(0)
    assert set(world.request_ids) <= {r["id"] for r in succeeded.json()}
    assert world.request_ids[0] in cli("requests", "list").expect(0).out
    shown = cli("requests", "show", world.request_ids[1]).expect(0).json()
    assert shown["training_file_id"] == world.file_id
    assert sorted(shown["conversation_ids"]) == sorted(s.id for s in world.sources.second)
    assert "no selection request" in cli("requests", "show", str(uuid.uuid4())).expect(2).err


# --- Rejections: exit 3, a reason per conversation, nothing changes ----------------------------


def _ineligible(world: World, *, status: str | None = None, has_path: bool) -> Source:
    for source in world.sources.ineligible.values():
        row = source.conversation.row
        if (row["enriched_file_path"] is not None) == has_path and (
                status is None or row["enrichment_status"] == status):
            return source
    raise AssertionError("no such conversation in the sources")


REJECTED_ADDS = {
    "not completed": (lambda w: [w.sources.spares[0].id,
                                 _ineligible(w, status="failed", has_path=False).id],
                      lambda w: {_ineligible(w, status="failed", has_path=False).id:
                                 "not 'completed'"}),
    "in progress": (lambda w: [_ineligible(w, status="enrichment_in_progress",
                                           has_path=False).id],
                    lambda w: {_ineligible(w, status="enrichment_in_progress",
                                           has_path=False).id: "enrichment_in_progress"}),
    "no enriched file": (lambda w: [_ineligible(w, status="completed", has_path=False).id],
                         lambda w: {_ineligible(w, status="completed", has_path=False).id:
                                    "enriched_file_path is null"}),
    "unknown id": (lambda w: [w.sources.spares[0].id, "0f0e0d0c-0b0a-4909-8807-060504030201"],
                   lambda w: {"0f0e0d0c-0b0a-4909-8807-060504030201":
                              "unknown conversation ID"}),
    "already in the file": (lambda w: [w.sources.spares[1].id, w.sources.first[7].id,
                                       w.sources.second[7].id],
                            lambda w: {w.sources.first[7].id: "already in",
                                       w.sources.second[7].id: "added in version 2"}),
    "repeated": (lambda w: [w.sources.spares[2].id, w.sources.spares[3].id,
                            w.sources.spares[2].id.upper()],
                 lambda w: {w.sources.spares[2].id: "repeated in the request"}),
    "not a uuid": (lambda w: [w.sources.spares[2].id, "conversation-17"],
                   lambda w: {"conversation-17": "not a conversation ID"}),
}


@pytest.mark.parametrize("case", list(REJECTED_ADDS))
def test_rejected_add_changes_nothing(world: World, cli: Cli, tmp_path: Path, case: str) -> None:
    ids_of, reasons_of = REJECTED_ADDS[case]
    ids_file = _ids_file(tmp_path / "ids.txt", ids_of(world))
    before = world.snapshot()
    result = cli("files", "add", FILE_NAME, "--ids-file", ids_file, "--wait").expect(3)
    assert result.err.startswith("rejected:")
    for cid, reason in reasons_of(world).items():
        line = next((line for line in result.err.splitlines() if cid in line), None)
        assert line is not None, f"{cid} not named in:\n{result.err}"
        assert reason in line, line
    ok_id = ids_of(world)[0]
    if ok_id not in reasons_of(world):
        assert ok_id not in result.err
    assert world.snapshot() == before


def test_rejected_create_from_a_batch_names_each_ineligible_conversation(world: World,
                                                                       cli: Cli) -> None:
    before = world.snapshot()
    result = cli("files", "create", "Mixed batch", "--batch", world.sources.mixed_batch.id,
                 "--wait").expect(3)
    ineligible = [s.id for s in world.sources.mixed if s.id in world.sources.ineligible]
    assert len(ineligible) == 2
    for cid in ineligible:
        assert cid in result.err
    assert world.snapshot() == before
    assert file_row_named(world.database_url, "Mixed batch") == []


def test_more_than_80_conversations_are_rejected(world: World, cli: Cli, tmp_path: Path) -> None:
    ids = [s.id for s in world.sources.spares] + [str(uuid.uuid4()) for _ in range(71)]
    assert len(ids) == 81
    before = world.snapshot()
    for args in (("files", "add", FILE_NAME), ("files", "create", "Too big")):
        result = cli(*args, "--ids-file", _ids_file(tmp_path / "ids.txt", ids),
                     "--wait").expect(3)
        assert "at most 80" in result.err and "81" in result.err
    assert world.snapshot() == before
    assert file_row_named(world.database_url, "Too big") == []


@pytest.mark.parametrize(("name", "reason"), [
    (FILE_NAME.lower(), "already exists"),
    (f"  {FILE_NAME.upper()}\t", "already exists"),
    ("", "empty"),
    ("   ", "empty"),
    ("n" * 121, "121 characters"),
    ("Bell\x07file", "non-printable"),
    ("two\nlines", "non-printable"),
])
def test_create_with_a_taken_or_invalid_name_is_rejected(world: World, cli: Cli, name: str,
                                                         reason: str) -> None:
    before = world.snapshot()
    for wait in (("--wait",), ()):
        result = cli("files", "create", name, "--conversation", world.sources.spares[4].id,
                     *wait).expect(3)
        assert reason in result.err
    assert world.snapshot() == before
    assert file_row_named(world.database_url, name) == []


# --- Unusable source files: exit 4, the request fails, the file stays where it was -------------


@pytest.mark.parametrize(("kind", "reason"), [
    ("missing", "is missing"),
    ("not_json", "is not valid JSON"),
    ("not_enriched", "does not match the enriched format"),
])
def test_unusable_source_fails_the_request(world: World, cli: Cli, tmp_path: Path, kind: str,
                                           reason: str) -> None:
    broken = world.sources.broken[kind]
    good = world.sources.spares[5]
    before = world.snapshot()
    ids = _ids_file(tmp_path / "ids.txt", [good.id, broken.id])
    result = cli("files", "add", FILE_NAME, "--ids-file", ids, "--wait").expect(4)
    named = [line for line in result.err.splitlines() if broken.id in line]
    assert named, result.err
    assert any(reason in line for line in named), result.err
    request_id = re.search(rf"request ({UUID_RE}) failed", result.err)
    assert request_id, result.err

    shown = cli("requests", "show", request_id[1]).expect(0).json()
    assert shown["status"] == "failed"
    assert shown["result_version"] is None
    assert broken.id in shown["error"]["conversations"]
    assert broken.id in shown["error"]["message"]
    listed = cli("requests", "list", "--status", "failed", "--format", "json").expect(0).json()
    assert request_id[1] in {r["id"] for r in listed}

    after = world.snapshot()
    assert (after.files, after.versions, after.members) == (
        before.files, before.versions, before.members)
    assert after.requests == before.requests + 1
    assert after.objects == before.objects
    shown_file = cli("files", "show", FILE_NAME, "--format", "json").expect(0).json()
    assert shown_file["version"] == 2 and shown_file["conversations"] == 160
    assert len(shown_file["versions"]) == 2
    assert "is in no training file" in cli("lineage", "conversation", good.id).expect(0).out


def test_a_fixed_source_can_be_added_after_a_failure(world: World, cli: Cli,
                                                     tmp_path: Path) -> None:
    name = "Recovery after a bad source"
    base, broken = world.sources.good_of_broken_batch[0], world.sources.broken["recoverable"]
    other = world.sources.good_of_broken_batch[1]
    cli("files", "create", name, "--conversation", base.id, "--wait").expect(0)
    ids = _ids_file(tmp_path / "ids.txt", [other.id, broken.id])
    failed = cli("files", "add", name, "--ids-file", ids, "--wait").expect(4)
    assert broken.id in failed.err
    assert cli("files", "show", name, "--format", "json").expect(0).json()["version"] == 1

    _write_source(world.storage, broken.key, broken.file_bytes)
    cli("files", "add", name, "--ids-file", ids, "--wait").expect(0)
    shown = cli("files", "show", name, "--format", "json").expect(0).json()
    assert shown["version"] == 2 and shown["conversations"] == 3
    downloaded = {}
    for fmt in ("json", "jsonl", "manifest"):
        target = tmp_path / f"recovered.{fmt}"
        cli("files", "download", name, "--format", fmt, "--output", target).expect(0)
        downloaded[fmt] = target.read_bytes()
    check_version(downloaded["json"], downloaded["jsonl"], downloaded["manifest"],
                  training_file_id=shown["id"], file_name=name, description=None,
                  file_version=2,
                  conversations=[base.oracle(1), other.oracle(2), broken.oracle(2)])
    cli("files", "verify", name).expect(0)


# --- Usage errors: exit 2, no traceback, nothing changes --------------------------------------


USAGE_ERRORS = {
    "unknown file for add": (("files", "add", "No such file", "--conversation", "{spare}"),
                             "no training file"),
    "unknown option": (("files", "list", "--colour"), "No such option"),
    "only-eligible without batch": (("files", "create", "Q", "--conversation", "{spare}",
                                     "--only-eligible"), "--only-eligible"),
    "ids file missing": (("files", "create", "Q", "--ids-file", "{missing}"), "does not exist"),
    "no selection": (("files", "create", "Q"), "exactly one of"),
    "two selections": (("files", "create", "Q", "--conversation", "{spare}", "--batch",
                        "{batch}"), "exactly one of"),
    "version that does not exist": (("files", "download", FILE_NAME, "--format", "json",
                                     "--version", "9", "--output", "{out}"), "version 9"),
    "unknown download format": (("files", "download", FILE_NAME, "--format", "xml",
                                 "--output", "{out}"), "xml"),
    "non-uuid batch to list": (("conversations", "list", "--batch", "batch-7"), "UUID"),
    "non-uuid batch to create": (("files", "create", "Q", "--batch", "batch-7"), "UUID"),
    "unknown batch": (("files", "create", "Q", "--batch", "{unknown}"), "no batch"),
    "unknown file to show": (("files", "show", "nope"), "no training file"),
    "unknown file to verify": (("files", "verify", "nope"), "no training file"),
    "verify a version that does not exist": (("files", "verify", FILE_NAME, "--version", "7"),
                                             "version 7"),
    "lineage of a version that does not exist": (("lineage", "file", FILE_NAME, "--version",
                                                  "3"), "has no published version 3"),
    "unknown command": (("file", "list"), "No such command"),
}


@pytest.mark.parametrize("case", list(USAGE_ERRORS))
def test_usage_errors_exit_2(world: World, cli: Cli, tmp_path: Path, case: str) -> None:
    args, message = USAGE_ERRORS[case]
    values = {"spare": world.sources.spares[0].id, "missing": tmp_path / "nowhere.txt",
              "out": tmp_path / "out.json", "batch": world.sources.batch1.id,
              "unknown": str(uuid.uuid4())}
    before = world.snapshot()
    result = cli(*(str(a).format(**values) for a in args)).expect(2)
    assert message in result.err
    assert result.out == ""
    assert world.snapshot() == before
    assert not (tmp_path / "out.json").exists()


# --- Only eligible, no wait -------------------------------------------------------------------


def test_only_eligible_leaves_out_what_cannot_go_in(world: World, cli: Cli) -> None:
    name = "Mixed batch, eligible only"
    mixed = world.sources.mixed
    ineligible = [s.id for s in mixed if s.id in world.sources.ineligible]
    result = cli("files", "create", name, "--batch", world.sources.mixed_batch.id,
                 "--only-eligible", "--wait").expect(0)
    for cid in ineligible:
        assert any(line.startswith(f"left out {cid}") for line in result.err.splitlines()), \
            result.err
    assert "version 1: 6 conversations" in result.out
    rows = cli("lineage", "file", name, "--format", "json").expect(0).json()
    assert {r["conversation_id"] for r in rows} == {s.id for s in mixed} - set(ineligible)
    assert {r["batch_id"] for r in rows} == {world.sources.mixed_batch.id}

    # Once the batch is in, nothing is left to add: rejected, and the file stays at version 1.
    before = world.snapshot()
    again = cli("files", "add", name, "--batch", world.sources.mixed_batch.id,
                "--only-eligible", "--wait").expect(3)
    assert "no eligible conversation" in again.err
    assert f"already in training file {name!r}" in again.err
    assert world.snapshot() == before


def test_without_wait_a_pending_request_is_stored(world: World, cli: Cli) -> None:
    name = "Waiting for the sensor"
    before = world.snapshot()
    result = cli("files", "create", name, "--conversation", world.sources.spares[6].id,
                 "--conversation", world.sources.spares[7].id).expect(0)
    found = re.search(rf"request ({UUID_RE}) is pending", result.out)
    assert found, result.out
    shown = cli("requests", "show", found[1]).expect(0).json()
    assert shown["status"] == "pending"
    assert shown["new_file_name"] == name
    assert shown["conversation_ids"] == [world.sources.spares[6].id, world.sources.spares[7].id]
    pending = cli("requests", "list", "--status", "pending", "--format", "json").expect(0).json()
    assert found[1] in {r["id"] for r in pending}
    after = world.snapshot()
    assert after.requests == before.requests + 1
    assert (after.files, after.versions, after.members, after.objects) == (
        before.files, before.versions, before.members, before.objects)
    assert file_row_named(world.database_url, name) == []
    # 120 characters is the longest valid name.
    longest = cli("files", "create", "n" * 120, "--conversation", world.sources.spares[8].id)
    assert "is pending" in longest.expect(0).out


# --- Fresh environments: demo, the console script ---------------------------------------------


def _printed_path(output: str, label: str) -> Path:
    found = re.search(rf"^{label}: (.+)$", output, re.MULTILINE)
    assert found, output
    return Path(found[1])


def test_demo_twice_publishes_once(fresh: Fresh) -> None:
    first = fresh.cli("demo").expect(0)
    json_path, jsonl_path = _printed_path(first.out, "JSON"), _printed_path(first.out, "JSONL")
    assert json_path.is_file() and jsonl_path.is_file()
    document = orjson.loads(json_path.read_bytes())
    lines = jsonl_path.read_bytes().splitlines()
    assert len(lines) == document["training_file_metadata"]["trainable_pairs"] > 0
    version = re.search(r"^version: (\d+)", first.out, re.MULTILINE)
    assert version, first.out

    second = fresh.cli("demo").expect(0)
    assert "(0 new rows)" in second.out
    assert "published" not in second.out
    again = re.search(r"^version: (\d+)", second.out, re.MULTILINE)
    assert again and again[1] == version[1]
    assert _printed_path(second.out, "JSON") == json_path
    assert _printed_path(second.out, "JSONL").is_file()
    files = fresh.cli("files", "list", "--format", "json").expect(0).json()
    assert [f["version"] for f in files] == [int(version[1])]


def test_timestamps_written_in_any_iso_style_compare_as_instants(
        fresh: Fresh) -> None:
    """Two SQL clients writing `Z`, `+02:00` or a space separator still agree on what is earliest:
    the conversation listing's order and the Batch ID (the batch of the earliest item)."""
    fresh.cli("init").expect(0)
    early = _extra_batch("Early batch", datetime(2026, 10, 1, 7, 0, tzinfo=UTC))
    late = _extra_batch("Late batch", datetime(2026, 10, 1, 7, 30, tzinfo=UTC))
    ids = [str(uuid.uuid4()) for _ in range(3)]
    created = ["2026-10-01T10:30:00+02:00", "2026-10-01T09:00:00Z", "2026-10-01 08:45:00+00:00"]
    engine = sa.create_engine(fresh.env["BRIGHTRUN_DATABASE_URL"])
    try:
        with engine.begin() as connection:
            _insert(connection, "batch_jobs", [_batch_row(early), _batch_row(late)])
            _insert(connection, "conversations", [
                {"id": str(uuid.uuid4()), "conversation_id": cid, "enrichment_status": "failed",
                 "created_at": moment, "updated_at": moment}
                for cid, moment in zip(ids, created, strict=True)])
            _insert(connection, "batch_items", [
                {"id": str(uuid.uuid4()), "batch_job_id": early.id, "conversation_id": ids[0],
                 "status": "completed", "created_at": "2026-10-01T10:00:00+02:00"},
                {"id": str(uuid.uuid4()), "batch_job_id": late.id, "conversation_id": ids[0],
                 "status": "completed", "created_at": "2026-10-01T09:00:00+00:00"},
            ])
    finally:
        engine.dispose()
    rows = fresh.cli("conversations", "list", "--format", "json").expect(0).json()
    assert {r["conversation_id"]: r["batch_id"] for r in rows}[ids[0]] == early.id
    assert [r["conversation_id"] for r in rows] == [ids[0], ids[2], ids[1]]


def test_commands_before_init_say_so(fresh: Fresh) -> None:
    result = fresh.cli("files", "list").expect(1)
    assert "brightrun init" in result.err


def test_console_script_init_and_create(fresh: Fresh) -> None:
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("BRIGHTRUN_")},
           **fresh.env}

    def run(*args: object) -> subprocess.CompletedProcess[str]:
        return subprocess.run([str(VENV_BRIGHTRUN), *map(str, args)], env=env,
                              cwd=fresh.directory, capture_output=True, text=True, timeout=300,
                              check=False)

    init = run("init")
    assert init.returncode == 0, init.stderr
    assert "database ready" in init.stdout
    url = fresh.env["BRIGHTRUN_DATABASE_URL"]
    dataset = generate_demo_dataset(5, batches=1, conversations_per_batch=3, unbatched=0,
                                    ineligible_per_batch=0)
    engine = sa.create_engine(url)
    try:
        with engine.begin() as connection:
            _insert(connection, "batch_jobs", [_batch_row(b) for b in dataset.batches])
            _insert(connection, "conversations",
                    [_conversation_row(c, i)[0] for i, c in enumerate(dataset.conversations)])
            _insert(connection, "batch_items", [_item_row(i) for i in dataset.items])
    finally:
        engine.dispose()
    storage = Path(fresh.env["BRIGHTRUN_STORAGE_ROOT"])
    for conversation in dataset.conversations:
        assert conversation.file_bytes is not None
        _write_source(storage, str(conversation.row["enriched_file_path"]),
                      conversation.file_bytes)

    created = run("files", "create", "From the console script", "--batch",
                  dataset.batches[0].id, "--wait")
    assert created.returncode == 0, created.stderr
    assert "version 1: 3 conversations" in created.stdout
    assert "Traceback" not in created.stdout + created.stderr
    usage = run("files", "add", "No such file", "--batch", dataset.batches[0].id)
    assert usage.returncode == 2
    assert "Traceback" not in usage.stderr


def test_a_request_names_the_login_even_without_user_in_the_environment(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Requests record who asked: a shell without USER (cron, a container) still has a login."""
    import pwd

    from brightrun_pipeline.cli import _user

    for name in ("LOGNAME", "USER", "LNAME", "USERNAME"):
        monkeypatch.delenv(name, raising=False)
    assert _user() == pwd.getpwuid(os.getuid()).pw_name
    monkeypatch.setenv("USER", "curator-7")
    assert _user() == "curator-7"
