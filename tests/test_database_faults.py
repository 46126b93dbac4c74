"""Database faults: the database goes away in the middle of a run, and the run publishes or fails
cleanly and is attempted again; nothing is half-published and no request or lease is left behind.

- PostgreSQL (the session's database): every backend of the run's database is terminated
  (`pg_terminate_backend`) while sources are read and while objects are written; the backend of
  one connection is terminated just before a chosen statement — a run heartbeat, a lease renewal,
  the membership reads of the builder and of the checks, each statement of the publication
  transaction, its commit — and once right after the commit went through (its reply lost with
  the connection).
- SQLite: the same statements fail with an I/O error instead (there is no server to lose).
- A private PostgreSQL server started by the module (never the shared one) is restarted at
  chosen and at random moments of runs, and is down when a Dagster run starts.
- A Dagster run of the training-file job whose publication loses its connection fails, and the
  sensor's next claim publishes the request.
"""

from __future__ import annotations

import contextlib
import glob
import os
import random
import shutil
import socket
import sqlite3
import subprocess
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import dagster as dg
import psycopg
import pytest
import sqlalchemy as sa
from audit import audit_file, no_run_heartbeats_left
from psycopg import sql
from seed import claimed_request, create_file, seed_dataset

from assets.partitions import ATTEMPT_TAG, REQUEST_TAG, TRAINING_FILE_TAG
from brightrun_pipeline.config import LifecycleSettings, RetrySettings, Settings
from brightrun_pipeline.db.repository import Database
from brightrun_pipeline.db.schema import training_file_builds
from brightrun_pipeline.definitions import build_definitions
from brightrun_pipeline.demo_data import DemoConversation, generate_demo_dataset
from brightrun_pipeline.service import Pipeline, utc_now
from brightrun_pipeline.storage import LocalObjectStore
from jobs import TRAINING_FILE_JOB
from sensors import selection_request_sensor
from sensors.recovery import recover

HEARTBEAT_SECONDS = 0.05
STALE_AFTER_SECONDS = 1.0
LIFECYCLE = LifecycleSettings(heartbeat_seconds=HEARTBEAT_SECONDS,
                              stale_after_seconds=STALE_AFTER_SECONDS)
# Each source read takes this long, so that a build lasts several heartbeats.
SOURCE_READ_SECONDS = 0.04
# Statements of the publication transaction of an added version: take the lease row, move the
# file's version, insert the version row, insert the membership rows, mark the request.
PUBLICATION_STATEMENTS = 5
CONVERSATIONS_PER_REQUEST = 3


# --- Where a fault strikes ---------------------------------------------------------------------

@dataclass(frozen=True)
class Trial:
    """One fault: where it strikes (`phase`, its `n`-th occurrence) and what the run should do:
    "first" (publish on its first attempt), "second" (fail cleanly, publish on the next attempt)
    or "either" (random moments)."""

    phase: str
    n: int
    expect: str

    def __str__(self) -> str:
        return f"{self.phase}:{self.n}"


def beat_statement(statement: str) -> bool:
    return statement.startswith("UPDATE run_heartbeats")


def renew_statement(statement: str) -> bool:
    return statement.startswith("UPDATE training_file_builds SET expires_at")


def members_statement(statement: str) -> bool:
    """The ordered read of a file's membership (the builder's and the checks')."""
    return ("ORDER BY training_file_conversations.position" in statement
            and "JOIN" not in statement)


STATEMENT_PHASES: dict[str, Callable[[str], bool]] = {
    "beat": beat_statement, "renew": renew_statement, "members": members_statement}


