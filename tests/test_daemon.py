"""The real daemon on the production instance configuration (PostgreSQL run storage, S3 compute
logs): request rows inserted with plain SQL become published versions with no one in the loop."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import boto3
import orjson
import psycopg
import pytest
import sqlalchemy as sa
from contract_oracle import check_version
from psycopg import sql
from seed import demo_dataset, eligible, oracle_input, seed_dataset, version_objects

from brightrun_pipeline.db.repository import Database
from brightrun_pipeline.demo_data import generate_demo_dataset
from brightrun_pipeline.service import Pipeline
from brightrun_pipeline.storage import LocalObjectStore

REPO = Path(__file__).resolve().parent.parent
FINAL = {"succeeded", "failed", "rejected"}
DEADLINE_SECONDS = 240


@pytest.fixture
def dagster_postgres_url() -> Iterator[str]:
    """A throwaway PostgreSQL database for the Dagster instance's own storage."""
    name = f"brightrun_dagster_{os.getpid()}_{int(time.time())}"
    with psycopg.connect("host=127.0.0.1 user=postgres dbname=postgres", autocommit=True) as c:
        c.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    yield f"postgresql+psycopg2://postgres@127.0.0.1:5432/{name}"
    with psycopg.connect("host=127.0.0.1 user=postgres dbname=postgres", autocommit=True) as c:
        c.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


@pytest.fixture
def daemon(
    postgres_url: str, dagster_postgres_url: str, s3_endpoint_url: str, tmp_path: Path,
) -> Iterator[Pipeline]:
    """`dagster-daemon run` on the repository's workspace and production instance config."""
    home = tmp_path / "dagster"
    home.mkdir()
    shutil.copyfile(REPO / "deploy" / "dagster.postgres.yaml", home / "dagster.yaml")
    boto3.client("s3", endpoint_url=s3_endpoint_url, region_name="us-east-1",
                 aws_access_key_id="testing", aws_secret_access_key="testing"
                 ).create_bucket(Bucket="compute-logs")
    yield from run_daemon(tmp_path, home, postgres_url, {
        "DAGSTER_POSTGRES_URL": dagster_postgres_url,
        "DAGSTER_COMPUTE_LOG_BUCKET": "compute-logs",
        "DAGSTER_S3_ENDPOINT_URL": s3_endpoint_url,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
    })


@pytest.fixture
def default_daemon(sqlite_url: str, tmp_path: Path) -> Iterator[Pipeline]:
    """`dagster-daemon run` on the embedded default: the repository's dagster.yaml (SQLite)."""
    home = tmp_path / "dagster"
    home.mkdir()
    shutil.copyfile(REPO / "dagster.yaml", home / "dagster.yaml")
    yield from run_daemon(tmp_path, home, sqlite_url, {})


def run_daemon(tmp_path: Path, home: Path, database_url: str,
               extra_env: dict[str, str]) -> Iterator[Pipeline]:
    """Start the daemon with this instance home and database; stop it (and its code server)."""
    env = {
        **os.environ,
        **extra_env,
        "DAGSTER_HOME": str(home),
        "BRIGHTRUN_DATABASE_URL": database_url,
        "BRIGHTRUN_STORAGE_ROOT": str(tmp_path / "storage"),
    }
    database = Database(database_url)
    database.upgrade()
    store = LocalObjectStore(tmp_path / "storage")
    store.ensure_bucket("conversation-files")
    store.ensure_bucket("training-files")
    # The instance's storage is created once, before the daemon and its code server start
    # together (they would race to create it).
    subprocess.run([str(Path(sys.executable).parent / "dagster"), "instance", "migrate"],
                   cwd=REPO, env=env, check=True, capture_output=True)
    log = open(tmp_path / "daemon.log", "wb")  # noqa: SIM115 - closed below
    process = subprocess.Popen(
        [str(Path(sys.executable).parent / "dagster-daemon"), "run", "-w", "workspace.yaml"],
        cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        yield Pipeline(database, store)
    finally:
        os.killpg(process.pid, signal.SIGINT)
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
        # The daemon's code server runs in a session of its own; its command line names this home.
        subprocess.run(["pkill", "-f", str(home)], check=False)
        log.close()
        database.dispose()


def insert_request(db: Database, request_id: str, ids: list[str], *,
                   name: str | None = None, file_id: str | None = None) -> None:
    """What another application does: one INSERT, nothing else."""
    with db.engine.begin() as connection:
        connection.execute(sa.text(
            "INSERT INTO selection_requests (id, training_file_id, new_file_name, "
            "conversation_ids) VALUES (:id, :file, :name, CAST(:ids AS jsonb))"),
            {"id": request_id, "file": file_id, "name": name, "ids": orjson.dumps(ids).decode()})


def insert_request_sqlite(db: Database, request_id: str, ids: list[str], name: str) -> None:
    """The same INSERT as a SQLite client writes it (JSON as text)."""
    with db.engine.begin() as connection:
        connection.execute(sa.text(
            "INSERT INTO selection_requests (id, new_file_name, conversation_ids) "
            "VALUES (:id, :name, :ids)"),
            {"id": request_id, "name": name, "ids": orjson.dumps(ids).decode()})


def wait_for(condition: Callable[[], bool], what: str, log: Path) -> None:
    """Poll until the condition holds; fail with the daemon's log after the deadline."""
    deadline = time.monotonic() + DEADLINE_SECONDS
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.5)
    pytest.fail(f"timed out waiting for {what}; daemon log:\n"
                + log.read_text(errors="replace")[-4000:])


