"""The crash suite: a build is killed with SIGKILL at chosen and at random points — during
fetches, while writing objects, between writing and publishing, inside the publication
transaction — on SQLite and PostgreSQL. After each kill, recovery ends the dead attempt, the
request runs again and publishes exactly once, and every version still verifies."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
from collections import Counter
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

import dagster as dg
import pytest
from audit import audit_file, no_run_heartbeats_left
from crash_driver import HEARTBEAT_SECONDS, STALE_AFTER_SECONDS
from seed import claimed_request, create_file, seed_dataset

from brightrun_pipeline.config import LifecycleSettings
from brightrun_pipeline.demo_data import generate_demo_dataset
from brightrun_pipeline.service import Pipeline, utc_now
from sensors.recovery import recover

DRIVER = Path(__file__).resolve().parent / "crash_driver.py"

# Twenty kill points per backend: every phase of a build, and random moments.
PLANNED = [("fetch", 1), ("fetch", 2), ("fetch", 3), ("write-before", 1), ("write-before", 2),
           ("write-before", 3), ("write-after", 1), ("write-after", 2), ("write-after", 3),
           ("between", 1), ("publish", 1), ("publish", 2), ("publish", 3), ("publish", 4)]
# `make soak` raises these (BRIGHTRUN_SOAK_RANDOM_KILLS, BRIGHTRUN_SOAK_CLI_ROUNDS).
RANDOM_TRIALS = int(os.environ.get("BRIGHTRUN_SOAK_RANDOM_KILLS", "6"))


def trials(seed: int) -> list[tuple[str, int]]:
    """The planned kill points and random delays (milliseconds after the process starts)."""
    rng = random.Random(seed)
    return PLANNED + [("random", rng.randrange(200, 1500)) for _ in range(RANDOM_TRIALS)]


@pytest.fixture
def crash_pipeline(make_pipeline: Callable[..., Pipeline]) -> Pipeline:
    """The test's pipeline, on the same short heartbeat as the killed processes."""
    base = make_pipeline()
    return Pipeline(base.db, base.store, source_bucket=base.source_bucket,
                    training_bucket=base.training_bucket, fetch_concurrency=4, retry=base.retry,
                    lifecycle=LifecycleSettings(heartbeat_seconds=HEARTBEAT_SECONDS,
                                                stale_after_seconds=STALE_AFTER_SECONDS))


def test_killed_builds_recover_and_publish_exactly_once(
        crash_pipeline: Pipeline, database_url: str, tmp_path: Path) -> None:
    pipeline = crash_pipeline
    plan = trials(seed=8)
    dataset = generate_demo_dataset(13, batches=1, conversations_per_batch=2 + 3 * len(plan),
                                    unbatched=0, ineligible_per_batch=0)
    seed_dataset(pipeline, dataset)
    rows = dataset.conversations
    file_id = create_file(pipeline, rows[:2]).training_file_id
    outcomes: Counter[str] = Counter()

    with dg.instance_for_test() as instance:
        for index, (phase, n) in enumerate(plan):
            before = pipeline.db.get_file(file_id)
            assert before is not None and before.current_version is not None
            request_id = claimed_request(pipeline, rows[2 + 3 * index: 5 + 3 * index],
                                         training_file=file_id)
            driver = subprocess.run(
                [sys.executable, str(DRIVER), database_url, str(tmp_path / "storage"),
                 request_id, phase, str(n)],
                capture_output=True, text=True, timeout=120)
            killed = driver.returncode == -signal.SIGKILL
            assert killed or driver.returncode == 0, driver.stderr
            outcomes[f"{phase}:{'killed' if killed else 'completed'}"] += 1

            # What the sensor does on its next tick once the dead process stopped beating.
            later = utc_now() + timedelta(seconds=3 * STALE_AFTER_SECONDS + 1)
            recovered = recover(instance, pipeline, now=later)
            request = pipeline.db.get_request(request_id)
            assert request is not None
            if request.status != "succeeded":
                assert killed and request_id in recovered.ended_attempts
                assert request.status == "pending", request
                # Attempted again: the leftovers of the dead attempt are cleared, and the
                # version it never published is built by this attempt.
                assert pipeline.claim(request_id) is not None
                pipeline.run_request(request_id, f"again-{index}")
            request = pipeline.db.get_request(request_id)
            assert request is not None and request.status == "succeeded"
            assert request.result_version == before.current_version + 1
            audit_file(pipeline, file_id, verify_every_version=False)

    report = audit_file(pipeline, file_id)
    assert (report.versions, report.conversations) == (1 + len(plan), 2 + 3 * len(plan))
    assert no_run_heartbeats_left(pipeline)
    # The work directories the killed builds left were swept by the builds after them.
    assert not list(pipeline.store.scratch_dir(pipeline.training_bucket).glob("build-*"))
    killed = sum(count for outcome, count in outcomes.items() if outcome.endswith("killed"))
    # Every planned point is reached by a build; only random delays may come after the end.
    assert killed >= len(PLANNED), outcomes
    print(f"crash trials: {dict(outcomes)}")


# --- The CLI's `--wait` path: four curators' terminals killed mid-request ----------------------

CLI_ROUNDS = int(os.environ.get("BRIGHTRUN_SOAK_CLI_ROUNDS", "2"))
CLIS_PER_ROUND = 4
# Longer than the drivers': a run must have started beating before it counts as dead, and a
# CLI's run starts within a few seconds even with four of them starting on two cores.
CLI_LIFECYCLE = LifecycleSettings(heartbeat_seconds=0.3, stale_after_seconds=5.0)


