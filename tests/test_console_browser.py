"""The console in a real browser: a curator filters and sorts the catalog, ticks conversations,
creates a training file and watches its request succeed, finds the file on the LoRA Training
JSON Files page, downloads its JSON and JSONL through the file page's control, and sees the
reasons a second selection is refused next to each conversation; a selection submitted without a
Check shows the near-duplicates it was accepted with.

The console runs in a uvicorn server on a thread of the test process; it only stores requests.
The test plays the pipeline's part: it picks up the pending request the page created and runs
it through the real Dagster job here.

Screenshots land in tests/artifacts/console/<backend>/ (git-ignored), the near-duplicate one in
its near-duplicates/ folder.
"""

from __future__ import annotations

import hashlib
import re
import socket
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
import uvicorn
from seed import demo_dataset, eligible, is_eligible, seed_conversations, seed_dataset
from test_near_duplicates import planted

from brightrun_pipeline import queries
from brightrun_pipeline.config import Settings
from brightrun_pipeline.console.app import create_app
from brightrun_pipeline.console.pages import file_size
from brightrun_pipeline.db.schema import conversations
from brightrun_pipeline.factory import Services
from brightrun_pipeline.launcher import process_in_this_process
from brightrun_pipeline.service import Pipeline
from brightrun_pipeline.users import add_user

CHROMIUM = Path("/usr/bin/chromium")
BROWSER_ARGS = ["--no-sandbox", "--headless", "--disable-gpu", "--disable-background-networking",
                "--disable-component-update", "--disable-sync", "--no-first-run"]
ARTIFACTS = Path(__file__).resolve().parent / "artifacts" / "console"
FILE_NAME = "Browser-built seed set"
# Long enough for a slow machine; Playwright's expectations return as soon as they hold.
PATIENCE_MS = 30_000


@pytest.fixture
def settings(database_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Settings:
    """The pipeline's settings; DAGSTER_HOME (set by the launcher) is restored afterwards."""
    home = tmp_path / "dagster"
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    return Settings(database_url=database_url, storage_root=tmp_path / "storage",
                    dagster_home=home)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def console(settings: Settings, pipeline: Pipeline) -> Iterator[str]:
    """The console on loopback with no users (open to the local user), served by uvicorn on a
    thread until the test ends."""
    app = create_app(Services(settings, pipeline))
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=free_port(),
                                           log_level="warning", lifespan="off"))
    thread = threading.Thread(target=server.run, name="console", daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            pytest.fail("the console did not start")
        time.sleep(0.02)
    yield f"http://127.0.0.1:{server.config.port}"
    server.should_exit = True
    thread.join(timeout=10)


@pytest.fixture
def browser() -> Iterator[Any]:
    """A headless Chromium; expectations wait up to PATIENCE_MS."""
    from playwright.sync_api import expect, sync_playwright

    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} is missing: `apt-get install -y chromium`", pytrace=False)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=BROWSER_ARGS)
        expect.set_options(timeout=PATIENCE_MS)
        try:
            yield browser
        finally:
            expect.set_options(timeout=5_000)  # Playwright's default, for other tests
            browser.close()


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    """A page with scripts on; no script error may happen on it."""
    context = browser.new_context(viewport={"width": 1600, "height": 1000},
                                  accept_downloads=True)
    page = context.new_page()
    page.set_default_timeout(PATIENCE_MS)
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    yield page
    context.close()
    assert errors == [], errors


@pytest.fixture
def backend_name(database_url: str) -> str:
    return "postgresql" if database_url.startswith("postgresql") else "sqlite"


@pytest.fixture
def shots(backend_name: str) -> Path:
    """Where this backend's screenshots go (emptied first)."""
    folder = ARTIFACTS / backend_name
    folder.mkdir(parents=True, exist_ok=True)
    for old in folder.glob("*.png"):
        old.unlink()
    return folder


