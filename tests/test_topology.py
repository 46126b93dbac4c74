"""The production topology under process deaths.

A gRPC code server, `dagster-webserver` and `dagster-daemon` run as separate processes, the
latter two on a workspace that points at the code server, all on the production instance
configuration (deploy/dagster.postgres.yaml: PostgreSQL storage, S3 compute logs); our tables
are on PostgreSQL and sources and training files on S3 (moto). Requests are inserted as plain
SQL rows. While runs are in flight, each of the three processes is killed once with SIGKILL
and started again with the same command; every request still ends as it should with no human
action.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import dagster as dg
import psycopg
import pytest
from audit import audit_file, no_run_heartbeats_left
from botocore.client import BaseClient
from psycopg import sql
from seed import create_file, eligible, is_eligible, seed_dataset
from test_daemon import FINAL, REPO, insert_request

from assets.partitions import ATTEMPT_TAG, REQUEST_TAG
from brightrun_pipeline.db.repository import Database
from brightrun_pipeline.demo_data import DemoConversation, generate_demo_dataset
from brightrun_pipeline.s3_store import S3ObjectStore
from brightrun_pipeline.service import Pipeline, new_file_id
from jobs import TRAINING_FILE_JOB

BIN = Path(sys.executable).parent
DEADLINE_SECONDS = 150
POLL_SECONDS = 0.1
STALE_AFTER_SECONDS = 10
LIVENESS = {"BRIGHTRUN_HEARTBEAT_SECONDS": "0.5",
            "BRIGHTRUN_STALE_AFTER_SECONDS": str(STALE_AFTER_SECONDS)}
LOCATION = "brightrun"
ACTIVE = [dg.DagsterRunStatus.STARTED, dg.DagsterRunStatus.STARTING,
          dg.DagsterRunStatus.QUEUED, dg.DagsterRunStatus.NOT_STARTED]
EXISTING = ("A", "B")
ADDS_PER_FILE = 2
CREATE_SIZE = 10
ADD_SIZE = 5
RUNS_QUERY = "{ runsOrError { __typename ... on Runs { results { runId status } } } }"
LOCATIONS_QUERY = ("{ workspaceOrError { __typename ... on Workspace { locationEntries { name "
                   "loadStatus locationOrLoadError { __typename } } } } }")


# --- Processes --------------------------------------------------------------------------------

@dataclass
class Service:
    """One long-running process of the deployment, started (and restarted) with one command in
    a session of its own, as a supervisor (or a container) runs it."""

    name: str
    argv: list[str]
    env: dict[str, str]
    cwd: Path
    logs: Path
    process: subprocess.Popen[bytes] | None = None
    starts: int = 0

    def start(self) -> None:
        """Start the process (again)."""
        self.starts += 1
        with open(self.logs / f"{self.name}-{self.starts}.log", "wb") as log:
            self.process = subprocess.Popen(self.argv, cwd=self.cwd, env=self.env, stdout=log,
                                            stderr=subprocess.STDOUT, start_new_session=True)

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def kill(self) -> None:
        """SIGKILL the process and everything it started, as when its container dies (the code
        server's run workers die with it)."""
        os.killpg(self.pid, signal.SIGKILL)
        assert self.process is not None
        self.process.wait()

    def stop(self) -> None:
        """Ask the process group to stop, as a supervisor does; leftovers are killed after."""
        if self.process is not None and self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.pid, signal.SIGINT)


