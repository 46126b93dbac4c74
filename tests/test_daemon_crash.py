"""The daemon path under crashes: run workers launched by the real daemon are killed with SIGKILL
at random moments while requests for one file run. Every request still ends published, once,
with no human action, and no run or training file is left blocked."""

from __future__ import annotations

import os
import random
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import boto3
import dagster as dg
import pytest
from audit import audit_file
from seed import create_file, seed_dataset
from test_daemon import (  # noqa: F401 - dagster_postgres_url is a fixture
    FINAL,
    REPO,
    dagster_postgres_url,
    insert_request,
    run_daemon,
)

from assets.partitions import REQUEST_TAG
from brightrun_pipeline.demo_data import generate_demo_dataset
from brightrun_pipeline.service import Pipeline

# `make soak` raises it (BRIGHTRUN_SOAK_DAEMON_REQUESTS); three in four runs get killed.
REQUESTS = int(os.environ.get("BRIGHTRUN_SOAK_DAEMON_REQUESTS", "4"))
MAX_KILLS = max(2, REQUESTS * 3 // 4)
DEADLINE_SECONDS = 120 + 30 * REQUESTS
# Dead runs are found after 10 s: above the slowest launch-to-first-event time of a run worker
# seen here under load (about 6 s), so that no live run is taken for dead.
LIVENESS = {"BRIGHTRUN_HEARTBEAT_SECONDS": "0.5", "BRIGHTRUN_STALE_AFTER_SECONDS": "10"}


@pytest.fixture(params=["sqlite", "postgresql"])
def quick_daemon(request: pytest.FixtureRequest,
                 tmp_path: Path) -> Iterator[tuple[Pipeline, Path, dict[str, str]]]:
    """The daemon with heartbeats short enough for a test: on the embedded default (SQLite
    everywhere), and on the production instance configuration (PostgreSQL run storage, S3
    compute logs, our tables on PostgreSQL)."""
    home = tmp_path / "dagster"
    home.mkdir()
    if request.param == "sqlite":
        shutil.copyfile(REPO / "dagster.yaml", home / "dagster.yaml")
        database_url, extra = request.getfixturevalue("sqlite_url"), {}
    else:
        shutil.copyfile(REPO / "deploy" / "dagster.postgres.yaml", home / "dagster.yaml")
        database_url = request.getfixturevalue("postgres_url")
        endpoint = request.getfixturevalue("s3_endpoint_url")
        boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1",
                     aws_access_key_id="testing", aws_secret_access_key="testing"
                     ).create_bucket(Bucket="compute-logs")
        extra = {"DAGSTER_POSTGRES_URL": request.getfixturevalue("dagster_postgres_url"),
                 "DAGSTER_COMPUTE_LOG_BUCKET": "compute-logs",
                 "DAGSTER_S3_ENDPOINT_URL": endpoint, "AWS_ACCESS_KEY_ID": "testing",
                 "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}
    for pipeline in run_daemon(tmp_path, home, database_url, {**LIVENESS, **extra}):
        yield pipeline, home, extra


def run_workers(home: Path) -> list[tuple[int, str]]:
    """(pid, run id) of the run workers of this test's instance.

    Each worker streams its compute logs through `tail` processes watched by Dagster's
    `watch_orphans.py WORKER_PID TAIL_PID`; the tailed file's path names the run, and the
    worker's environment names the instance.
    """
    logs = re.compile(rb"/([0-9a-f-]{36})/compute_logs/")
    instance = f"DAGSTER_HOME={home}".encode()
    workers = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            args = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if not any(arg.endswith(b"watch_orphans.py") for arg in args):
            continue
        worker_pid, tail_pid = (int(arg) for arg in [a for a in args if a.isdigit()][-2:])
        try:
            tailed = (Path("/proc") / str(tail_pid) / "cmdline").read_bytes()
            environ = (Path("/proc") / str(worker_pid) / "environ").read_bytes().split(b"\0")
        except OSError:
            continue
        match = logs.search(tailed)
        if match and instance in environ:
            workers[worker_pid] = match.group(1).decode()
    return sorted(workers.items())


def test_killed_run_workers_are_recovered(quick_daemon: tuple[Pipeline, Path, dict[str, str]],
                                          tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pipeline, home, instance_env = quick_daemon
    dataset = generate_demo_dataset(23, batches=1, conversations_per_batch=4 + REQUESTS,
                                    unbatched=0, ineligible_per_batch=0)
    seed_dataset(pipeline, dataset)
    rows = dataset.conversations
    file_id = create_file(pipeline, rows[:2], name="Under fire").training_file_id
    ids = [f"kill-{i}" for i in range(REQUESTS)]
    for request_id, conversation in zip(ids, rows[2:2 + REQUESTS], strict=True):
        if pipeline.db.engine.dialect.name == "postgresql":
            insert_request(pipeline.db, request_id, [conversation.conversation_id],
                           file_id=file_id)
        else:  # the same INSERT as a SQLite client writes it (JSON as text)
            with pipeline.db.engine.begin() as connection:
                connection.exec_driver_sql(
                    "INSERT INTO selection_requests (id, training_file_id, conversation_ids) "
                    "VALUES (?, ?, ?)",
                    (request_id, file_id, f'["{conversation.conversation_id}"]'))

    monkeypatch.setenv("DAGSTER_HOME", str(home))
    for name, value in instance_env.items():
        monkeypatch.setenv(name, value)
    rng = random.Random(3)
    began = time.monotonic()
    killed: dict[str, str] = {}
    deadline = time.monotonic() + DEADLINE_SECONDS
    with dg.DagsterInstance.get() as instance:
        while time.monotonic() < deadline:
            statuses = [pipeline.db.get_request(i) for i in ids]
            if all(r is not None and r.status in FINAL for r in statuses):
                break
            victim = None
            if len(killed) < MAX_KILLS:
                # A run whose request is `running` is mid-build: its steps started and it has
                # not published (publication makes the request `succeeded`).
                building = {r.dagster_run_id: r.id for r in statuses
                            if r is not None and r.status == "running" and r.id not in killed}
                for pid, run_id in run_workers(home):
                    if run_id in building:
                        victim = (pid, run_id, building[run_id])
                        break
            if victim is None:
                time.sleep(0.05)
                continue
            pid, run_id, request_id = victim
            time.sleep(rng.uniform(0.0, 0.3))  # a random moment of that build
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                continue  # it ended first; another run will do
            killed[request_id] = run_id
        else:
            pytest.fail("requests still open after the deadline:\n"
                        + (tmp_path / "daemon.log").read_text(errors="replace")[-4000:])
        # A worker killed after its publication leaves a run that only the recovery ends.
        unfinished = dg.RunsFilter(statuses=[
            dg.DagsterRunStatus.STARTED, dg.DagsterRunStatus.STARTING,
            dg.DagsterRunStatus.QUEUED, dg.DagsterRunStatus.NOT_STARTED])
        settle = time.monotonic() + 60
        while (stuck := instance.get_runs(filters=unfinished)) and time.monotonic() < settle:
            time.sleep(0.5)
        killed_runs = [instance.get_run_by_id(run_id) for run_id in killed.values()]

    results = [pipeline.db.get_request(i) for i in ids]
    assert [r.status for r in results] == ["succeeded"] * REQUESTS, results  # type: ignore[union-attr]
    assert sorted(r.result_version for r in results) == list(range(2, 2 + REQUESTS))  # type: ignore[union-attr]
    assert len(killed) >= 2, "the test killed too few workers to show anything"
    # A worker killed after its run had ended leaves that run's outcome; every other killed
    # run was failed.
    assert all(run is not None and run.is_finished for run in killed_runs)
    assert any(run.status == dg.DagsterRunStatus.FAILURE for run in killed_runs), [  # type: ignore[union-attr]
        (run.run_id, run.status, run.tags.get(REQUEST_TAG)) for run in killed_runs
        if run is not None]
    # A request whose worker was killed was published either by that very run (killed after
    # its publication committed) or by a later attempt; nobody else was attempted twice.
    by_id = {r.id: r for r in results}  # type: ignore[union-attr]
    for request_id, run_id in killed.items():
        request = by_id[request_id]
        assert request.dagster_run_id == run_id or request.attempts >= 2, request
    assert all(r.attempts == 1 for r in results if r.id not in killed)  # type: ignore[union-attr]
    assert not stuck, stuck
    report = audit_file(pipeline, file_id)
    assert report.versions == 1 + REQUESTS
    print(f"daemon trials: {REQUESTS} requests, {len(killed)} run workers killed "
          f"({time.monotonic() - began:.0f} s)")

    # With the daemon running, `--wait` leaves the request to it and only follows it: one CLI
    # waits to the end, another is killed while it waits; both requests publish.
    env = {**os.environ, **LIVENESS, **instance_env, "DAGSTER_HOME": str(home),
           "BRIGHTRUN_DATABASE_URL": pipeline.db.url,
           "BRIGHTRUN_STORAGE_ROOT": str(tmp_path / "storage")}
    brightrun = Path(sys.executable).parent / "brightrun"
    follower, quitter = (subprocess.Popen(
        [str(brightrun), "files", "add", file_id, "--conversation", c.conversation_id, "--wait"],
        env=env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for c in rows[2 + REQUESTS:4 + REQUESTS])
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not any(
            rows[3 + REQUESTS].conversation_id in r.conversation_ids
            for r in pipeline.db.list_requests()):
        time.sleep(0.1)
    quitter.kill()
    quitter.communicate()
    out, err = follower.communicate(timeout=DEADLINE_SECONDS)
    assert follower.returncode == 0, out + err
    assert "the Dagster daemon processes it" in err and "published" in out
    deadline = time.monotonic() + DEADLINE_SECONDS
    while time.monotonic() < deadline and {
            r.status for r in pipeline.db.list_requests()} != {"succeeded"}:
        time.sleep(0.5)
    assert audit_file(pipeline, file_id).versions == 3 + REQUESTS
    print(f"--wait through the daemon: done after {time.monotonic() - began:.0f} s")