@dataclass
class Injector:
    """Arms one trial's fault on a pipeline and records when it struck.

    `break_connection(dbapi_connection)` makes the given connection fail (terminate its backend,
    restart the server, or raise the driver's own error); `break_all()` cuts every connection of
    the database (None where that does not apply); `lose_reply(dbapi_connection)` is called
    right after a commit went through and fails as a connection lost before the reply does.
    """

    pipeline: Pipeline
    break_connection: Callable[[Any], None]
    break_all: Callable[[], None] | None
    lose_reply: Callable[[Any], None]
    struck_at: float | None = None
    liveness: list[tuple[float, str, bool]] = field(default_factory=list)
    _publishing: int | None = None
    _undo: list[Callable[[], None]] = field(default_factory=list)

    @contextlib.contextmanager
    def armed(self, trial: Trial | None) -> Iterator[Injector]:
        """The fault of `trial` (None: only slow source reads), installed for the block."""
        self.struck_at = None
        self.liveness = []
        self._install_slow_reads()
        self._install_liveness_log()
        if trial is not None:
            self._install(trial)
        try:
            yield self
        finally:
            for undo in reversed(self._undo):
                undo()
            self._undo.clear()

    def _strike(self, action: Callable[[], None]) -> None:
        self.struck_at = time.monotonic()
        action()

    def _counter(self, n: int) -> Callable[[], bool]:
        calls = {"count": 0}

        def hit() -> bool:
            calls["count"] += 1
            return calls["count"] == n

        return hit

    def _patch(self, target: Any, name: str, replacement: Any) -> None:
        """Replace an attribute of one object (this pipeline's store, database or dialect)."""
        had, old = name in vars(target), vars(target).get(name)
        setattr(target, name, replacement)
        self._undo.append(lambda: setattr(target, name, old) if had else delattr(target, name))

    def _install_slow_reads(self) -> None:
        store, pipeline = self.pipeline.store, self.pipeline
        read = store.get_bytes

        def get_bytes(bucket: str, key: str) -> bytes:
            if bucket == pipeline.source_bucket:
                time.sleep(SOURCE_READ_SECONDS)
            return read(bucket, key)

        self._patch(store, "get_bytes", get_bytes)

    def _install_liveness_log(self) -> None:
        """Record every run heartbeat and lease renewal: when, and whether it got through."""
        db = self.pipeline.db
        for name, kind in (("beat", "beat"), ("renew_build", "renew")):
            original = getattr(db, name)

            def logged(*args: Any, _original: Any = original, _kind: str = kind,
                       **kwargs: Any) -> Any:
                try:
                    result = _original(*args, **kwargs)
                except Exception:
                    self.liveness.append((time.monotonic(), _kind, False))
                    raise
                self.liveness.append((time.monotonic(), _kind, True))
                return result

            self._patch(db, name, logged)

    def _install(self, trial: Trial) -> None:
        hit = self._counter(trial.n)
        if trial.phase in ("fetch", "write"):
            self._install_storage_fault(trial, hit)
        elif trial.phase in ("commit", "reply"):
            self._install_commit_fault(trial, hit)
        else:
            self._install_statement_fault(trial, hit)

    def _install_storage_fault(self, trial: Trial, hit: Callable[[], bool]) -> None:
        """Cut every connection at the n-th source read ("fetch") or object write ("write")."""
        assert self.break_all is not None
        break_all, pipeline = self.break_all, self.pipeline
        name, bucket_of_phase = (("get_bytes", pipeline.source_bucket) if trial.phase == "fetch"
                                 else ("put_file", pipeline.training_bucket))
        call = getattr(pipeline.store, name)

        def striking(bucket: str, *args: Any, **kwargs: Any) -> Any:
            if bucket == bucket_of_phase and hit():
                self._strike(break_all)
                # Let the heartbeat and the lease beat a few times on the broken pool.
                time.sleep(5 * HEARTBEAT_SECONDS)
            return call(bucket, *args, **kwargs)

        self._patch(pipeline.store, name, striking)

    def _track_publication(self) -> Callable[[], bool]:
        """Whether the calling thread is inside `publish_version` (heartbeats run on others)."""
        db = self.pipeline.db
        publish_version = db.publish_version

        def tracked(*args: Any, **kwargs: Any) -> Any:
            self._publishing = threading.get_ident()
            try:
                return publish_version(*args, **kwargs)
            finally:
                self._publishing = None

        self._patch(db, "publish_version", tracked)
        return lambda: self._publishing == threading.get_ident()

    def _install_commit_fault(self, trial: Trial, hit: Callable[[], bool]) -> None:
        """Break the publication's commit ("commit"), or lose its reply once it went through."""
        publishing = self._track_publication()
        dialect = self.pipeline.db.engine.dialect
        commit = dialect.do_commit

        def do_commit(dbapi_connection: Any) -> None:
            if not (publishing() and hit()):
                commit(dbapi_connection)
                return
            raw = getattr(dbapi_connection, "dbapi_connection", dbapi_connection)
            if trial.phase == "commit":
                self._strike(lambda: self.break_connection(raw))
                commit(dbapi_connection)
            else:
                commit(dbapi_connection)
                self._strike(lambda: self.lose_reply(raw))

        self._patch(dialect, "do_commit", do_commit)

    def _install_statement_fault(self, trial: Trial, hit: Callable[[], bool]) -> None:
        """Break the connection about to run the n-th statement of the publication ("publish",
        on the publishing thread) or of the kind a phase names (whichever thread runs it)."""
        publishing = self._track_publication()
        matches = STATEMENT_PHASES.get(trial.phase)
        engine = self.pipeline.db.engine

        def before_cursor_execute(connection: sa.Connection, _cursor: Any, statement: str,
                                  *_args: Any) -> None:
            wanted = publishing() if matches is None else matches(statement)
            if wanted and hit():
                raw = connection.connection.dbapi_connection
                self._strike(lambda: self.break_connection(raw))

        assert matches is not None or trial.phase == "publish", trial
        sa.event.listen(engine, "before_cursor_execute", before_cursor_execute)
        self._undo.append(lambda: sa.event.remove(engine, "before_cursor_execute",
                                                  before_cursor_execute))

    def beats_after_fault(self, kind: str) -> int:
        """Heartbeats (or renewals) that got through after the fault struck."""
        assert self.struck_at is not None
        return sum(1 for at, k, ok in self.liveness if k == kind and ok and at > self.struck_at)

    def failed(self, kind: str) -> int:
        return sum(1 for _at, k, ok in self.liveness if k == kind and not ok)