def processes_of(home: Path) -> list[int]:
    """Every process started for this test's instance (the services, run workers and their
    helpers): all inherited DAGSTER_HOME=<home>, which no other test uses."""
    marker = f"DAGSTER_HOME={home}".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            environ = (entry / "environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if marker in environ:
            found.append(int(entry.name))
    return found


def run_workers(code_server_pid: int) -> int:
    """How many run workers the code server has spawned and not yet reaped (multiprocessing
    children; its resource tracker aside)."""
    count = 0
    for task in (Path("/proc") / str(code_server_pid) / "task").glob("*"):
        try:
            children = (task / "children").read_text().split()
        except OSError:
            continue
        for child in children:
            try:
                command = (Path("/proc") / child / "cmdline").read_bytes()
            except OSError:
                continue
            count += b"spawn_main" in command
    return count


def free_port() -> int:
    """A TCP port nothing listens on right now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def graphql(port: int, query: str) -> dict[str, Any]:
    """One GraphQL query to the webserver."""
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/graphql", data=json.dumps({"query": query}).encode(),
        headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read())["data"]


def webserver_answers(port: int) -> bool:
    """Whether the webserver answers GraphQL with the code location loaded from the server."""
    try:
        entries = graphql(port, LOCATIONS_QUERY)["workspaceOrError"]["locationEntries"]
    except (OSError, ValueError, KeyError, TypeError):  # not up, or still loading
        return False
    return any(entry["name"] == LOCATION and entry["loadStatus"] == "LOADED"
               and entry["locationOrLoadError"]["__typename"] == "RepositoryLocation"
               for entry in entries)


def code_server_serves(port: int) -> bool:
    """Whether the code server passes its health check (what a readiness probe runs)."""
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except OSError:
        return False
    try:
        return subprocess.run([str(BIN / "dagster"), "api", "grpc-health-check", "-h",
                               "127.0.0.1", "-p", str(port)], capture_output=True,
                              timeout=60).returncode == 0
    except subprocess.TimeoutExpired:
        return False


def daemon_beats_since(instance: dg.DagsterInstance, since: float) -> bool:
    """Whether a daemon's sensor loop beat after `since` (a wall-clock time)."""
    beat = instance.get_daemon_heartbeats().get("SENSOR")
    return beat is not None and beat.timestamp > since


# --- The deployment ---------------------------------------------------------------------------

@dataclass
class Deployment:
    """The three services, the instance they share and the pipeline the test inspects."""

    code_server: Service
    daemon: Service
    webserver: Service
    grpc_port: int
    web_port: int
    pipeline: Pipeline
    instance: dg.DagsterInstance
    logs: Path
    compute_log_bucket: str
    ready_after: float = 0.0
    # Called on every look of every wait (the test follows its requests through it).
    on_poll: Callable[[], None] = lambda: None

    def wait_until(self, condition: Callable[[], Any], what: str, deadline: float) -> Any:
        """Poll until the condition returns something truthy; fail with the logs at the
        deadline."""
        while time.monotonic() < deadline:
            self.on_poll()
            found = condition()
            if found:
                return found
            time.sleep(POLL_SECONDS)
        tails = "\n".join(f"--- {log.name}\n{log.read_text(errors='replace')[-3000:]}"
                          for log in sorted(self.logs.glob("*.log")))
        pytest.fail(f"timed out waiting for {what}\n{tails}")

    def ready(self, service: Service, since: float, deadline: float) -> None:
        """Wait until the service does its job again."""
        if service is self.code_server:
            self.wait_until(lambda: code_server_serves(self.grpc_port), "the code server",
                            deadline)
        elif service is self.webserver:
            self.wait_until(lambda: webserver_answers(self.web_port), "the webserver", deadline)
        else:
            self.wait_until(lambda: daemon_beats_since(self.instance, since), "the daemon",
                            deadline)


@pytest.fixture
def dagster_storage_url() -> Iterator[str]:
    """A throwaway PostgreSQL database for the Dagster instance's storage."""
    name = f"brightrun_topology_{os.getpid()}_{time.time_ns()}"
    admin = "host=127.0.0.1 user=postgres dbname=postgres"
    with psycopg.connect(admin, autocommit=True) as connection:
        connection.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    yield f"postgresql+psycopg2://postgres@127.0.0.1:5432/{name}"
    with psycopg.connect(admin, autocommit=True) as connection:
        connection.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(
            sql.Identifier(name)))


