"""A corpus of bad input, each case ending in a clear error that names the problem and in nothing
changed: no training file, version, membership row or object, and the request row rejected or
failed as it should be.

Three kinds: corrupt source files (built through the pipeline), request rows written with plain
SQL by another application (claimed as the sensor claims them), and misuse of the CLI. The cases
share one database per backend and one published file; a case only ever adds its own request
row and conversation, so they do not disturb one another.
"""

from __future__ import annotations

import os
import secrets
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import psycopg
import pytest
import sqlalchemy as sa
from psycopg import sql
from seed import copy_of, create_file, demo_dataset, eligible, seed_conversations, seed_dataset

from brightrun_pipeline.cli import main
from brightrun_pipeline.config import RetrySettings
from brightrun_pipeline.db.repository import Database
from brightrun_pipeline.demo_data import DemoConversation
from brightrun_pipeline.errors import ProcessingFailed, RequestOutcomeError, RequestRejected
from brightrun_pipeline.service import Pipeline
from brightrun_pipeline.storage import LocalObjectStore

POSTGRES_ADMIN = "host=127.0.0.1 port=5432 user=postgres dbname=postgres connect_timeout=5"
FILE_NAME = "Existing file"


@contextmanager
def _database_url(backend: str, directory: Path) -> Iterator[str]:
    """A database of this module's own: a SQLite file, or a throwaway PostgreSQL database."""
    if backend == "sqlite":
        yield f"sqlite:///{directory / 'brightrun.db'}"
        return
    name = f"brightrun_bad_input_{secrets.token_hex(6)}"
    with psycopg.connect(POSTGRES_ADMIN, autocommit=True) as admin:
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        yield f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}"
    finally:
        with psycopg.connect(POSTGRES_ADMIN, autocommit=True) as admin:
            admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(
                sql.Identifier(name)))


@dataclass(frozen=True)
class Snapshot:
    """Everything a bad input must leave as it was."""

    files: list[tuple[Any, ...]]
    versions: list[tuple[Any, ...]]
    members: int
    objects: list[str]
    scratch: list[str]