# --- Breaking PostgreSQL and SQLite ------------------------------------------------------------

def admin_dsn(url: str, database: str = "postgres") -> str:
    """A libpq connection string to another database of the server `url` points at."""
    parsed = sa.engine.make_url(url)
    return (f"host={parsed.host} port={parsed.port or 5432} user={parsed.username} "
            f"dbname={database} connect_timeout=5")


def terminate_backend(url: str, pid: int) -> None:
    """Terminate one backend (as an operator or a failover would) and wait until it is gone."""
    with psycopg.connect(admin_dsn(url), autocommit=True) as admin:
        admin.execute("SELECT pg_terminate_backend(%s)", [pid])
        deadline = time.monotonic() + 5
        while admin.execute("SELECT 1 FROM pg_stat_activity WHERE pid = %s", [pid]).fetchone():
            assert time.monotonic() < deadline, f"backend {pid} did not end"
            time.sleep(0.005)


def terminate_database_backends(url: str) -> int:
    """Terminate every backend connected to the run's database; returns how many."""
    database = sa.engine.make_url(url).database
    with psycopg.connect(admin_dsn(url), autocommit=True) as admin:
        pids = [row[0] for row in admin.execute(
            "SELECT pid FROM pg_stat_activity WHERE datname = %s AND pid <> pg_backend_pid()",
            [database])]
        for pid in pids:
            admin.execute("SELECT pg_terminate_backend(%s)", [pid])
    return len(pids)


def postgres_injector(pipeline: Pipeline, url: str) -> Injector:
    """Faults of the shared server: backends terminated, nothing else touched."""

    def break_connection(raw: Any) -> None:
        terminate_backend(url, raw.info.backend_pid)

    def lose_reply(raw: Any) -> None:
        terminate_backend(url, raw.info.backend_pid)
        # What the driver reports when the connection drops before the commit's reply arrives.
        raise psycopg.OperationalError("server closed the connection unexpectedly")

    def break_all() -> None:
        assert terminate_database_backends(url) > 0, "the run had no connection to cut"

    return Injector(pipeline, break_connection, break_all, lose_reply)


def sqlite_injector(pipeline: Pipeline) -> Injector:
    """SQLite has no server to lose: the chosen statement fails as a failing disk makes it."""

    def break_connection(_raw: Any) -> None:
        raise sqlite3.OperationalError("disk I/O error")

    def lose_reply(_raw: Any) -> None:
        raise sqlite3.OperationalError("disk I/O error")

    return Injector(pipeline, break_connection, None, lose_reply)


# --- A private PostgreSQL server that the tests may restart ---------------------------------------