@pytest.fixture
def deployment(postgres_url: str, dagster_storage_url: str, s3_endpoint_url: str,
               make_s3_client: Callable[..., BaseClient], tmp_path: Path,
               monkeypatch: pytest.MonkeyPatch) -> Iterator[Deployment]:
    """Code server, daemon and webserver started as production runs them."""
    home, logs, run_dir = tmp_path / "dagster", tmp_path / "logs", tmp_path / "run"
    for directory in (home, logs, run_dir):
        directory.mkdir()
    shutil.copyfile(REPO / "deploy" / "dagster.postgres.yaml", home / "dagster.yaml")
    suffix = uuid.uuid4().hex[:12]
    buckets = {"BRIGHTRUN_SOURCE_BUCKET": f"sources-{suffix}",
               "BRIGHTRUN_TRAINING_BUCKET": f"training-{suffix}",
               "DAGSTER_COMPUTE_LOG_BUCKET": f"compute-logs-{suffix}"}
    environment = {
        **buckets, **LIVENESS,
        "DAGSTER_HOME": str(home),
        "DAGSTER_POSTGRES_URL": dagster_storage_url,
        "DAGSTER_S3_ENDPOINT_URL": s3_endpoint_url,
        "BRIGHTRUN_DATABASE_URL": postgres_url,
        "BRIGHTRUN_STORAGE_BACKEND": "s3",
        "BRIGHTRUN_S3_ENDPOINT_URL": s3_endpoint_url,
        "BRIGHTRUN_S3_REGION": "us-east-1",
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
    }
    env = {**{k: v for k, v in os.environ.items()
              if not k.startswith(("BRIGHTRUN_", "DAGSTER_", "AWS_"))}, **environment}
    for name, value in environment.items():
        monkeypatch.setenv(name, value)

    database = Database(postgres_url)
    database.upgrade()
    store = S3ObjectStore(make_s3_client())
    for bucket in buckets.values():
        store.ensure_bucket(bucket)
    pipeline = Pipeline(database, store, source_bucket=buckets["BRIGHTRUN_SOURCE_BUCKET"],
                        training_bucket=buckets["BRIGHTRUN_TRAINING_BUCKET"])

    grpc_port, web_port = free_port(), free_port()
    workspace = tmp_path / "workspace.yaml"
    workspace.write_text(
        "load_from:\n  - grpc_server:\n"
        f"      host: 127.0.0.1\n      port: {grpc_port}\n      location_name: {LOCATION}\n")
    # The services run outside the checkout: nothing depends on it as the working directory.
    services = [
        Service("code-server", [str(BIN / "dagster"), "api", "grpc", "-m",
                                "brightrun_pipeline.definitions", "-a", "defs", "-h",
                                "127.0.0.1", "-p", str(grpc_port), "--location-name", LOCATION],
                env, run_dir, logs),
        Service("daemon", [str(BIN / "dagster-daemon"), "run", "-w", str(workspace)],
                env, run_dir, logs),
        Service("webserver", [str(BIN / "dagster-webserver"), "-w", str(workspace), "-h",
                              "127.0.0.1", "-p", str(web_port)], env, run_dir, logs),
    ]
    try:
        # The instance's tables exist before the services start, as after `dagster instance
        # migrate` in a deployment.
        with dg.DagsterInstance.get() as instance:
            deployment = Deployment(*services, grpc_port, web_port, pipeline, instance, logs,
                                    buckets["DAGSTER_COMPUTE_LOG_BUCKET"])
            started, wall = time.monotonic(), time.time()
            deadline = started + DEADLINE_SECONDS
            for service in services:
                service.start()
            for service in services:
                deployment.ready(service, wall, deadline)
            deployment.ready_after = time.monotonic() - started
            yield deployment
    finally:
        for service in reversed(services):
            service.stop()
        stopping = time.monotonic() + 15
        while time.monotonic() < stopping and any(
                s.process is not None and s.process.poll() is None for s in services):
            time.sleep(POLL_SECONDS)
        for pid in processes_of(home):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        for service in services:
            if service.process is not None:
                service.process.wait(timeout=30)
        database.dispose()


# --- Kills ------------------------------------------------------------------------------------

@dataclass
class Kill:
    """One process killed while a build was in flight."""

    service: str
    run_id: str
    request_id: str
    attempt: int
    at: float
    back_after: float = 0.0
    workers_killed: int = 0
    # Runs of the training-file job that were starting or started when the process died.
    runs_in_flight: list[str] = field(default_factory=list)


@dataclass
class Requests:
    """The requests inserted and when the test first saw each one end."""

    pipeline: Pipeline
    started: float
    ended_at: dict[str, float] = field(default_factory=dict)
    ids: list[str] = field(default_factory=list)

    def insert(self, request_id: str, conversations: list[DemoConversation],
               **target: str) -> None:
        """One plain-SQL INSERT, as any application writes it."""
        insert_request(self.pipeline.db, request_id,
                       [c.conversation_id for c in conversations], **target)
        self.ids.append(request_id)

    def poll(self) -> None:
        """Note the requests that ended since the last look."""
        for request_id in self.ids:
            if request_id not in self.ended_at:
                request = self.pipeline.db.get_request(request_id)
                if request is not None and request.status in FINAL:
                    self.ended_at[request_id] = time.monotonic()

    def ended(self) -> bool:
        """Whether every request reached a final status."""
        return all(request_id in self.ended_at for request_id in self.ids)


