"""What an operator sees in the Dagster UI after a request fails: the training file's partition
keeps showing its published version, the checks their last real evaluation, and the failure
shows on the run and on the request. Checked in the real webserver, with a headless Chromium,
and through the GraphQL API the UI itself reads."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dagster as dg
import pytest
from seed import claimed_request, demo_dataset, eligible, seed_dataset

from assets.partitions import REQUEST_TAG, TRAINING_FILE_TAG
from brightrun_pipeline.config import Settings
from brightrun_pipeline.definitions import build_definitions
from brightrun_pipeline.launcher import run_request_in_process
from brightrun_pipeline.outputs import EXPORTS
from brightrun_pipeline.service import Pipeline
from jobs import TRAINING_FILE_JOB
from sensors import request_failure_sensor
from sensors.restatement import restate_current_version

REPO = Path(__file__).resolve().parents[1]
CHROMIUM = Path("/usr/bin/chromium")
BROWSER_ARGS = ["--no-sandbox", "--headless", "--disable-gpu", "--disable-background-networking",
                "--disable-component-update", "--disable-sync", "--no-first-run"]
TRAINING_ASSETS = ("training_file_membership", "training_file_json", "training_file_jsonl",
                   "training_file_version")
CHECKS = {"training_file_json": 4, "training_file_jsonl": 4 + len(EXPORTS)}
SCREENSHOTS = ("version_partition", "json_partition", "json_checks", "runs")


@pytest.fixture
def database_url(sqlite_url: str) -> str:
    """Our tables on SQLite: what the UI shows comes from the Dagster instance alone."""
    return sqlite_url


@pytest.fixture
def settings(database_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Settings:
    """The pipeline's settings; DAGSTER_HOME (set by the launcher) is restored afterwards."""
    home = tmp_path / "dagster"
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    return Settings(database_url=database_url, storage_root=tmp_path / "storage",
                    dagster_home=home)


@dataclass(frozen=True)
class FailedAdd:
    """A training file at version 2, and the request for version 3 whose run failed."""

    training_file_id: str
    request_id: str
    run_id: str


def request_and_run(settings: Settings, pipeline: Pipeline, rows: list[Any], *,
                    new_file_name: str | None = None,
                    training_file: str | None = None) -> tuple[str, str, bool]:
    """Submit and claim a request, then run it in-process as `--wait` does."""
    request_id = claimed_request(pipeline, rows, new_file_name=new_file_name,
                                 training_file=training_file)
    request = pipeline.db.get_request(request_id)
    assert request is not None and request.target_file_id is not None
    outcome = run_request_in_process(settings, request_id, request.target_file_id)
    return request_id, outcome.run_id, outcome.success


def remove_source(pipeline: Pipeline, row: Any) -> None:
    path = pipeline.store.local_path(pipeline.source_bucket, row.row["enriched_file_path"])
    assert path is not None
    path.unlink()


@pytest.fixture
def failed_add(settings: Settings, pipeline: Pipeline) -> FailedAdd:
    """Versions 1 and 2 published; the next request's new conversation has no source file."""
    dataset = demo_dataset()
    seed_dataset(pipeline, dataset)
    rows = eligible(dataset)
    first, _, ok = request_and_run(settings, pipeline, rows[:1], new_file_name="Operator view")
    assert ok
    file_id = pipeline.db.get_request(first).target_file_id  # type: ignore[union-attr]
    assert file_id is not None
    assert request_and_run(settings, pipeline, rows[1:2], training_file=file_id)[2]
    remove_source(pipeline, rows[2])
    request_id, run_id, ok = request_and_run(settings, pipeline, rows[2:3],
                                             training_file=file_id)
    assert not ok
    return FailedAdd(file_id, request_id, run_id)