@dataclass
class PrivateServer:
    """A PostgreSQL cluster of this module's own, on a free port of 127.0.0.1."""

    bindir: Path
    base: Path
    port: int
    as_postgres: list[str]

    def _pg_ctl(self, *args: str) -> None:
        options = (f"-p {self.port} -k {self.base} -c listen_addresses=127.0.0.1 "
                   "-c fsync=off -c max_connections=50")
        subprocess.run([*self.as_postgres, str(self.bindir / "pg_ctl"), "-D",
                        str(self.base / "data"), "-l", str(self.base / "server.log"), "-w",
                        "-o", options, *args], check=True, capture_output=True, timeout=60)

    def start(self) -> None:
        self._pg_ctl("start")

    def stop(self, mode: str = "fast") -> None:
        self._pg_ctl("-m", mode, "stop")

    def restart(self) -> None:
        """A fast restart: every session is terminated, then the server comes back."""
        self._pg_ctl("-m", "fast", "restart")

    def url(self, database: str) -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/{database}"

    def create_database(self) -> str:
        name = f"brightrun_faults_{os.urandom(4).hex()}"
        with psycopg.connect(admin_dsn(self.url("postgres")), autocommit=True) as admin:
            admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        return self.url(name)


def _postgres_bindir() -> Path | None:
    for candidate in sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True):
        if (Path(candidate) / "initdb").exists() and (Path(candidate) / "pg_ctl").exists():
            return Path(candidate)
    found = shutil.which("initdb")
    return Path(found).parent if found else None


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def private_server() -> Iterator[PrivateServer]:
    """A throwaway PostgreSQL server (initdb into a temporary directory), stopped at the end."""
    bindir = _postgres_bindir()
    if bindir is None:
        pytest.skip("no PostgreSQL server binaries (initdb, pg_ctl) to start a private server")
    # PostgreSQL refuses to run as root: run it as the postgres user then.
    as_postgres = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
    base = Path(tempfile.mkdtemp(prefix="brightrun-pg-"))
    if as_postgres:
        shutil.chown(base, "postgres")
    server = PrivateServer(bindir, base, _free_port(), as_postgres)
    try:
        subprocess.run([*as_postgres, str(bindir / "initdb"), "-D", str(base / "data"), "-A",
                        "trust", "-U", "postgres", "-E", "UTF8", "--no-sync"],
                       check=True, capture_output=True, timeout=120)
        server.start()
        yield server
    finally:
        with contextlib.suppress(Exception):
            server.stop("immediate")  # its data is thrown away: no shutdown checkpoint
        shutil.rmtree(base, ignore_errors=True)


# --- Pipelines, trials and what each must leave -----------------------------------------------

def fault_pipeline(url: str, storage: Path, make_database: Callable[[str], Database]) -> Pipeline:
    """A pipeline on `url` with the short heartbeat of these tests."""
    database = make_database(url)
    database.upgrade()
    store = LocalObjectStore(storage)
    pipeline = Pipeline(database, store, fetch_concurrency=1,
                        retry=RetrySettings(attempts=3, base_delay=0.0, max_delay=0.0),
                        lifecycle=LIFECYCLE)
    store.ensure_bucket(pipeline.source_bucket)
    store.ensure_bucket(pipeline.training_bucket)
    return pipeline


def seed_file(pipeline: Pipeline, requests: int, seed: int) -> tuple[str, list[DemoConversation]]:
    """A training file of two conversations, and the conversations of `requests` more requests."""
    count = 2 + CONVERSATIONS_PER_REQUEST * requests
    dataset = generate_demo_dataset(seed, batches=1, conversations_per_batch=count, unbatched=0,
                                    ineligible_per_batch=0)
    seed_dataset(pipeline, dataset)
    rows = dataset.conversations
    return create_file(pipeline, rows[:2]).training_file_id, rows[2:]


def request_rows(rows: list[DemoConversation], index: int) -> list[DemoConversation]:
    """The conversations of the index-th request."""
    return rows[CONVERSATIONS_PER_REQUEST * index:CONVERSATIONS_PER_REQUEST * (index + 1)]


def nothing_left_behind(pipeline: Pipeline, file_id: str) -> None:
    """No lease on the file, and no object beyond those of its published versions."""
    with pipeline.db.engine.connect() as connection:
        leases = connection.execute(sa.select(sa.func.count()).select_from(
            training_file_builds).where(training_file_builds.c.training_file_id == file_id)
        ).scalar()
    assert leases == 0, "the failed attempt left its build lease"
    published = {o.key for v in pipeline.db.list_versions(file_id)
                 for o in pipeline.db.version_objects(file_id, v.version)}
    stored = set(pipeline.store.list_keys(pipeline.training_bucket, f"{file_id}/"))
    assert stored == published, f"objects of an unpublished version: {stored - published}"