def in_flight(deployment: Deployment, spent: set[str]) -> tuple[dg.DagsterRun, int] | None:
    """A run building its request right now (the request is `running` under it) and the
    request's attempt, for a request no earlier kill chose."""
    for run in deployment.instance.get_runs(filters=dg.RunsFilter(
            job_name=TRAINING_FILE_JOB, statuses=[dg.DagsterRunStatus.STARTED])):
        request_id = run.tags.get(REQUEST_TAG)
        if request_id is None or request_id in spent:
            continue
        request = deployment.pipeline.db.get_request(request_id)
        if (request is not None and request.status == "running"
                and request.dagster_run_id == run.run_id):
            return run, request.attempts
    return None


def kill_mid_request(deployment: Deployment, service: Service, kills: list[Kill],
                     deadline: float) -> None:
    """Wait for a build in flight, SIGKILL the service, start it again and wait until it
    serves."""
    spent = {kill.request_id for kill in kills}
    run, attempt = deployment.wait_until(
        lambda: in_flight(deployment, spent), f"a build in flight to kill the {service.name} "
        "under", deadline)
    workers = run_workers(service.pid) if service is deployment.code_server else 0
    at, wall = time.monotonic(), time.time()
    service.kill()
    kill = Kill(service.name, run.run_id, run.tags[REQUEST_TAG], attempt, at,
                workers_killed=workers)
    kill.runs_in_flight = [r.run_id for r in deployment.instance.get_runs(filters=dg.RunsFilter(
        job_name=TRAINING_FILE_JOB,
        statuses=[dg.DagsterRunStatus.STARTING, dg.DagsterRunStatus.STARTED]))]
    service.start()
    deployment.ready(service, wall, deadline)
    kill.back_after = time.monotonic() - at
    kills.append(kill)


# --- The test ---------------------------------------------------------------------------------