def test_killed_wait_clis_leave_nothing_stuck(
        crash_pipeline: Pipeline, database_url: str, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    import time

    from assets.partitions import TRAINING_FILE_TAG
    from brightrun_pipeline.config import Settings
    from brightrun_pipeline.definitions import build_definitions
    from jobs import TRAINING_FILE_JOB
    from sensors import selection_request_sensor

    pipeline = crash_pipeline
    dataset = generate_demo_dataset(17, batches=1,
                                    conversations_per_batch=2 + CLI_ROUNDS * CLIS_PER_ROUND,
                                    unbatched=0, ineligible_per_batch=0)
    seed_dataset(pipeline, dataset)
    rows = dataset.conversations
    file_id = create_file(pipeline, rows[:2]).training_file_id
    home = tmp_path / "dagster"
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("BRIGHTRUN_")},
           "BRIGHTRUN_DATABASE_URL": database_url,
           "BRIGHTRUN_STORAGE_ROOT": str(tmp_path / "storage"), "DAGSTER_HOME": str(home),
           "BRIGHTRUN_HEARTBEAT_SECONDS": str(CLI_LIFECYCLE.heartbeat_seconds),
           "BRIGHTRUN_STALE_AFTER_SECONDS": str(CLI_LIFECYCLE.stale_after_seconds)}
    brightrun = Path(sys.executable).parent / "brightrun"
    subprocess.run([str(brightrun), "init"], env=env, cwd=tmp_path, check=True,
                   capture_output=True)
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    defs = build_definitions(Settings(
        database_url=database_url, storage_root=tmp_path / "storage", dagster_home=home,
        lifecycle=CLI_LIFECYCLE))
    rng = random.Random(5)
    killed = submitted = 0
    with dg.DagsterInstance.get() as instance:
        for round_number in range(CLI_ROUNDS):
            batch = rows[2 + round_number * CLIS_PER_ROUND: 2 + (round_number + 1) * CLIS_PER_ROUND]
            spawned = time.monotonic()
            clis = [subprocess.Popen(
                [str(brightrun), "files", "add", file_id, "--conversation", c.conversation_id,
                 "--wait"], env=env, cwd=tmp_path, stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL) for c in batch]
            # Kill each terminal at a random moment of its request (start-up included).
            delays = [rng.uniform(1.5, 5.0) for _ in clis]
            for cli, delay in sorted(zip(clis, delays, strict=True), key=lambda pair: pair[1]):
                try:
                    cli.wait(timeout=max(0.0, delay - (time.monotonic() - spawned)))
                except subprocess.TimeoutExpired:
                    cli.send_signal(signal.SIGKILL)
                    cli.wait()
                    killed += 1

            # The daemon's sensor recovers what the dead CLIs left and launches the rest.
            wanted = {c.conversation_id for c in batch}
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline:
                open_requests = [r for r in pipeline.db.list_requests()
                                 if r.status not in ("succeeded", "rejected", "failed")]
                if not open_requests:
                    break
                with dg.build_sensor_context(
                        instance=instance, definitions=defs,
                        resources={"brightrun": defs.resources["brightrun"]}) as context:
                    result = selection_request_sensor(context)
                for run_request in result.run_requests or []:
                    key = run_request.partition_key
                    if not instance.has_dynamic_partition("training_files", key):
                        instance.add_dynamic_partitions("training_files", [key])
                    defs.resolve_job_def(TRAINING_FILE_JOB).execute_in_process(
                        instance=instance, partition_key=key,
                        tags={**run_request.tags, TRAINING_FILE_TAG: key}, raise_on_error=False)
                time.sleep(0.5)
            # A terminal killed before it stored its request leaves nothing; every stored one
            # published.
            requests = [r for r in pipeline.db.list_requests()
                        if set(r.conversation_ids) & wanted]
            assert requests and {r.status for r in requests} == {"succeeded"}, requests
            submitted += len(requests)
        # A run whose terminal was killed after another attempt had already published may still
        # show STARTED: the sensor's recovery pass fails it once its heartbeat is stale. Keep
        # ticking until that bound has passed; nothing may stay active after it.
        statuses = [dg.DagsterRunStatus.STARTED, dg.DagsterRunStatus.STARTING,
                    dg.DagsterRunStatus.QUEUED, dg.DagsterRunStatus.NOT_STARTED]
        deadline = time.monotonic() + 3 * CLI_LIFECYCLE.stale_after_seconds + 30
        active = instance.get_runs(filters=dg.RunsFilter(statuses=statuses))
        while active and time.monotonic() < deadline:
            with dg.build_sensor_context(
                    instance=instance, definitions=defs,
                    resources={"brightrun": defs.resources["brightrun"]}) as context:
                selection_request_sensor(context)
            time.sleep(0.5)
            active = instance.get_runs(filters=dg.RunsFilter(statuses=statuses))
        assert not active, [(r.run_id, r.status) for r in active]

    report = audit_file(pipeline, file_id)
    assert (report.versions, report.conversations) == (1 + submitted, 2 + submitted)
    assert killed >= 2, "too few terminals died mid-request to show anything"
    print(f"CLI trials: {CLI_ROUNDS * CLIS_PER_ROUND}, killed: {killed}, "
          f"requests stored and published: {submitted}")