def run_trial(pipeline: Pipeline, injector: Injector, instance: dg.DagsterInstance, file_id: str,
              rows: list[DemoConversation], trial: Trial,
              background: Callable[[], None] | None = None) -> str:
    """One request run under one fault, then carried to its end as the system would carry it;
    returns how it ended: on the "first" or "second" attempt, "recovered" (the second, after
    the sensor's recovery ended a first attempt that could not record its failure), or
    "relaunched" (the first attempt run again: it failed before starting the request)."""
    before = pipeline.db.get_file(file_id)
    assert before is not None and before.current_version is not None
    request_id = claimed_request(pipeline, rows, training_file=file_id)
    error: BaseException | None = None
    with injector.armed(None if background else trial):
        timer = threading.Thread(target=background) if background else None
        if timer:
            timer.start()
        try:
            pipeline.run_request(request_id, f"{trial}-first", 1)
        except Exception as exc:  # noqa: BLE001 - which errors may end a run is checked below
            error = exc
        if timer:
            timer.join()
    request = pipeline.db.get_request(request_id)
    assert request is not None
    if background is None:
        assert injector.struck_at is not None, f"{trial}: the fault never struck"
    if request.status == "succeeded":
        assert error is None, f"{trial}: published, yet the run reported {error!r}"
        outcome = "first"
    else:
        assert error is not None
        assert isinstance(error, sa.exc.DBAPIError), f"{trial}: unexpected {error!r}"
        outcome = "second"
        if request.status == "queued":
            # The run failed before it could start the request, and could not record why (the
            # server was restarting): the claim stands, and the sensor launches it again.
            pipeline.run_request(request_id, f"{trial}-again", request.attempts)
            request = pipeline.db.get_request(request_id)
            assert request is not None and request.status == "succeeded"
            nothing_left_behind(pipeline, file_id)
            return "relaunched"
        if request.status == "running":
            # The failure could not be recorded (the server was restarting): the sensor's
            # recovery ends the attempt once its heartbeat is stale.
            later = utc_now() + timedelta(seconds=3 * STALE_AFTER_SECONDS + 1)
            assert request_id in recover(instance, pipeline, now=later).ended_attempts
            request = pipeline.db.get_request(request_id)
            assert request is not None
            # A lease the failed attempt could not give up expires: the next build waits for
            # that, then takes it over.
            outcome = "recovered"
        else:
            # The run recorded its own failure: a database error, hence transient.
            assert request.error is not None and "OperationalError" in request.error.message
            nothing_left_behind(pipeline, file_id)
        # Back to pending for a new attempt; nothing of it was published.
        assert request.status == "pending", request
        current = pipeline.db.get_file(file_id)
        assert current is not None and current.current_version == before.current_version
        assert pipeline.claim(request_id) is not None
        pipeline.run_request(request_id, f"{trial}-second", 2)
    request = pipeline.db.get_request(request_id)
    assert request is not None and request.status == "succeeded"
    assert request.result_version == before.current_version + 1
    nothing_left_behind(pipeline, file_id)
    return outcome


SURVIVABLE = [Trial("beat", 2, "first"), Trial("renew", 2, "first")]
# The membership is read by the builder (members:1) and again by the blocking checks
# (members:2): a fault in the checks is a database fault, not a failed check.
FAILING = [Trial("members", 1, "second"), Trial("members", 2, "second"),
           *[Trial("publish", n, "second") for n in range(1, PUBLICATION_STATEMENTS + 1)],
           Trial("commit", 1, "second"), Trial("reply", 1, "first")]
CUT_EVERYTHING = [Trial("fetch", 2, "first"), Trial("write", 1, "first"),
                  Trial("write", 3, "first")]