def wait_for_pending(pipeline: Pipeline, deadline_s: float = 20.0) -> str:
    """The id of the one pending request (the one the page just stored)."""
    deadline = time.monotonic() + deadline_s
    while True:
        pending = pipeline.db.list_requests(status="pending")
        if pending:
            assert len(pending) == 1, [r.id for r in pending]
            return pending[0].id
        if time.monotonic() > deadline:
            pytest.fail("the page stored no pending request")
        time.sleep(0.05)


def process(settings: Settings, pipeline: Pipeline, request_id: str) -> None:
    """Run a pending request through the real job, as the sensor would. On a thread of its own:
    Playwright's sync API keeps an event loop running on this one, which Dagster's clean-up of
    its own loop must not meet."""
    with ThreadPoolExecutor(max_workers=1) as pool:
        pool.submit(process_in_this_process, settings, pipeline, request_id).result()


def row(page: Any, conversation_id: str) -> Any:
    return page.locator(f'table.conversations tr[data-id="{conversation_id}"]')


def column(page: Any, attribute: str) -> list[str]:
    values: list[str] = page.locator("table.conversations tbody tr[data-id]").evaluate_all(
        f"rows => rows.map(r => r.getAttribute('{attribute}'))")
    return values


def download(page: Any, fmt: str, version: int) -> bytes:
    """One output of a version, through the file page's format and version choice."""
    page.locator("form.download select[name=format]").select_option(fmt)
    page.locator("form.download select[name=version]").select_option(str(version))
    with page.expect_download() as info:
        page.get_by_role("button", name="Download").click()
    path = info.value.path()
    return Path(path).read_bytes()


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_curator_builds_a_training_file_in_the_browser(
    settings: Settings, pipeline: Pipeline, console: str, page: Any, shots: Path,
) -> None:
    from playwright.sync_api import expect

    dataset = demo_dataset()
    seed_dataset(pipeline, dataset)
    batch = dataset.batches[0]
    in_batch = [c for c in dataset.conversations if c.batch_id == batch.id]
    chosen = [c.conversation_id for c in in_batch if is_eligible(c)]
    [blocked] = [c for c in in_batch if not is_eligible(c)]
    elsewhere = next(c for c in dataset.conversations
                     if c.batch_id not in (None, batch.id) and is_eligible(c))
    total = len(dataset.conversations)
    count = page.locator("#selection-count")
    pager = page.locator(".pager .where").first

    # No training file yet: the files page says so and points to the Conversations page.
    page.goto(f"{console}/training-files")
    expect(page.locator(".empty-state")).to_contain_text("No training file yet.")
    expect(page.locator(".empty-state").get_by_role(
        "link", name="Conversations page")).to_have_attribute("href", "/conversations")
    page.screenshot(path=shots / "training_files_empty.png", full_page=True)

    # The catalog, sorted by Batch ID one way and then the other (the sort lives in the URL).
    page.goto(f"{console}/conversations")
    expect(pager).to_have_text(f"Page 1 of 1, {total} conversations")
    page.get_by_role("link", name="Batch ID", exact=True).click()
    expect(page).to_have_url(re.compile(r"[?&]sort=batch_id(&|$)"))
    ascending = [b for b in column(page, "data-batch") if b]
    assert ascending == sorted(ascending) and len(set(ascending)) == 2
    page.get_by_role("link", name="Batch ID", exact=True).click()
    expect(page).to_have_url(re.compile(r"[?&]desc=yes(&|$)"))
    descending = [b for b in column(page, "data-batch") if b]
    assert descending == sorted(ascending, reverse=True)

    # Filtered by one batch (the select reloads the page; the sort stays).
    page.locator("select[name=batch_id]").select_option(batch.id)
    expect(page).to_have_url(
        f"{console}/conversations?batch_id={batch.id}&page_size=50&sort=batch_id&desc=yes")
    expect(pager).to_have_text(f"Page 1 of 1, {len(in_batch)} conversations")
    assert set(column(page, "data-batch")) == {batch.id}
    reason = queries.list_conversations(
        pipeline, queries.ConversationFilter(q=blocked.conversation_id)).rows[0].ineligible_reason
    assert reason
    expect(row(page, blocked.conversation_id).locator("input")).to_be_disabled()
    expect(row(page, blocked.conversation_id).locator("td.eligible")).to_have_text(f"no: {reason}")
    expect(row(page, blocked.conversation_id).locator("td.eligible")).to_have_attribute(
        "title", reason)

    # Ticked by hand, then the rest of the batch's eligible conversations at once.
    row(page, chosen[0]).locator("input").check()
    expect(count).to_have_text("1 selected (max 80)")
    page.get_by_role("button", name="Select all eligible in this batch").click()
    expect(count).to_have_text(f"{len(chosen)} selected (max 80)")
    for cid in chosen:
        expect(row(page, cid).locator("input")).to_be_checked()

    # The selection outlives the page: every conversation, another page size.
    page.goto(f"{console}/conversations?page_size=25")
    expect(count).to_have_text(f"{len(chosen)} selected (max 80)")
    expect(row(page, chosen[1]).locator("input")).to_be_checked()
    page.go_back()
    expect(count).to_have_text(f"{len(chosen)} selected (max 80)")

    # A new training file: checked first, then submitted; the page follows the request.
    page.get_by_role("button", name="Create training files").click()
    panel = page.locator("#create-panel")
    expect(panel).to_be_visible()
    expect(panel.locator("#target")).to_have_value("")
    panel.get_by_label("Name").fill(FILE_NAME)
    panel.get_by_label("Description").fill("Batch one, picked in the console")
    panel.get_by_role("button", name="Check").click()
    expect(panel.locator("#outcome")).to_have_text(
        f"{len(chosen)} conversations can be added to new training file {FILE_NAME!r}")
    panel.get_by_role("button", name="Submit request").click()
    progress = panel.locator("#progress-text")
    expect(progress).to_contain_text("is pending")
    request_id = wait_for_pending(pipeline)
    stored = pipeline.db.get_request(request_id)
    assert stored is not None and sorted(stored.conversation_ids) == sorted(chosen)
    assert stored.new_file_name == FILE_NAME

    process(settings, pipeline, request_id)
    expect(progress).to_contain_text(f"Request {request_id[:8]} succeeded")
    link = progress.get_by_role("link", name=f"{FILE_NAME}, version 1")
    expect(link).to_be_visible()
    expect(panel.locator(".steps li.done")).to_have_count(4)
    expect(count).to_have_text("0 selected (max 80)")
    for cid in chosen:  # the rows name their new file without a reload
        expect(row(page, cid).locator("td.files")).to_have_text(FILE_NAME)
    page.screenshot(path=shots / "conversations.png", full_page=True)

    done = pipeline.db.get_request(request_id)
    assert done is not None and done.status == "succeeded" and done.target_file_id
    file_id = done.target_file_id
    record = pipeline.db.get_version(file_id)
    assert record is not None and record.version == 1
    expect(link).to_have_attribute("href", f"/training-files/{file_id}")

    # The LoRA Training JSON Files page: one row, with the published figures.
    page.get_by_role("link", name="LoRA Training JSON Files").click()
    expect(page).to_have_title("LoRA Training JSON Files")
    expect(page.locator("h1")).to_have_text("LoRA Training JSON Files")
    [summary] = queries.list_files(pipeline)
    file_row = page.locator(f'table.files tr[data-id="{file_id}"]')
    expect(file_row.locator("td")).to_have_text([
        FILE_NAME, "Batch one, picked in the console", summary.owner or "—",
        str(len(chosen)), str(summary.training_pairs), str(summary.trainable_pairs),
        re.compile(rf"^{summary.quality.avg_quality_score:.2f} \("),
        re.compile(r"personas · \d+ arcs · \d+ topics"),
        file_size(record.json_size), file_size(record.jsonl_size), "1",
        re.compile(r"UTC$"), summary.status,
    ])
    page.screenshot(path=shots / "training_files.png", full_page=True)

    # The file's page: downloads through the format and version choice, checked against the
    # published hashes.
    file_row.get_by_role("link", name=FILE_NAME).click()
    expect(page.locator("h1")).to_have_text(FILE_NAME)
    assert sha256(download(page, "json", 1)) == record.json_sha256
    assert sha256(download(page, "jsonl", 1)) == record.jsonl_sha256
    history = page.locator('table.versions tr[data-version="1"]')
    expect(history.locator("code.hash").first).to_have_attribute("title", record.json_sha256)
    expect(history.locator("code.hash").nth(1)).to_have_attribute("title", record.jsonl_sha256)
    expect(history).to_contain_text(request_id[:8])
    lineage = page.locator("table.lineage tbody tr")
    expect(lineage).to_have_count(len(chosen))
    expect(page.locator("table.lineage").get_by_role(
        "link", name=chosen[0])).to_have_attribute("href", f"/conversations?q={chosen[0]}")
    page.screenshot(path=shots / "training_file.png", full_page=True)

    # Its conversations on the Conversations page.
    page.get_by_role("link", name="Show these conversations on the Conversations page").click()
    expect(page).to_have_url(re.compile(rf"/conversations\?file={file_id}$"))
    expect(pager).to_have_text(f"Page 1 of 1, {len(chosen)} conversations")
    expect(page.locator("table.conversations td.files").first).to_have_text(FILE_NAME)

    # "Select all eligible in this batch" for the new file: nothing left to add.
    page.goto(f"{console}/conversations?batch_id={batch.id}")
    page.get_by_role("button", name="Create training files").click()
    panel.locator("#target").select_option(file_id)
    page.get_by_role("button", name="Select all eligible in this batch").click()
    expect(page.locator("#selection-message")).to_contain_text(
        f"Added 0 eligible conversations of this batch not yet in the chosen file. "
        f"{len(in_batch)} cannot be added")
    expect(count).to_have_text("0 selected (max 80)")

    # A second selection: one conversation already in the file, and one that was eligible when
    # ticked and is not any more (its enrichment was reset upstream).
    page.goto(f"{console}/conversations")
    row(page, elsewhere.conversation_id).locator("input").check()
    row(page, chosen[0]).locator("input").check()
    expect(count).to_have_text("2 selected (max 80)")
    with pipeline.db.engine.begin() as connection:
        connection.execute(sa.update(conversations).where(
            conversations.c.conversation_id == elsewhere.conversation_id).values(
            enrichment_status="failed"))
    page.reload()
    expect(count).to_have_text("2 selected (max 80)")
    expect(row(page, elsewhere.conversation_id).locator("input")).to_be_checked()
    page.get_by_role("button", name="Create training files").click()
    panel.locator("#target").select_option(file_id)
    panel.get_by_role("button", name="Check").click()
    expect(panel.locator("#outcome")).to_have_text(
        f"2 of 2 conversations cannot be added to training file {FILE_NAME!r}")
    already = f"already in training file {FILE_NAME!r} (added in version 1)"
    enrichment = "enrichment_status is 'failed', not 'completed'"
    notes = page.locator("table.conversations tr.problem-note")
    expect(notes).to_have_count(2)
    expect(page.locator(f'tr.problem-note[data-for="{chosen[0]}"]')).to_have_text(
        f"Cannot be added: {already}")
    expect(page.locator(f'tr.problem-note[data-for="{elsewhere.conversation_id}"]')).to_have_text(
        f"Cannot be added: {enrichment}")
    expect(panel.locator("#problems li")).to_have_text([
        re.compile(rf"{elsewhere.conversation_id}: {re.escape(enrichment)}$"),
        re.compile(rf"{chosen[0]}: {re.escape(already)}$"),
    ])

    # Submitted anyway, the server refuses it with the same reasons and stores nothing.
    panel.get_by_role("button", name="Submit request").click()
    expect(panel.locator("#outcome")).to_have_text(
        f"2 of 2 conversations cannot be added to training file {FILE_NAME!r}")
    expect(notes).to_have_count(2)
    expect(panel.locator("#problems li")).to_have_count(2)
    assert [r.id for r in pipeline.db.list_requests()] == [request_id]
    page.screenshot(path=shots / "conversations_refused.png", full_page=True)

    # The limit: with 80 selected, an 81st cannot be ticked.
    filler = [f"00000000-0000-4000-8000-{n:012d}" for n in range(80)]
    page.evaluate("ids => sessionStorage.setItem('brightrun.selection', JSON.stringify(ids))",
                  filler)
    page.reload()
    expect(count).to_have_text("80 selected (max 80)")
    box = row(page, chosen[1]).locator("input")
    box.click()
    expect(box).not_to_be_checked()
    expect(page.locator("#selection-message")).to_contain_text(
        "A request holds at most 80 conversations")
    expect(count).to_have_text("80 selected (max 80)")
    page.get_by_role("button", name="Clear selection").click()
    expect(count).to_have_text("0 selected (max 80)")
    assert sorted(p.name for p in shots.glob("*.png")) == [
        "conversations.png", "conversations_refused.png", "training_file.png",
        "training_files.png", "training_files_empty.png"]