def test_every_process_of_the_deployment_can_die_mid_request(deployment: Deployment) -> None:
    pipeline, instance = deployment.pipeline, deployment.instance
    dataset = generate_demo_dataset(
        29, batches=1, conversations_per_batch=1 + CREATE_SIZE * (1 + len(EXISTING))
        + ADD_SIZE * ADDS_PER_FILE * len(EXISTING), unbatched=0, ineligible_per_batch=1)
    seed_dataset(pipeline, dataset)
    rows = iter(eligible(dataset))
    ineligible = next(c for c in dataset.conversations if not is_eligible(c))

    def take(count: int) -> list[DemoConversation]:
        return [next(rows) for _ in range(count)]

    # Two files that already have a version, built before the requests come in.
    files = {name: create_file(pipeline, take(CREATE_SIZE), name=f"Topology {name}")
             .training_file_id for name in EXISTING}
    # Inserted at once: additions to both files, a new file, and a request that breaks the
    # rules (rejected at its claim, with no run). The queue runs one build per file at a time.
    requests = Requests(pipeline, time.monotonic())
    deployment.on_poll = requests.poll
    deadline = requests.started + DEADLINE_SECONDS
    for index in range(ADDS_PER_FILE):
        for name, file_id in files.items():
            requests.insert(f"add-{name}-{index}", take(ADD_SIZE), file_id=file_id)
    requests.insert("create-C", take(CREATE_SIZE), name="Topology C")
    requests.insert("bad-1", [ineligible], name="Never built")
    files["C"] = new_file_id("create-C")

    # Each process dies under a build in flight and comes back with the same command.
    kills: list[Kill] = []
    for service in (deployment.code_server, deployment.daemon, deployment.webserver):
        kill_mid_request(deployment, service, kills, deadline)
    deployment.wait_until(requests.ended, "every request to end", deadline)
    settled = max(requests.ended_at.values()) - requests.started

    # Every request ended as it should, on consecutive versions of whole files.
    rejected = pipeline.db.get_request("bad-1")
    assert rejected is not None and rejected.status == "rejected"
    assert rejected.dagster_run_id is None and rejected.error is not None
    assert ineligible.conversation_id in rejected.error.conversations
    for request_id in (i for i in requests.ids if i != "bad-1"):
        request = pipeline.db.get_request(request_id)
        assert request is not None and request.status == "succeeded", (
            request, runs_of(instance, request_id))
    for name, file_id in files.items():
        report = audit_file(pipeline, file_id)
        versions = 1 if name == "C" else 1 + ADDS_PER_FILE
        assert report.versions == versions
        assert report.conversations == CREATE_SIZE + (versions - 1) * ADD_SIZE
    # Nothing is left running, queued or beating. A run ends a moment after the publication
    # that ends its request: it still reports the version's readiness report as metadata.
    deployment.wait_until(
        lambda: not instance.get_runs(filters=dg.RunsFilter(statuses=ACTIVE), limit=1),
        "the runs of the ended requests to end", time.monotonic() + 60)
    stuck = instance.get_runs(filters=dg.RunsFilter(statuses=ACTIVE))
    assert not stuck, [(run.run_id, run.status) for run in stuck]
    assert no_run_heartbeats_left(pipeline)

    # The code server took its run workers with it: every run starting or started then failed
    # (the recovery failed the dead ones, Dagster a launch the death cut off), and the build it
    # was killed under published on a later attempt.
    assert [kill.service for kill in kills] == ["code-server", "daemon", "webserver"]
    code_server_kill, *others = kills
    assert code_server_kill.workers_killed >= 1
    for run_id in code_server_kill.runs_in_flight:
        run = instance.get_run_by_id(run_id)
        assert run is not None and run.status == dg.DagsterRunStatus.FAILURE, run_id
    assert "no heartbeat" in failure_message(instance, code_server_kill.run_id)
    hit = pipeline.db.get_request(code_server_kill.request_id)
    assert hit is not None and hit.attempts > code_server_kill.attempt
    # The daemon and the webserver own no run: the build under each went on and published on
    # the attempt it was making.
    for kill in others:
        run = instance.get_run_by_id(kill.run_id)
        request = pipeline.db.get_request(kill.request_id)
        assert run is not None and run.status == dg.DagsterRunStatus.SUCCESS, kill
        assert request is not None and request.attempts == kill.attempt, kill

    # The runs' compute logs went to S3.
    assert list(pipeline.store.list_keys(deployment.compute_log_bucket, ""))
    # The restarted webserver serves the runs the instance holds.
    runs = graphql(deployment.web_port, RUNS_QUERY)["runsOrError"]["results"]
    assert {run["runId"] for run in runs} == {run.run_id for run in instance.get_runs()}
    assert {run["status"] for run in runs} <= {"SUCCESS", "FAILURE"}

    failed = Counter("recovered" if "no heartbeat" in failure_message(instance, run["runId"])
                     else "launch cut off" for run in runs if run["status"] == "FAILURE")
    figures = "; ".join(
        f"{kill.service} killed (back in {kill.back_after:.1f} s), its request ended "
        f"{requests.ended_at[kill.request_id] - kill.at:.1f} s after the kill"
        for kill in kills)
    print(f"\ntopology: services ready {deployment.ready_after:.1f} s after start; "
          f"{len(requests.ids)} requests settled {settled:.1f} s after they were inserted; "
          f"{len(runs)} runs, failed: {dict(failed)}; {figures}; "
          f"{code_server_kill.workers_killed} run worker(s) and "
          f"{len(code_server_kill.runs_in_flight)} run(s) in flight died with the code server")


def runs_of(instance: dg.DagsterInstance, request_id: str) -> list[str]:
    """Each run of a request with its status and failure, for a failing assertion."""
    return [f"{run.run_id} attempt {run.tags.get(ATTEMPT_TAG)}: {run.status.value} "
            f"{failure_message(instance, run.run_id)}"
            for run in instance.get_runs(filters=dg.RunsFilter(tags={REQUEST_TAG: request_id}))]


def failure_message(instance: dg.DagsterInstance, run_id: str) -> str:
    """The message of a failed run's failure event."""
    records = instance.get_records_for_run(run_id, of_type=dg.DagsterEventType.RUN_FAILURE).records
    return (records[-1].event_log_entry.message or "") if records else ""