def test_connections_cut_mid_run_publish_once_or_retry_cleanly(
        database_url: str, tmp_path: Path, make_database: Callable[[str], Database]) -> None:
    pipeline = fault_pipeline(database_url, tmp_path / "storage", make_database)
    postgres = database_url.startswith("postgresql")
    injector = postgres_injector(pipeline, database_url) if postgres else sqlite_injector(pipeline)
    plan = [*(CUT_EVERYTHING if postgres else []), *SURVIVABLE, *FAILING]
    file_id, rows = seed_file(pipeline, len(plan), seed=31)
    outcomes: Counter[str] = Counter()
    with dg.instance_for_test() as instance:
        for index, trial in enumerate(plan):
            batch = request_rows(rows, index)
            outcome = run_trial(pipeline, injector, instance, file_id, batch, trial)
            assert outcome == trial.expect, f"{trial}: ended on the {outcome} attempt"
            outcomes[f"{trial.phase}:{outcome}"] += 1
            if trial.phase in ("fetch", "write"):
                # The heartbeat and the lease went on beating on fresh connections.
                assert injector.beats_after_fault("beat") >= 1, trial
                assert injector.beats_after_fault("renew") >= 1, trial
            elif trial.phase in ("beat", "renew"):
                assert injector.failed(trial.phase) >= 1, f"{trial}: no beat failed"
    report = audit_file(pipeline, file_id)
    assert (report.versions, report.conversations) == (
        1 + len(plan), 2 + CONVERSATIONS_PER_REQUEST * len(plan))
    assert no_run_heartbeats_left(pipeline)
    print(f"database faults ({'postgresql' if postgres else 'sqlite'}): {len(plan)} injected, "
          f"outcomes {dict(outcomes)}")


# --- Restarts of a private server --------------------------------------------------------------

RESTARTS = [Trial("fetch", 2, "first"), Trial("write", 2, "first"),
            Trial("members", 1, "second"), Trial("publish", 2, "second"),
            Trial("commit", 1, "second")]
RANDOM_RESTARTS = 4


def test_server_restarts_mid_run_publish_once_or_retry_cleanly(
        private_server: PrivateServer, tmp_path: Path,
        make_database: Callable[[str], Database]) -> None:
    url = private_server.create_database()
    pipeline = fault_pipeline(url, tmp_path / "storage", make_database)

    def restart_in_place(_raw: Any = None) -> None:
        private_server.restart()

    injector = Injector(pipeline, restart_in_place, restart_in_place, restart_in_place)
    rng = random.Random(8)
    delays = [rng.uniform(0.0, 0.25) for _ in range(RANDOM_RESTARTS)]
    file_id, rows = seed_file(pipeline, len(RESTARTS) + len(delays), seed=37)
    outcomes: Counter[str] = Counter()
    with dg.instance_for_test() as instance:
        for index, trial in enumerate(RESTARTS):
            batch = request_rows(rows, index)
            outcome = run_trial(pipeline, injector, instance, file_id, batch, trial)
            assert outcome == trial.expect, f"restart at {trial}: ended on the {outcome} attempt"
            outcomes[f"{trial.phase}:{outcome}"] += 1
        for offset, delay in enumerate(delays, start=len(RESTARTS)):
            batch = request_rows(rows, offset)

            def restart_later(delay: float = delay) -> None:
                time.sleep(delay)
                private_server.restart()

            outcome = run_trial(pipeline, injector, instance, file_id, batch,
                                Trial("random", int(delay * 1000), "either"),
                                background=restart_later)
            outcomes[f"random:{outcome}"] += 1
    report = audit_file(pipeline, file_id)
    trials = len(RESTARTS) + len(delays)
    assert (report.versions, report.conversations) == (
        1 + trials, 2 + CONVERSATIONS_PER_REQUEST * trials)
    later = utc_now() + timedelta(seconds=3 * STALE_AFTER_SECONDS + 1)
    with dg.instance_for_test() as instance:
        recover(instance, pipeline, now=later)  # beats a run could not end while restarting
    assert no_run_heartbeats_left(pipeline)
    print(f"server restarts: {trials}, outcomes {dict(outcomes)}")


# --- Dagster runs ------------------------------------------------------------------------------

def dagster_definitions(url: str, tmp_path: Path) -> dg.Definitions:
    return build_definitions(Settings(database_url=url, storage_root=tmp_path / "storage",
                                      dagster_home=tmp_path / "dagster", lifecycle=LIFECYCLE))


def launch(defs: dg.Definitions, instance: dg.DagsterInstance,
           run_request: dg.RunRequest) -> dg.ExecuteInProcessResult:
    """Execute a sensor's run request in-process, as the daemon would launch it."""
    key = run_request.partition_key
    assert key is not None
    if not instance.has_dynamic_partition("training_files", key):
        instance.add_dynamic_partitions("training_files", [key])
    return defs.resolve_job_def(TRAINING_FILE_JOB).execute_in_process(
        instance=instance, partition_key=key, tags={**run_request.tags, TRAINING_FILE_TAG: key},
        raise_on_error=False)