def test_browsing_works_without_scripts(pipeline: Pipeline, console: str, browser: Any) -> None:
    """Filters, sorting and paging are links and GET forms; a bad URL gets the error page."""
    from playwright.sync_api import expect

    dataset = demo_dataset()
    seed_dataset(pipeline, dataset)
    batch = dataset.batches[1]
    in_batch = [c.conversation_id for c in dataset.conversations if c.batch_id == batch.id]
    context = browser.new_context(java_script_enabled=False)
    try:
        page = context.new_page()
        page.set_default_timeout(PATIENCE_MS)
        pager = page.locator(".pager .where").first
        page.goto(f"{console}/conversations?page_size=4")
        total = len(dataset.conversations)
        expect(pager).to_have_text(f"Page 1 of 3, {total} conversations")
        expect(page.locator("#selection")).to_be_hidden()  # selecting needs the script
        page.get_by_role("link", name="Next ›").first.click()
        expect(pager).to_have_text(f"Page 2 of 3, {total} conversations")
        page.get_by_role("link", name="Last »").first.click()
        expect(pager).to_have_text(f"Page 3 of 3, {total} conversations")

        page.locator("select[name=batch_id]").select_option(batch.id)
        page.locator("select[name=eligible]").select_option("yes")
        page.get_by_role("button", name="Apply").click()
        # Without the script the form sends its empty fields too; they mean "any".
        expect(page).to_have_url(re.compile(rf"[?&]batch_id={batch.id}&.*eligible=yes"))
        eligible_ids = [c.conversation_id for c in dataset.conversations
                        if c.batch_id == batch.id and is_eligible(c)]
        expect(pager).to_have_text(f"Page 1 of 1, {len(eligible_ids)} conversations")
        page.get_by_role("link", name="Title", exact=True).click()
        expect(page).to_have_url(re.compile(r"sort=title"))
        titles = page.locator("table.conversations td.title").all_inner_texts()
        assert titles == sorted(titles) and len(titles) == len(eligible_ids) < len(in_batch)
        # The page is its URL: reloading it shows the same view.
        page.reload()
        expect(page.locator("table.conversations td.title")).to_have_text(titles)

        for url, status, message in (
            ("/conversations?eligible=maybe", 422, "eligible"),
            ("/conversations?batch_id=not-a-batch", 400, "batch_id expects a UUID"),
            ("/conversations?page=0", 422, "page"),
            (f"/training-files/{batch.id}", 404, "no training file"),
        ):
            response = page.goto(f"{console}{url}")
            assert response is not None and response.status == status, url
            expect(page.locator("p.error")).to_contain_text(message)
    finally:
        context.close()