def test_daemon_turns_inserted_rows_into_versions(daemon: Pipeline, tmp_path: Path) -> None:
    pipeline = daemon
    dataset = generate_demo_dataset(11, batches=2, conversations_per_batch=7, unbatched=0,
                                    ineligible_per_batch=1)
    seed_dataset(pipeline, dataset)
    rows = eligible(dataset)
    log = tmp_path / "daemon.log"

    def status(request_id: str) -> str | None:
        request = pipeline.db.get_request(request_id)
        return None if request is None else request.status

    insert_request(pipeline.db, "create-1", [c.conversation_id for c in rows[:2]], name="Daemon")
    bad_id = next(c for c in dataset.conversations if c not in rows).conversation_id
    insert_request(pipeline.db, "bad-1", [bad_id], name="Never")
    wait_for(lambda: status("create-1") in FINAL and status("bad-1") in FINAL,
             "the first requests", log)
    assert status("create-1") == "succeeded", pipeline.db.get_request("create-1")
    rejected = pipeline.db.get_request("bad-1")
    assert rejected is not None and rejected.status == "rejected"
    assert rejected.dagster_run_id is None and bad_id in rejected.error.conversations  # type: ignore[union-attr]

    file = pipeline.db.find_file("Daemon")
    assert file is not None and file.current_version == 1
    # Ten requests for one file inserted at once land, in order, as consecutive versions.
    later = rows[2:12]
    for index, conversation in enumerate(later):
        insert_request(pipeline.db, f"add-{index}", [conversation.conversation_id],
                       file_id=file.id)
    wait_for(lambda: all(status(f"add-{i}") in FINAL for i in range(len(later))),
             "the queued additions", log)
    results = [pipeline.db.get_request(f"add-{i}") for i in range(len(later))]
    assert [r.status for r in results] == ["succeeded"] * len(later)  # type: ignore[union-attr]
    # In the order they were inserted: the sensor emits oldest first, the queue runs one per file.
    assert [r.result_version for r in results] == list(range(2, 2 + len(later)))  # type: ignore[union-attr]

    record = pipeline.db.get_version(file.id)
    assert record is not None and record.version == 1 + len(later)
    members = [m.conversation_id for m in pipeline.db.iter_members(file.id)]
    assert members == [c.conversation_id for c in rows[:12]]
    assert len(members) == len(set(members))
    json_bytes, jsonl_bytes, manifest = version_objects(pipeline, record)
    added_in = {m.conversation_id: m.added_in_version for m in pipeline.db.iter_members(file.id)}
    by_id = {c.conversation_id: c for c in rows}
    check_version(json_bytes, jsonl_bytes, manifest, training_file_id=file.id,
                  file_name="Daemon", description=None, file_version=record.version,
                  conversations=[oracle_input(by_id[cid], added_in[cid]) for cid in members])


def test_daemon_on_the_embedded_default(default_daemon: Pipeline, tmp_path: Path) -> None:
    pipeline = default_daemon
    dataset = demo_dataset()
    seed_dataset(pipeline, dataset)
    rows = eligible(dataset)

    def status(request_id: str) -> str | None:
        request = pipeline.db.get_request(request_id)
        return None if request is None else request.status

    insert_request_sqlite(pipeline.db, "sqlite-1", [c.conversation_id for c in rows[:3]],
                          "On SQLite")
    insert_request_sqlite(pipeline.db, "sqlite-bad", ["not-a-uuid"], "Never")
    wait_for(lambda: status("sqlite-1") in FINAL and status("sqlite-bad") in FINAL,
             "the requests on the embedded default", tmp_path / "daemon.log")
    assert status("sqlite-1") == "succeeded", pipeline.db.get_request("sqlite-1")
    assert status("sqlite-bad") == "rejected"
    file = pipeline.db.find_file("On SQLite")
    assert file is not None
    record = pipeline.db.get_version(file.id)
    assert record is not None and record.version == 1
    json_bytes, jsonl_bytes, manifest = version_objects(pipeline, record)
    check_version(json_bytes, jsonl_bytes, manifest, training_file_id=file.id,
                  file_name="On SQLite", description=None, file_version=1,
                  conversations=[oracle_input(c, 1) for c in rows[:3]])