# --- The webserver ----------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def webserver(settings: Settings, failed_add: FailedAdd, tmp_path: Path) -> Iterator[str]:
    """`dagster-webserver` on the test's instance (its own process group, stopped at the end)."""
    port = free_port()
    env = {**os.environ, "DAGSTER_HOME": str(settings.dagster_home),
           "BRIGHTRUN_DATABASE_URL": settings.database_url,
           "BRIGHTRUN_STORAGE_ROOT": str(settings.storage_root)}
    log_path = tmp_path / "webserver.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            [str(Path(sys.executable).parent / "dagster-webserver"), "-w", "workspace.yaml",
             "-h", "127.0.0.1", "-p", str(port)],
            cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 45
        while True:
            try:
                with urllib.request.urlopen(f"{base}/server_info", timeout=2):
                    break
            except (urllib.error.URLError, ConnectionError):
                if process.poll() is not None or time.monotonic() > deadline:
                    pytest.fail("dagster-webserver did not answer:\n"
                                + log_path.read_text(errors="replace")[-3000:])
                time.sleep(0.25)
        yield base
    finally:
        # The webserver and its code server share the process group.
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def graphql(base: str, query: str) -> dict[str, Any]:
    request = urllib.request.Request(
        f"{base}/graphql", data=json.dumps({"query": query}).encode(),
        headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as response:
        body = json.load(response)
    assert "errors" not in body, body
    return body["data"]


def asset_view(base: str, file_id: str) -> dict[str, Any]:
    """Per training-file asset: the partition statuses, the partition's latest
    materialization and the checks' latest executions, as the UI reads them."""
    keys = ", ".join(f'{{path: ["{name}"]}}' for name in TRAINING_ASSETS)
    data = graphql(base, f"""{{
      assetNodes(assetKeys: [{keys}]) {{
        assetKey {{ path }}
        assetPartitionStatuses {{
          ... on DefaultPartitionStatuses {{ materializedPartitions failedPartitions }}
        }}
        latestMaterializationByPartition(partitions: ["{file_id}"]) {{
          runId
          metadataEntries {{
            label
            ... on IntMetadataEntry {{ intValue }}
            ... on TextMetadataEntry {{ text }}
          }}
        }}
        assetChecksOrError {{
          ... on AssetChecks {{
            checks {{ name executionForLatestMaterialization {{ status }} }}
          }}
        }}
      }}
    }}""")
    return {node["assetKey"]["path"][0]: node for node in data["assetNodes"]}


def run_status(base: str, run_id: str) -> str:
    data = graphql(base, f'{{ runOrError(runId: "{run_id}") {{ ... on Run {{ status }} }} }}')
    return data["runOrError"]["status"]


# --- The browser ------------------------------------------------------------------------------


def chromium_path() -> str:
    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} is missing: `apt-get install -y chromium` (make test does it)",
                    pytrace=False)
    return str(CHROMIUM)


def open_page(page: Any, url: str, ready_text: str) -> None:
    """Open a page and wait for the text that says it has loaded its data."""
    from playwright.sync_api import expect

    page.goto(url)
    expect(page.get_by_text(ready_text).first).to_be_visible(timeout=20_000)


def screenshot(page: Any, path: Path) -> None:
    """A full-page screenshot once the page's queries have settled (no spinners)."""
    page.wait_for_load_state("networkidle")
    page.screenshot(path=path, full_page=True)


def dismiss_welcome(page: Any) -> None:
    """The UI greets a first visit with a "Join the Dagster community" dialog."""
    skip = page.get_by_role("button", name="Skip")
    try:
        skip.click(timeout=5_000)
    except Exception:  # the dialog did not show (a later UI version may not have it)
        return


def test_a_failed_add_leaves_the_published_version_in_view(
    settings: Settings, pipeline: Pipeline, failed_add: FailedAdd, webserver: str,
    tmp_path: Path,
) -> None:
    from playwright.sync_api import expect, sync_playwright

    file_id, run_id = failed_add.training_file_id, failed_add.run_id
    request = pipeline.db.get_request(failed_add.request_id)
    assert request is not None and request.status == "failed"
    assert request.error is not None and "is missing" in request.error.message
    assert pipeline.db.get_file(file_id).current_version == 2  # type: ignore[union-attr]
    note = f"version 2 is current; run {run_id} failed without publishing"

    # What the UI reads: every asset of the partition materialized at version 2, none failed;
    # every blocking check passed; the run failed.
    view = asset_view(webserver, file_id)
    statuses = {name: view[name]["assetPartitionStatuses"] for name in TRAINING_ASSETS}
    assert all(s["materializedPartitions"] == [file_id] and s["failedPartitions"] == []
               for s in statuses.values()), statuses
    for name in TRAINING_ASSETS:
        [latest] = view[name]["latestMaterializationByPartition"]
        metadata = {e["label"]: e.get("intValue", e.get("text"))
                    for e in latest["metadataEntries"]}
        assert metadata["version"] == 2 and metadata["restated"] == note, (name, metadata)
    for name, count in CHECKS.items():
        checks = view[name]["assetChecksOrError"]["checks"]
        assert len(checks) == count
        assert {c["executionForLatestMaterialization"]["status"] for c in checks} == {
            "SUCCEEDED"}, checks
    assert run_status(webserver, run_id) == "FAILURE"

    shots = tmp_path / "screenshots"
    shots.mkdir()
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium_path(), args=BROWSER_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1600, "height": 1100})

            open_page(page, f"{webserver}/assets/training_file_version?view=partitions"
                            f"&partition={file_id}", "Materialized (1)")
            dismiss_welcome(page)
            expect(page.get_by_text("Failed (0)")).to_be_visible()
            expect(page.get_by_text(note).first).to_be_visible()
            # The partition still names the failed run (Dagster's banner), in plain sight.
            expect(page.get_by_text(run_id[:8]).first).to_be_visible()
            screenshot(page, shots / "version_partition.png")

            open_page(page, f"{webserver}/assets/training_file_json?view=partitions"
                            f"&partition={file_id}", "Materialized (1)")
            expect(page.get_by_text("Failed (0)")).to_be_visible()
            expect(page.get_by_text(f"{file_id}/v2/training.json").first).to_be_visible()
            screenshot(page, shots / "json_partition.png")

            open_page(page, f"{webserver}/assets/training_file_json?view=checks", "Checks (4)")
            expect(page.get_by_text("Passed").first).to_be_visible()
            expect(page.get_by_text("Succeeded")).to_have_count(4)
            expect(page.get_by_text("Execution failed")).to_have_count(0)
            screenshot(page, shots / "json_checks.png")

            open_page(page, f"{webserver}/runs", run_id[:8])
            # The runs table is built of divs: its row is the innermost one holding both.
            row = page.locator("div").filter(
                has=page.get_by_text(run_id[:8], exact=True)).filter(has_text="Failure").last
            expect(row).to_be_visible()
            expect(row).not_to_contain_text("Success")
            screenshot(page, shots / "runs.png")
        finally:
            browser.close()
    assert sorted(p.stem for p in shots.iterdir()) == sorted(SCREENSHOTS)