def test_adding_to_someone_elses_file_is_refused(pipeline: Pipeline, console: str,
                                                 page: Any) -> None:
    """Signed in with a token, a curator who did not create a file is told so by Check and by
    Submit (403), and nothing is stored."""
    from playwright.sync_api import expect

    dataset = demo_dataset()
    seed_dataset(pipeline, dataset)
    rows = [c for c in dataset.conversations if is_eligible(c)]
    add_user(pipeline.db, "ana")
    _, token = add_user(pipeline.db, "ben")
    request = pipeline.submit(conversation_ids=[rows[0].conversation_id],
                              new_file_name="Ana's file", requested_by="ana")
    assert pipeline.claim(request.id) is not None
    record = pipeline.run_request(request.id, "run-ana")

    page.goto(f"{console}/conversations")
    expect(page).to_have_url(re.compile(r"/sign-in\?next=/conversations$"))
    page.get_by_label("Token").fill(token)
    page.get_by_role("button", name="Sign in").click()
    expect(page).to_have_url(f"{console}/conversations")
    expect(page.locator("header .who")).to_contain_text("ben")

    row(page, rows[1].conversation_id).locator("input").check()
    page.get_by_role("button", name="Create training files").click()
    panel = page.locator("#create-panel")
    panel.locator("#target").select_option(record.training_file_id)
    refusal = "only the creator of \"Ana's file\" (ana) or an admin may add to it"
    panel.get_by_role("button", name="Check").click()
    expect(panel.locator("#outcome")).to_have_text(refusal)
    panel.get_by_role("button", name="Submit request").click()
    expect(panel.locator("#outcome")).to_have_text(refusal)
    expect(panel.locator("#submit")).to_be_enabled()
    assert [r.id for r in pipeline.db.list_requests()] == [request.id]