@dataclass
class World:
    """One database and store per backend, with one published training file."""

    backend: str
    url: str
    storage: Path
    pipeline: Pipeline
    template: DemoConversation        # eligible, intact source, same consultant as the file
    spares: list[str]                 # eligible, in no file
    member: str                       # in the file since version 1
    ineligible: str                   # not completed
    file_id: str = ""
    environment: dict[str, str] = field(default_factory=dict)

    @property
    def db(self) -> Database:
        return self.pipeline.db

    def snapshot(self) -> Snapshot:
        store = self.pipeline.store
        assert isinstance(store, LocalObjectStore)
        with self.db.engine.connect() as connection:
            files = connection.execute(sa.text(
                "SELECT id, name, current_version, status FROM training_files ORDER BY id")).all()
            versions = connection.execute(sa.text(
                "SELECT training_file_id, version, json_sha256 FROM training_file_versions "
                "ORDER BY training_file_id, version")).all()
            members = connection.execute(sa.text(
                "SELECT count(*) FROM training_file_conversations")).scalar_one()
        scratch = sorted(str(p) for bucket in (self.pipeline.training_bucket,
                                               self.pipeline.source_bucket)
                         for p in (store.root / bucket / ".scratch").glob("*"))
        return Snapshot([tuple(r) for r in files], [tuple(r) for r in versions], members,
                        list(store.list_keys(self.pipeline.training_bucket)), scratch)

    def requests(self) -> int:
        with self.db.engine.connect() as connection:
            return connection.execute(sa.text(
                "SELECT count(*) FROM selection_requests")).scalar_one()


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def world(request: pytest.FixtureRequest,
          tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    directory = tmp_path_factory.mktemp(f"bad-input-{request.param}")
    with _database_url(request.param, directory) as url:
        database = Database(url)
        database.upgrade()
        store = LocalObjectStore(directory / "storage")
        pipeline = Pipeline(database, store, fetch_concurrency=4,
                            retry=RetrySettings(attempts=2, base_delay=0.0, max_delay=0.0))
        store.ensure_bucket(pipeline.source_bucket)
        store.ensure_bucket(pipeline.training_bucket)
        dataset = demo_dataset()
        seed_dataset(pipeline, dataset)
        rows = eligible(dataset)
        ineligible = next(c for c in dataset.conversations
                          if c.row["enrichment_status"] != "completed")
        world = World(request.param, url, directory / "storage", pipeline, template=rows[0],
                      spares=[c.conversation_id for c in rows[2:]],
                      member=rows[0].conversation_id, ineligible=ineligible.conversation_id)
        world.file_id = create_file(pipeline, rows[:2], name=FILE_NAME).training_file_id
        world.environment = {"BRIGHTRUN_DATABASE_URL": url,
                             "BRIGHTRUN_STORAGE_ROOT": str(directory / "storage"),
                             "DAGSTER_HOME": str(directory / "dagster")}
        yield world
        database.dispose()


# --- Corrupt source files ------------------------------------------------------------------


def _json(document: Any) -> bytes:
    return orjson.dumps(document, option=orjson.OPT_INDENT_2)


def _edit(change: Callable[[dict[str, Any]], None]) -> Callable[[dict[str, Any]], bytes]:
    def edited(document: dict[str, Any]) -> bytes:
        change(document)
        return _json(document)
    return edited


def _set_pair(name: str, value: Any, index: int = 0) -> Callable[[dict[str, Any]], bytes]:
    return _edit(lambda d: d["training_pairs"][index].__setitem__(name, value))


def _duplicate_turn(document: dict[str, Any]) -> None:
    pairs = document["training_pairs"]
    assert len(pairs) > 1
    pairs[1]["turn_number"] = pairs[0]["turn_number"]


@dataclass(frozen=True)
class SourceCase:
    """A source file (bytes made from the intact document; None: no object), the reason the
    request gives for its conversation, and the request's end: failed (an unusable source), or
    rejected (a usable source that breaks a rule only known once it is read)."""

    source: Callable[[dict[str, Any]], bytes | None]
    reason: str
    path: str | None = None
    status: str = "failed"


SOURCE_CASES = {
    "not JSON": SourceCase(lambda d: b"{not json", "is not valid JSON"),
    "empty file": SourceCase(lambda d: b"", "is not valid JSON"),
    "not UTF-8": SourceCase(lambda d: b"\xff\xfe" + _json(d), "is not valid JSON"),
    "trailing bytes after the document": SourceCase(lambda d: _json(d) + b"\n}",
                                                    "is not valid JSON"),
    "a JSON array": SourceCase(lambda d: b"[]", "is not a JSON object"),
    "a JSON string": SourceCase(lambda d: b'"enriched"', "is not a JSON object"),
    "no training_pairs": SourceCase(_edit(lambda d: d.pop("training_pairs")),
                                    "training_pairs: Field required"),
    "empty training_pairs": SourceCase(_edit(lambda d: d.__setitem__("training_pairs", [])),
                                       "training_pairs: List should have at least 1 item"),
    "training_pairs an object": SourceCase(
        _edit(lambda d: d.__setitem__("training_pairs", {"0": d["training_pairs"][0]})),
        "training_pairs: Input should be a valid list"),
    "no consultant_profile": SourceCase(_edit(lambda d: d.pop("consultant_profile")),
                                        "consultant_profile: Field required"),
    "no dataset_metadata": SourceCase(_edit(lambda d: d.pop("dataset_metadata")),
                                      "dataset_metadata: Field required"),
    "a pair without turn_number": SourceCase(
        _edit(lambda d: d["training_pairs"][0].pop("turn_number")),
        "training_pairs.0.turn_number: Field required"),
    "duplicate turn numbers": SourceCase(_edit(_duplicate_turn), "appears twice"),
    "turn_number as text": SourceCase(_set_pair("turn_number", "two"),
                                      "training_pairs.0.turn_number: Input should be a valid "
                                      "integer"),
    "target_response a number": SourceCase(_set_pair("target_response", 42),
                                           "training_pairs.0.target_response: Input should be "
                                           "a valid string"),
    "system_prompt null": SourceCase(_set_pair("system_prompt", None),
                                     "training_pairs.0.system_prompt: Input should be a valid "
                                     "string"),
    "conversation_history not a list": SourceCase(
        _set_pair("conversation_history", "none"),
        "training_pairs.0.conversation_history: Input should be a valid list"),
    "human_reviewed not a boolean": SourceCase(
        _edit(lambda d: d["training_pairs"][0]["training_metadata"].__setitem__(
            "human_reviewed", "maybe")),
        "training_pairs.0.training_metadata.human_reviewed: Input should be a valid boolean"),
    "years_experience as words": SourceCase(
        _edit(lambda d: d["consultant_profile"].__setitem__("years_experience", "ten")),
        "consultant_profile.years_experience"),
    "another consultant": SourceCase(
        _edit(lambda d: d["consultant_profile"].__setitem__("name", "Someone Else")),
        "differs", status="rejected"),
    "missing object": SourceCase(lambda d: None, "is missing"),
    "path leaving the bucket": SourceCase(lambda d: None, "invalid storage key",
                                          path="../../etc/passwd"),
    "absolute path": SourceCase(lambda d: None, "invalid storage key", path="/etc/passwd"),
}


@pytest.mark.parametrize("case", list(SOURCE_CASES))
def test_a_corrupt_source_fails_the_request_naming_it(world: World, case: str) -> None:
    spec = SOURCE_CASES[case]
    assert world.template.file_bytes is not None
    data = spec.source(orjson.loads(world.template.file_bytes))
    broken = copy_of(world.template, file_bytes=data or b"")
    if spec.path is not None:
        broken.row["enriched_file_path"] = spec.path
    if data is None:
        broken = DemoConversation(row=broken.row, batch_id=None, file_bytes=None)
    seed_conversations(world.pipeline, [broken])
    cid = broken.conversation_id
    before = world.snapshot()
    request = world.pipeline.submit(conversation_ids=[world.spares[0], cid],
                                    training_file=world.file_id)
    assert world.pipeline.claim(request.id) is not None

    with pytest.raises(RequestOutcomeError) as raised:
        world.pipeline.run_request(request.id, f"run-{case}")

    expected = ProcessingFailed if spec.status == "failed" else RequestRejected
    assert isinstance(raised.value, expected)
    assert list(raised.value.conversations) == [cid]
    assert spec.reason in raised.value.conversations[cid]
    if spec.status == "failed":
        assert cid in raised.value.message
    stored = world.db.get_request(request.id)
    assert stored is not None and stored.error is not None
    assert (stored.status, stored.result_version) == (spec.status, None)
    assert stored.error.conversations == raised.value.conversations
    assert world.snapshot() == before


# --- Request rows written with plain SQL ----------------------------------------------------


@dataclass(frozen=True)
class RowCase:
    """A `selection_requests` row as another application might write it, and how it is rejected.

    `ids` is the conversation_ids text as written; `target` is "file" (the existing file's id),
    "name", "both", "neither" or a literal training_file_id."""

    ids: Callable[[World], str]
    message: str
    target: str = "name"
    name: str = "New from SQL"
    reasons: Callable[[World], dict[str, str]] = lambda w: {}
    backends: tuple[str, ...] = ("sqlite", "postgresql")


def _ids(*values: object) -> Callable[[World], str]:
    """conversation_ids as JSON text; "{spare}" stands for an eligible conversation."""
    return lambda w: orjson.dumps([w.spares[1] if v == "{spare}" else v
                                   for v in values]).decode()


NOT_AN_ARRAY = "conversation_ids must be a JSON array"
NOT_A_UUID = "not a conversation ID (expected a UUID)"
UNKNOWN_ID = "0f0e0d0c-0b0a-4909-8807-060504030201"

ROW_CASES = {
    # PostgreSQL's jsonb refuses malformed JSON at INSERT (checked too); SQLite keeps the text.
    "ids not JSON": RowCase(lambda w: f'["{w.spares[1]}", ', NOT_AN_ARRAY,
                            backends=("sqlite",)),
    "ids an object": RowCase(lambda w: orjson.dumps({"ids": [w.spares[1]]}).decode(),
                             NOT_AN_ARRAY),
    "ids a string": RowCase(lambda w: orjson.dumps(w.spares[1]).decode(), NOT_AN_ARRAY),
    "ids null": RowCase(lambda w: "null", NOT_AN_ARRAY),
    "ids a number": RowCase(lambda w: "7", NOT_AN_ARRAY),
    "no ids": RowCase(lambda w: "[]", "a request needs at least one conversation"),
    "81 ids": RowCase(lambda w: orjson.dumps([str(uuid.UUID(int=n + 1))
                                              for n in range(81)]).decode(),
                      "at most 80 conversations; this one holds 81"),
    "an id that is not a UUID": RowCase(_ids("{spare}", "conversation-17"),
                                        "1 of 2 conversations",
                                        reasons=lambda w: {"conversation-17": NOT_A_UUID}),
    "an id that is a number": RowCase(_ids(17), "1 of 1 conversations",
                                      reasons=lambda w: {"17": NOT_A_UUID}),
    "an id that is null": RowCase(_ids(None), "1 of 1 conversations",
                                  reasons=lambda w: {"None": NOT_A_UUID}),
    "an id inside an array": RowCase(lambda w: orjson.dumps([[w.spares[1]]]).decode(),
                                     "1 of 1 conversations",
                                     reasons=lambda w: {str([w.spares[1]]): NOT_A_UUID}),
    "an unknown conversation": RowCase(_ids("{spare}", UNKNOWN_ID), "1 of 2 conversations",
                                       reasons=lambda w: {UNKNOWN_ID:
                                                          "unknown conversation ID"}),
    "an ineligible conversation": RowCase(lambda w: orjson.dumps([w.ineligible]).decode(),
                                          "1 of 1 conversations",
                                          reasons=lambda w: {w.ineligible: "not 'completed'"}),
    "a conversation already in the file": RowCase(
        lambda w: orjson.dumps([w.spares[1], w.member]).decode(), "1 of 2 conversations",
        target="file",
        reasons=lambda w: {w.member: f"already in training file {FILE_NAME!r} (added in "
                                     "version 1)"}),
    "an id repeated in another spelling": RowCase(
        lambda w: orjson.dumps([w.spares[1], w.spares[1].upper()]).decode(),
        "1 of 2 conversations",
        reasons=lambda w: {w.spares[1]: "repeated in the request (2 times)"}),
    "both targets": RowCase(_ids("{spare}"), "exactly one target", target="both"),
    "no target": RowCase(_ids("{spare}"), "exactly one target", target="neither"),
    "an unknown file": RowCase(_ids("{spare}"),
                               "training file 1b2c3d4e-0000-4000-8000-00000000f11e does not "
                               "exist", target="1b2c3d4e-0000-4000-8000-00000000f11e"),
    # A uuid column on PostgreSQL refuses the value at INSERT (checked too).
    "a file id that is not a UUID": RowCase(_ids("{spare}"),
                                            "training file file-1 does not exist",
                                            target="file-1", backends=("sqlite",)),
    "an empty name": RowCase(_ids("{spare}"), "the training file name is empty", name=""),
    "a name of spaces": RowCase(_ids("{spare}"), "the training file name is empty",
                                name="   \t "),
    "a name too long": RowCase(_ids("{spare}"), "has 121 characters; at most 120",
                               name="n" * 121),
    "a name with a control character": RowCase(_ids("{spare}"), "non-printable",
                                               name="Bell\x07file"),
    "a name with a line break": RowCase(_ids("{spare}"), "non-printable", name="two\nlines"),
    "a name with a bidi override": RowCase(_ids("{spare}"), "non-printable",
                                           name="name\u202etxt.exe"),
    "a name taken in another case": RowCase(_ids("{spare}"), "already exists",
                                            name=FILE_NAME.upper()),
    "a name taken with other spacing": RowCase(_ids("{spare}"), "already exists",
                                               name=f"  {FILE_NAME.swapcase()}\t"),
}


def _row_cases() -> list[Any]:
    return [pytest.param(name, id=name) for name in ROW_CASES]


def insert_request(world: World, request_id: str, case: RowCase) -> None:
    file_id = {"file": world.file_id, "both": world.file_id, "name": None,
               "neither": None}.get(case.target, case.target)
    name = case.name if case.target in ("name", "both") else None
    with world.db.engine.begin() as connection:
        connection.execute(sa.text(
            "INSERT INTO selection_requests (id, training_file_id, new_file_name, "
            "conversation_ids) VALUES (:id, :file_id, :name, :ids)"),
            {"id": request_id, "file_id": file_id, "name": name, "ids": case.ids(world)})


@pytest.mark.parametrize("case", _row_cases())
def test_a_malformed_request_row_is_rejected_naming_the_problem(world: World, case: str) -> None:
    spec = ROW_CASES[case]
    request_id = f"sql-{uuid.uuid4()}"
    before = world.snapshot()
    if world.backend not in spec.backends:
        # The column type refuses the value: the row never exists.
        with pytest.raises(sa.exc.DataError):
            insert_request(world, request_id, spec)
        assert world.db.get_request(request_id) is None
        assert world.snapshot() == before
        return
    insert_request(world, request_id, spec)
    assert world.db.get_request(request_id).status == "pending"  # type: ignore[union-attr]

    assert world.pipeline.claim(request_id) is None

    stored = world.db.get_request(request_id)
    assert stored is not None and stored.error is not None
    assert (stored.status, stored.result_version, stored.attempts) == ("rejected", None, 0)
    assert spec.message in stored.error.message
    reasons = spec.reasons(world)
    assert set(stored.error.conversations) == set(reasons)
    for cid, reason in reasons.items():
        assert reason in stored.error.conversations[cid]
    assert world.snapshot() == before
    # Claiming again changes nothing: the row is no longer pending.
    assert world.pipeline.claim(request_id) is None


def test_two_rows_naming_one_new_file_in_different_cases_publish_once(world: World) -> None:
    first, second = f"sql-{uuid.uuid4()}", f"sql-{uuid.uuid4()}"
    name = f"Twin {world.backend}"
    for request_id, spelled in ((first, name), (second, name.upper())):
        insert_request(world, request_id, RowCase(_ids("{spare}"), "", name=spelled))
    # Both are valid when claimed: the name is free until the first one publishes.
    assert world.pipeline.claim(first) is not None
    assert world.pipeline.claim(second) is not None
    world.pipeline.run_request(first, "run-first-twin")
    before = world.snapshot()

    with pytest.raises(RequestRejected) as raised:
        world.pipeline.run_request(second, "run-second-twin")

    assert "already exists" in raised.value.message
    stored = world.db.get_request(second)
    assert stored is not None and stored.error is not None
    assert (stored.status, stored.result_version) == ("rejected", None)
    assert "already exists" in stored.error.message
    # Checked again when its run starts, it is rejected before anything is built.
    assert world.snapshot() == before


# --- Misuse of the CLI ---------------------------------------------------------------------


@dataclass(frozen=True)
class CliCase:
    """Arguments (placeholders: {spare}, {dir}, {ids_file}, {junk_file}, {rejected}), the exit
    code and what the error says."""

    args: tuple[str, ...]
    code: int
    message: str


CLI_CASES = {
    "an ids file with no ids": CliCase(("files", "create", "Q", "--ids-file", "{ids_file}"), 2,
                                       "holds no conversation IDs"),
    "an ids file with a line that is not an id": CliCase(
        ("files", "create", "Q", "--ids-file", "{junk_file}"), 3,
        "junk-line: not a conversation ID"),
    "a conversation that is not an id": CliCase(
        ("files", "add", FILE_NAME, "--conversation", "not-a-uuid", "--wait"), 3,
        "not-a-uuid: not a conversation ID"),
    "an option without its value": CliCase(("files", "create", "Q", "--conversation"), 2,
                                           "requires an argument"),
    "a download into a directory": CliCase(
        ("files", "download", FILE_NAME, "--format", "json", "--output", "{dir}"), 2,
        "is a directory"),
    "an unknown request to show": CliCase(("requests", "show", "nope"), 2,
                                          "no selection request with id 'nope'"),
    "an unknown request to retry": CliCase(("requests", "retry", "nope"), 2,
                                           "no selection request with id 'nope'"),
    "a retry of a rejected request": CliCase(("requests", "retry", "{rejected}"), 2,
                                             "only failed requests can be retried"),
    "a sort that is not a column": CliCase(
        ("conversations", "list", "--sort", "quality_score; DROP TABLE conversations"), 2,
        "is not one of"),
    "a limit of zero": CliCase(("conversations", "list", "--limit", "0"), 2,
                               "0 is not in the range"),
    "rematerialize with no file": CliCase(("files", "rematerialize",), 2,
                                          "give either FILE or --all"),
    "rematerialize with a file and --all": CliCase(
        ("files", "rematerialize", FILE_NAME, "--all"), 2, "give either FILE or --all"),
    "lineage of something that is not an id": CliCase(
        ("lineage", "conversation", "../etc/passwd"), 2, "expects a UUID"),
}


@pytest.mark.parametrize("case", list(CLI_CASES))
def test_cli_misuse_is_refused_naming_the_problem(
        world: World, case: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    spec = CLI_CASES[case]
    for name in list(os.environ):
        if name.startswith("BRIGHTRUN_"):
            monkeypatch.delenv(name)
    for name, value in world.environment.items():
        monkeypatch.setenv(name, value)
    (tmp_path / "empty.txt").write_text("\n  \n")
    (tmp_path / "junk.txt").write_text(f"{world.spares[1]}\njunk-line\n")
    rejected = f"sql-{uuid.uuid4()}"
    insert_request(world, rejected, RowCase(lambda w: "[]", ""))
    assert world.pipeline.claim(rejected) is None
    values = {"spare": world.spares[1], "dir": str(tmp_path), "rejected": rejected,
              "ids_file": str(tmp_path / "empty.txt"), "junk_file": str(tmp_path / "junk.txt")}
    before, requests = world.snapshot(), world.requests()
    capsys.readouterr()

    try:
        main([arg.format(**values) for arg in spec.args])
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    captured = capsys.readouterr()

    assert code == spec.code, captured
    assert spec.message in captured.err, captured
    assert "Traceback" not in captured.out + captured.err
    assert world.snapshot() == before
    # A refused submission stores no request row.
    assert world.requests() == requests
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty.txt", "junk.txt"]