def test_a_failed_first_build_has_nothing_to_restate(
    settings: Settings, pipeline: Pipeline,
) -> None:
    dataset = demo_dataset()
    seed_dataset(pipeline, dataset)
    row = eligible(dataset)[0]
    remove_source(pipeline, row)
    request_id, run_id, ok = request_and_run(settings, pipeline, [row], new_file_name="Never")
    assert not ok
    file_id = pipeline.db.get_request(request_id).target_file_id  # type: ignore[union-attr]
    assert file_id is not None
    with dg.DagsterInstance.get() as instance:
        assert not restate_current_version(instance, pipeline, file_id, run_id)
        # Nothing was ever published: the partition is honestly failed.
        assert instance.get_status_by_partition(
            dg.AssetKey("training_file_version"), [file_id],
            build_definitions(settings).resolve_job_def(TRAINING_FILE_JOB).partitions_def,
        ) == {file_id: dg.AssetPartitionStatus.FAILED}


def test_failure_sensor_restates_once(settings: Settings, pipeline: Pipeline) -> None:
    dataset = demo_dataset()
    seed_dataset(pipeline, dataset)
    rows = eligible(dataset)
    first, _, ok = request_and_run(settings, pipeline, rows[:1], new_file_name="Sensor view")
    assert ok
    file_id = pipeline.db.get_request(first).target_file_id  # type: ignore[union-attr]
    assert file_id is not None
    remove_source(pipeline, rows[1])
    request_id = claimed_request(pipeline, rows[1:2], training_file=file_id)
    defs = build_definitions(settings)
    version = dg.AssetKey("training_file_version")
    with dg.DagsterInstance.get() as instance:
        # Launched as the daemon would, without the in-process restatement of the CLI.
        result = defs.resolve_job_def(TRAINING_FILE_JOB).execute_in_process(
            instance=instance, partition_key=file_id, raise_on_error=False,
            tags={REQUEST_TAG: request_id, TRAINING_FILE_TAG: file_id})
        assert not result.success
        partitions_def = defs.resolve_job_def(TRAINING_FILE_JOB).partitions_def
        assert instance.get_status_by_partition(version, [file_id], partitions_def) == {
            file_id: dg.AssetPartitionStatus.FAILED}

        run = instance.get_run_by_id(result.run_id)
        assert run is not None
        [failure] = instance.all_logs(result.run_id, of_type=dg.DagsterEventType.RUN_FAILURE)
        assert failure.dagster_event is not None
        with dg.build_run_status_sensor_context(
            sensor_name="request_failure_sensor", dagster_event=failure.dagster_event,
            dagster_instance=instance, dagster_run=run,
            resources={"brightrun": defs.resources["brightrun"]},
        ) as status_context:
            context = status_context.for_run_failure()
            request_failure_sensor(context)
            request_failure_sensor(context)  # delivered twice: the second adds nothing

        assert instance.get_status_by_partition(version, [file_id], partitions_def) == {
            file_id: dg.AssetPartitionStatus.MATERIALIZED}
        restated = instance.fetch_materializations(
            dg.AssetRecordsFilter(asset_key=version, asset_partitions=[file_id]), limit=3).records
        notes = [r.asset_materialization.metadata.get("restated") for r in restated
                 if r.asset_materialization is not None]
        assert [n.value if n else None for n in notes] == [
            f"version 1 is current; run {result.run_id} failed without publishing", None]
    stored = pipeline.db.get_request(request_id)
    assert stored is not None and stored.status == "failed"

