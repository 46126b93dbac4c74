"""Many adds to one training file at the same moment, on SQLite and PostgreSQL: each ends as its
own consecutive version (or a rejection naming the duplicate), and the versions, the membership
and the stored objects always agree."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar

import pytest
from audit import audit_file, no_run_heartbeats_left, statuses
from seed import claimed_request, create_file, seed_dataset

from brightrun_pipeline.config import LifecycleSettings, RetrySettings
from brightrun_pipeline.db.repository import Database
from brightrun_pipeline.demo_data import generate_demo_dataset
from brightrun_pipeline.errors import RequestRejected
from brightrun_pipeline.service import Pipeline
from brightrun_pipeline.storage import LocalObjectStore

REPO = Path(__file__).resolve().parent.parent
BRIGHTRUN = Path(sys.executable).parent / "brightrun"
T = TypeVar("T")


def separate_pipeline(database_url: str, root: Path) -> Pipeline:
    """A pipeline with its own engine and store objects, as another process would have."""
    return Pipeline(Database(database_url), LocalObjectStore(root), fetch_concurrency=4,
                    retry=RetrySettings(attempts=3, base_delay=0.0, max_delay=0.0),
                    lifecycle=LifecycleSettings(heartbeat_seconds=0.5, stale_after_seconds=5))


def run_at_once(database_url: str, root: Path, request_ids: list[str],
                add: Callable[[Pipeline, str], T]) -> list[T]:
    """`add` for every request, each on a pipeline of its own, all released at the same moment."""
    workers = [separate_pipeline(database_url, root) for _ in request_ids]
    start = threading.Barrier(len(request_ids))

    def released(worker: Pipeline, request_id: str) -> T:
        start.wait()
        return add(worker, request_id)

    try:
        with ThreadPoolExecutor(len(request_ids)) as pool:
            return list(pool.map(released, workers, request_ids))
    finally:
        for worker in workers:
            worker.db.dispose()


def test_concurrent_adds_to_one_file_land_as_consecutive_versions(
        make_pipeline: Callable[..., Pipeline], database_url: str, tmp_path: Path) -> None:
    pipeline = make_pipeline()
    dataset = generate_demo_dataset(5, batches=1, conversations_per_batch=26, unbatched=0,
                                    ineligible_per_batch=0)
    seed_dataset(pipeline, dataset)
    rows = dataset.conversations
    file_id = create_file(pipeline, rows[:2]).training_file_id
    groups = [rows[2 + 3 * i: 5 + 3 * i] for i in range(8)]
    requests = [claimed_request(pipeline, group, training_file=file_id) for group in groups]

    def add(worker: Pipeline, request_id: str) -> int:
        return worker.run_request(request_id, f"run-{request_id[:8]}").version

    versions = run_at_once(database_url, tmp_path / "storage", requests, add)

    assert sorted(versions) == list(range(2, 2 + len(requests)))
    assert set(statuses(pipeline, requests).values()) == {"succeeded"}
    report = audit_file(pipeline, file_id)
    assert (report.versions, report.conversations) == (9, 26)
    assert no_run_heartbeats_left(pipeline)


def test_the_same_conversation_added_twice_at_once_lands_once(
        make_pipeline: Callable[..., Pipeline], database_url: str, tmp_path: Path) -> None:
    pipeline = make_pipeline()
    dataset = generate_demo_dataset(6, batches=1, conversations_per_batch=6, unbatched=0,
                                    ineligible_per_batch=0)
    seed_dataset(pipeline, dataset)
    rows = dataset.conversations
    file_id = create_file(pipeline, rows[:1]).training_file_id
    shared = rows[1]
    requests = [claimed_request(pipeline, [shared, rows[2 + i]], training_file=file_id)
                for i in range(4)]

    def add(worker: Pipeline, request_id: str) -> str:
        try:
            worker.run_request(request_id, f"run-{request_id[:8]}")
        except RequestRejected as rejection:
            assert rejection.conversations == {
                shared.conversation_id: "already in training file 'Test file' (added in version 2)"}
            return "rejected"
        return "succeeded"

    outcomes = run_at_once(database_url, tmp_path / "storage", requests, add)

    assert sorted(outcomes) == ["rejected"] * 3 + ["succeeded"]
    assert sorted(statuses(pipeline, requests).values()) == ["rejected"] * 3 + ["succeeded"]
    report = audit_file(pipeline, file_id)
    assert (report.versions, report.conversations) == (2, 3)


@pytest.mark.parametrize("rounds", [2])
def test_concurrent_wait_clis_on_one_file(database_url: str, tmp_path: Path,
                                          make_pipeline: Callable[..., Pipeline],
                                          rounds: int) -> None:
    """Four curators run `brightrun files add FILE --wait` at the same moment, twice over."""
    pipeline = make_pipeline()
    dataset = generate_demo_dataset(7, batches=1, conversations_per_batch=10, unbatched=0,
                                    ineligible_per_batch=0)
    seed_dataset(pipeline, dataset)
    rows = dataset.conversations
    record = create_file(pipeline, rows[:2])
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("BRIGHTRUN_")},
           "BRIGHTRUN_DATABASE_URL": database_url,
           "BRIGHTRUN_STORAGE_ROOT": str(tmp_path / "storage"),
           "DAGSTER_HOME": str(tmp_path / "dagster")}
    subprocess.run([str(BRIGHTRUN), "init"], env=env, cwd=tmp_path, check=True,
                   capture_output=True)
    for round_number in range(rounds):
        batch = rows[2 + 4 * round_number: 6 + 4 * round_number]
        clis = [subprocess.Popen(
            [str(BRIGHTRUN), "files", "add", record.training_file_id,
             "--conversation", c.conversation_id, "--wait"],
            env=env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            for c in batch]
        for cli in clis:
            out, err = cli.communicate(timeout=300)
            assert cli.returncode == 0, out + err
            assert "published" in out and "Traceback" not in out + err
    report = audit_file(pipeline, record.training_file_id)
    assert (report.versions, report.conversations) == (1 + 4 * rounds, 2 + 4 * rounds)


def test_a_partition_added_by_another_process_in_between_is_not_an_error(tmp_path: Path) -> None:
    """Two CLIs run the first requests of one file at once: the other inserts the file's
    partition between this one's check and its insert (Dagster's SQLite storage checks, then
    inserts). The loser goes on instead of failing its request."""
    import dagster as dg
    from sqlalchemy import event
    from sqlalchemy.engine import Engine

    from brightrun_pipeline.launcher import ensure_partition

    key = "f5754999-d96f-50ad-9976-6b0cc235c193"
    with dg.DagsterInstance.local_temp(str(tmp_path)) as mine, \
            dg.DagsterInstance.local_temp(str(tmp_path)) as other:
        interleaved: list[str] = []

        def other_inserts_first(_conn, _cursor, statement: str, *_args: object) -> None:
            if statement.startswith("INSERT INTO dynamic_partitions") and not interleaved:
                interleaved.append(statement)
                other.add_dynamic_partitions("training_files", [key])

        event.listen(Engine, "before_cursor_execute", other_inserts_first)
        try:
            ensure_partition(mine, "training_files", key)
        finally:
            event.remove(Engine, "before_cursor_execute", other_inserts_first)
        assert interleaved, "the other insert never ran in between"
        assert mine.get_dynamic_partitions("training_files") == [key]