def test_a_direct_submit_shows_the_near_duplicate_warnings(
    pipeline: Pipeline, console: str, page: Any, backend_name: str,
) -> None:
    """Submitted without a Check, a selection holding a near-duplicate of a member of a file that
    warns is stored, and the page names both conversations as Check would."""
    from playwright.sync_api import expect

    dataset = demo_dataset()
    seed_dataset(pipeline, dataset)
    chosen = eligible(dataset)
    first = pipeline.submit(conversation_ids=[c.conversation_id for c in chosen[:2]],
                            new_file_name="Warns on repeats")
    assert pipeline.claim(first.id) is not None
    file_id = pipeline.run_request(first.id, "run-first").training_file_id
    copy = planted(chosen[1], "browser submit")
    seed_conversations(pipeline, [copy])
    selection = [copy.conversation_id, chosen[3].conversation_id]
    check = queries.check_selection(pipeline, selection, training_file=file_id)
    reason = check.warnings[copy.conversation_id]
    assert chosen[1].conversation_id in reason and "(added in version 1)" in reason

    page.goto(f"{console}/conversations")
    for cid in selection:
        row(page, cid).locator("input").check()
    expect(page.locator("#selection-count")).to_have_text("2 selected (max 80)")
    page.get_by_role("button", name="Create training files").click()
    panel = page.locator("#create-panel")
    panel.locator("#target").select_option(file_id)
    panel.get_by_role("button", name="Submit request").click()

    expect(panel.locator("#progress-text")).to_contain_text("is pending")
    expect(panel.locator("#outcome")).to_have_text(
        "Submitted: 1 of 2 conversations is a near-duplicate; the request goes ahead.")
    expect(page.locator("table.conversations tr.warning-note")).to_have_count(1)
    expect(page.locator(f'tr.warning-note[data-for="{copy.conversation_id}"]')).to_have_text(
        f"Warning: {reason}")
    expect(row(page, copy.conversation_id)).to_have_class(re.compile(r"\bwarning\b"))
    expect(panel.locator("#problems li.warning")).to_have_text(
        [f"{copy.conversation_id}: {reason}"])
    expect(panel.locator("#problems li.problem")).to_have_count(0)
    request_id = wait_for_pending(pipeline)
    stored = pipeline.db.get_request(request_id)
    assert stored is not None and stored.training_file_id == file_id
    assert stored.conversation_ids == selection
    folder = ARTIFACTS / backend_name / "near-duplicates"
    folder.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=folder / "conversations_warned.png", full_page=True)