def tick(defs: dg.Definitions, instance: dg.DagsterInstance) -> list[dg.RunRequest]:
    with dg.build_sensor_context(instance=instance, definitions=defs,
                                 resources={"brightrun": defs.resources["brightrun"]}) as context:
        result = selection_request_sensor(context)
    assert isinstance(result, dg.SensorResult)
    return list(result.run_requests or [])


@contextlib.contextmanager
def statement_cut(url: str, statement_start: str) -> Iterator[list[int]]:
    """Terminate the backend of the first connection (of any engine on `url`'s database) about
    to run a statement starting with `statement_start`; yields the pids cut."""
    database = sa.engine.make_url(url).database
    cut: list[int] = []

    def before_cursor_execute(connection: sa.Connection, _cursor: Any, statement: str,
                              *_args: Any) -> None:
        if (not cut and connection.engine.url.database == database
                and statement.startswith(statement_start)):
            pid = connection.connection.dbapi_connection.info.backend_pid
            cut.append(pid)
            terminate_backend(url, pid)

    sa.event.listen(sa.engine.Engine, "before_cursor_execute", before_cursor_execute)
    try:
        yield cut
    finally:
        sa.event.remove(sa.engine.Engine, "before_cursor_execute", before_cursor_execute)


def test_dagster_run_losing_its_connection_in_the_publication_is_retried(
        postgres_url: str, tmp_path: Path, make_database: Callable[[str], Database]) -> None:
    pipeline = fault_pipeline(postgres_url, tmp_path / "storage", make_database)
    file_id, rows = seed_file(pipeline, 1, seed=41)
    defs = dagster_definitions(postgres_url, tmp_path)
    request = pipeline.submit(conversation_ids=[c.conversation_id for c in rows],
                              training_file=file_id)
    with dg.instance_for_test() as instance:
        [first] = tick(defs, instance)
        with statement_cut(postgres_url, "INSERT INTO training_file_versions") as cut:
            failed = launch(defs, instance, first)
        assert cut and not failed.success
        stored = pipeline.db.get_request(request.id)
        assert stored is not None and (stored.status, stored.attempts) == ("pending", 1)
        assert pipeline.db.get_file(file_id).current_version == 1  # type: ignore[union-attr]
        nothing_left_behind(pipeline, file_id)

        [second] = tick(defs, instance)
        assert second.tags[ATTEMPT_TAG] == "2" and second.run_key != first.run_key
        assert launch(defs, instance, second).success
    stored = pipeline.db.get_request(request.id)
    assert stored is not None and (stored.status, stored.result_version) == ("succeeded", 2)
    audit_file(pipeline, file_id)
    assert no_run_heartbeats_left(pipeline)


def test_dagster_run_starting_while_the_server_is_down_is_attempted_again(
        private_server: PrivateServer, tmp_path: Path,
        make_database: Callable[[str], Database]) -> None:
    url = private_server.create_database()
    pipeline = fault_pipeline(url, tmp_path / "storage", make_database)
    file_id, rows = seed_file(pipeline, 1, seed=43)
    defs = dagster_definitions(url, tmp_path)
    request = pipeline.submit(conversation_ids=[c.conversation_id for c in rows],
                              training_file=file_id)
    with dg.instance_for_test() as instance:
        [first] = tick(defs, instance)
        assert first.tags[REQUEST_TAG] == request.id
        private_server.stop()
        try:
            failed = launch(defs, instance, first)
        finally:
            private_server.start()
        assert not failed.success
        # Nothing could be written while the server was down: the claim is as the sensor left it.
        stored = pipeline.db.get_request(request.id)
        assert stored is not None and stored.status == "queued"
        # The sensor's recovery ends the attempt of the failed run once its claim is stale ...
        later = utc_now() + timedelta(seconds=3 * STALE_AFTER_SECONDS + 1)
        assert recover(instance, pipeline, now=later).ended_attempts == [request.id]
        # ... and its next tick claims it again.
        [second] = tick(defs, instance)
        assert second.tags[ATTEMPT_TAG] == "2"
        assert launch(defs, instance, second).success
    stored = pipeline.db.get_request(request.id)
    assert stored is not None and (stored.status, stored.result_version) == ("succeeded", 2)
    audit_file(pipeline, file_id)
