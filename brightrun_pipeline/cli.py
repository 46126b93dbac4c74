"""`brightrun`: the curators' and engineers' command line."""

from __future__ import annotations

import contextlib
import csv
import getpass
import io
import logging
import os
import secrets
import shutil
import signal
import sys
from collections.abc import Callable, Iterable, Sequence
from datetime import datetime
from functools import cached_property
from pathlib import Path
from typing import Any

import click
import orjson
from pydantic import ValidationError
from sqlalchemy.exc import OperationalError, ProgrammingError
from tabulate import tabulate

from brightrun_pipeline import queries
from brightrun_pipeline.config import Settings, load_settings
from brightrun_pipeline.db.repository import Database, TrainingFileRecord
from brightrun_pipeline.errors import BrightRunError, RequestRejected, UsageError
from brightrun_pipeline.factory import Services, open_services
from brightrun_pipeline.models import SelectionRequest
from brightrun_pipeline.outputs import FORMATS, SPLITS
from brightrun_pipeline.rules import FileSettings, normalize_uuid
from brightrun_pipeline.service import Pipeline
from brightrun_pipeline.storage import ObjectStore


class App:
    """What every command needs, opened on first use through the one factory."""

    def __init__(self) -> None:
        self.settings: Settings = load_settings()

    @cached_property
    def services(self) -> Services:
        return open_services(self.settings)

    @property
    def store(self) -> ObjectStore:
        return self.services.store

    @property
    def pipeline(self) -> Pipeline:
        return self.services.pipeline

    @property
    def db(self) -> Database:
        return self.services.db

    def file(self, ref: str) -> TrainingFileRecord:
        """A training file by name or id, or a usage error."""
        return queries.find_file(self.pipeline, ref)


pass_app = click.make_pass_decorator(App)


def _echo_json(value: Any) -> None:
    click.echo(orjson.dumps(value, option=orjson.OPT_INDENT_2, default=_json_default).decode())


def _json_default(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    raise TypeError(type(value).__name__)


def _when(moment: datetime | None) -> str:
    return "" if moment is None else moment.strftime("%Y-%m-%d %H:%M:%S")


@click.group()
@click.version_option(package_name="brightrun-pipeline")
@click.pass_context
def cli(ctx: click.Context) -> None:
    """Build versioned LoRA training files from enriched conversations."""
    ctx.obj = App()


# --- init -----------------------------------------------------------------------------------


@cli.command()
@pass_app
def init(app: App) -> None:
    """Create or upgrade the database schema, the buckets and DAGSTER_HOME (idempotent)."""
    from brightrun_pipeline.launcher import daemon_running, ensure_dagster_home

    app.db.upgrade()
    app.store.ensure_bucket(app.settings.source_bucket)
    app.store.ensure_bucket(app.settings.training_bucket)
    home = ensure_dagster_home(app.settings)
    # Opening the instance once creates its storage, so that processes starting together later
    # do not race to create it.
    daemon_running(app.settings)
    click.echo(f"database ready: {_safe_url(app.settings.database_url)}")
    click.echo(f"buckets ready: {app.settings.source_bucket}, {app.settings.training_bucket}")
    click.echo(f"DAGSTER_HOME: {home}")


def _safe_url(url: str) -> str:
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)


# --- conversations ----------------------------------------------------------------------------


@cli.group()
def conversations() -> None:
    """Browse the conversations curators pick from."""


@conversations.command("list")
@click.option("--batch", "batch_id", help="Only this Batch ID.")
@click.option("--status", help="Only this enrichment_status.")
@click.option("--persona", help="Only this persona key.")
@click.option("--arc", help="Only this emotional arc key.")
@click.option("--topic", help="Only this topic key.")
@click.option("--tier", help="Only this tier.")
@click.option("--search", "q", help="Only titles or IDs containing this text.")
@click.option("--eligible", is_flag=True, help="Only conversations that can go into a file.")
@click.option("--sort", type=click.Choice(list(queries.CONVERSATION_SORTS)), default="created",
              show_default=True)
@click.option("--desc", is_flag=True, help="Sort descending.")
@click.option("--limit", type=click.IntRange(min=1), help="At most N rows.")
@click.option("--format", "fmt", type=click.Choice(["table", "json", "csv"]), default="table",
              show_default=True)
@pass_app
def conversations_list(app: App, batch_id: str | None, status: str | None,
                       persona: str | None, arc: str | None, topic: str | None,
                       tier: str | None, q: str | None, eligible: bool, sort: str, desc: bool,
                       limit: int | None, fmt: str) -> None:
    """List conversations with their Batch ID and the training files holding each."""
    if batch_id is not None:
        batch_id = _uuid_option(batch_id, "--batch")
    rows = queries.all_conversations(
        app.pipeline, sort=sort, desc=desc, limit=limit, batch_id=batch_id, status=status,
        persona=persona, arc=arc, topic=topic, tier=tier, q=q,
        eligible=True if eligible else None)
    records = []
    for row in rows:
        record = row.model_dump(exclude={"ineligible_reason", "files"})
        record["files"] = ", ".join(f.name for f in row.files)
        records.append(record)
    _emit(records, fmt)


def _emit(records: list[dict[str, Any]], fmt: str) -> None:
    if fmt == "json":
        _echo_json(records)
    elif fmt == "csv":
        out = io.StringIO()
        if records:
            writer = csv.DictWriter(out, fieldnames=list(records[0]))
            writer.writeheader()
            for record in records:
                writer.writerow({k: ("" if v is None else v) for k, v in record.items()})
        click.echo(out.getvalue(), nl=False)
    else:
        shown = [{k: (_when(v) if isinstance(v, datetime) else v) for k, v in r.items()}
                 for r in records]
        click.echo(tabulate(shown, headers="keys") if shown else "(none)")


def _uuid_option(value: str, option: str) -> str:
    normalized = normalize_uuid(value)
    if normalized is None:
        raise UsageError(f"{option} expects a UUID, got {value!r}")
    return normalized


# --- files ----------------------------------------------------------------------------------


@cli.group()
def files() -> None:
    """Create, grow, list, download and verify training files."""


def _file_record(summary: queries.FileSummary) -> dict[str, Any]:
    return {
        "id": summary.id, "name": summary.name, "description": summary.description,
        "owner": summary.owner, "status": summary.status, "version": summary.current_version,
        "conversations": summary.conversations, "training_pairs": summary.training_pairs,
        "trainable_pairs": summary.trainable_pairs,
        "avg_quality": summary.quality.avg_quality_score,
        "json_bytes": summary.json_bytes, "jsonl_bytes": summary.jsonl_bytes,
        "created_at": summary.created_at, "updated_at": summary.updated_at,
        "near_duplicates": summary.near_duplicates,
        "validation_fraction": summary.validation_fraction,
    }


@files.command("list")
@click.option("--format", "fmt", type=click.Choice(["table", "json"]), default="table",
              show_default=True)
@pass_app
def files_list(app: App, fmt: str) -> None:
    """List training files (full JSON files; each has a JSONL alongside)."""
    records = [_file_record(summary) for summary in queries.list_files(app.pipeline)]
    if fmt == "table":
        for record in records:
            for key in ("description", "owner", "created_at", "near_duplicates",
                        "validation_fraction"):
                record.pop(key)
    _emit(records, fmt)


@files.command("show")
@click.argument("file_ref", metavar="FILE")
@click.option("--format", "fmt", type=click.Choice(["text", "json"]), default="text",
              show_default=True)
@pass_app
def files_show(app: App, file_ref: str, fmt: str) -> None:
    """Show a training file: header figures and every version."""
    detail = queries.file_detail(app.pipeline, file_ref)
    summary = _file_record(detail.file)
    if detail.file.current_version is not None:
        summary["quality_summary"] = detail.file.quality.model_dump()
        summary["scaffolding_distribution"] = detail.file.scaffolding_distribution
    summary["versions"] = [{
        "version": v.version, "reason": v.reason, "conversations": v.conversations,
        "training_pairs": v.training_pairs, "jsonl_lines": v.jsonl_lines,
        "json_sha256": v.json_sha256, "jsonl_sha256": v.jsonl_sha256,
        "request_ids": v.request_ids, "requested_by": v.requested_by,
        "dagster_run_id": v.dagster_run_id, "created_at": v.created_at,
    } for v in reversed(detail.versions)]
    if fmt == "json":
        _echo_json(summary)
        return
    for key in ("id", "name", "description", "owner", "status", "version", "conversations",
                "training_pairs", "trainable_pairs", "avg_quality", "json_bytes", "jsonl_bytes",
                "near_duplicates", "validation_fraction"):
        click.echo(f"{key:>16}: {summary[key] if summary[key] is not None else ''}")
    for key, counts in detail.file.scaffolding_distribution.items():
        click.echo(f"{key:>16}: " + ", ".join(f"{k}={n}" for k, n in counts.items()))
    click.echo("")
    _emit([{k: (", ".join(v) if k == "requested_by" else v) for k, v in row.items()
            if k not in ("json_sha256", "jsonl_sha256")}
           for row in summary["versions"]], "table")


def selection_options(func: Callable[..., Any]) -> Callable[..., Any]:
    """The ways to say which conversations a request holds."""
    for decorator in reversed([
        click.option("--conversation", "conversation_ids", multiple=True, metavar="ID",
                     help="A conversation ID (repeatable)."),
        click.option("--ids-file", type=click.Path(exists=True, dir_okay=False, path_type=Path),
                     help="A file with one conversation ID per line."),
        click.option("--batch", "batch_id", metavar="ID", help="Every conversation of a batch."),
        click.option("--only-eligible", is_flag=True,
                     help="With --batch: leave out ineligible and already-included ones."),
        click.option("--wait", is_flag=True,
                     help="Process the request now (Dagster job in this process) and wait."),
    ]):
        func = decorator(func)
    return func


def _selection(app: App, conversation_ids: Sequence[str], ids_file: Path | None,
               batch_id: str | None, only_eligible: bool, file: TrainingFileRecord | None
               ) -> list[str]:
    chosen = [c for c in (conversation_ids, ids_file, batch_id) if c]
    if len(chosen) != 1:
        raise UsageError("give exactly one of --conversation, --ids-file or --batch")
    if only_eligible and batch_id is None:
        raise UsageError("--only-eligible goes with --batch")
    if conversation_ids:
        return list(conversation_ids)
    if ids_file is not None:
        return _read_ids_file(ids_file)
    assert batch_id is not None
    batch = _uuid_option(batch_id, "--batch")
    kept, left_out = queries.eligible_in_batch(app.pipeline, batch, file.id if file else None)
    if not kept and not left_out:
        raise UsageError(f"batch {batch} has no conversations yet")
    if not only_eligible:
        return [row.conversation_id
                for row in app.db.list_conversations(batch_id=batch, sort="created_at")]
    for cid, reason in left_out.items():
        click.echo(f"left out {cid}: {reason}", err=True)
    if not kept:
        raise RequestRejected(f"batch {batch} has no eligible conversation left to add",
                              left_out)
    return kept


def _read_ids_file(path: Path) -> list[str]:
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise UsageError(f"{path} is not UTF-8 text") from exc
    ids = [line.strip() for line in text.splitlines()]
    ids = [line for line in ids if line and not line.startswith("#")]
    if not ids:
        raise UsageError(f"{path} holds no conversation IDs")
    return ids


@files.command("create")
@click.argument("name")
@click.option("--description", help="What the file is for.")
@click.option("--validation-fraction", type=float, metavar="F",
              help="Hold out this share of conversations for validation (0 < F <= 0.5).")
@click.option("--near-duplicates", type=click.Choice(["warn", "block"]), default="warn",
              show_default=True, help="What a near-duplicate conversation does to a request.")
@selection_options
@pass_app
def files_create(app: App, name: str, description: str | None,
                 validation_fraction: float | None, near_duplicates: str,
                 conversation_ids: Sequence[str], ids_file: Path | None, batch_id: str | None,
                 only_eligible: bool, wait: bool) -> None:
    """Create a training file NAME from a selection of conversations."""
    settings = _settings(near_duplicates=near_duplicates,
                         validation_fraction=validation_fraction)
    ids = _selection(app, conversation_ids, ids_file, batch_id, only_eligible, None)
    request = app.pipeline.submit(conversation_ids=ids, new_file_name=name,
                                  description=description, requested_by=_user(),
                                  settings=settings)
    _after_submit(app, request, wait)


def _settings(**values: Any) -> FileSettings:
    try:
        return FileSettings(**values)
    except ValidationError as exc:
        raise UsageError("; ".join(f"--{str(e['loc'][0]).replace('_', '-')}: {e['msg']}"
                                   for e in exc.errors())) from exc


@files.command("configure")
@click.argument("file_ref", metavar="FILE")
@click.option("--validation-fraction", type=float, metavar="F",
              help="Hold out this share of conversations for validation (0 < F <= 0.5).")
@click.option("--no-validation-split", is_flag=True, help="Hold out nothing.")
@click.option("--near-duplicates", type=click.Choice(["warn", "block"]),
              help="What a near-duplicate conversation does to a request.")
@pass_app
def files_configure(app: App, file_ref: str, validation_fraction: float | None,
                    no_validation_split: bool, near_duplicates: str | None) -> None:
    """Change a training file's settings; they apply from its next version on."""
    file = app.file(file_ref)
    if validation_fraction is not None and no_validation_split:
        raise UsageError("give --validation-fraction or --no-validation-split, not both")
    fraction = (None if no_validation_split else validation_fraction
                if validation_fraction is not None else file.validation_fraction)
    settings = _settings(near_duplicates=near_duplicates or file.near_duplicates,
                         validation_fraction=fraction)
    app.db.configure_file(file.id, **settings.model_dump())
    click.echo(f"{file.name}: near-duplicates {settings.near_duplicates}, validation fraction "
               f"{settings.validation_fraction if settings.validation_fraction else 'none'}")


@files.command("add")
@click.argument("file_ref", metavar="FILE")
@selection_options
@pass_app
def files_add(app: App, file_ref: str, conversation_ids: Sequence[str], ids_file: Path | None,
              batch_id: str | None, only_eligible: bool, wait: bool) -> None:
    """Add a selection of conversations to training file FILE (a new version)."""
    file = app.file(file_ref)
    ids = _selection(app, conversation_ids, ids_file, batch_id, only_eligible, file)
    request = app.pipeline.submit(conversation_ids=ids, training_file=file.id,
                                  requested_by=_user())
    _after_submit(app, request, wait)


def _user() -> str | None:
    """Who asks: the login name (LOGNAME, USER… then the account of this process)."""
    try:
        return getpass.getuser() or None
    except (OSError, KeyError):
        return None


def _after_submit(app: App, request: SelectionRequest, wait: bool) -> None:
    for cid, reason in request.warnings.items():
        click.echo(f"warning: {cid}: {reason}", err=True)
    if not wait:
        click.echo(f"request {request.id} is pending ({len(request.conversation_ids)} "
                   "conversations); the sensor will pick it up")
        return
    from brightrun_pipeline import launcher

    if launcher.daemon_running(app.settings):
        # The daemon runs it; this process only follows it, so stopping it changes nothing.
        click.echo(f"request {request.id}: the Dagster daemon processes it", err=True)
        try:
            launcher.wait_for_request(
                app.settings, app.pipeline, request.id,
                lambda status: click.echo(f"request {request.id}: {status}", err=True))
        except KeyboardInterrupt:
            click.echo(f"stopped following request {request.id}; it goes on in the daemon "
                       f"(brightrun requests show {request.id})", err=True)
            sys.exit(130)
    else:
        _survive_hangup()
        try:
            launcher.process_in_this_process(app.settings, app.pipeline, request.id)
        except KeyboardInterrupt as interrupt:
            # Never leave the request claimed by a process that is gone.
            app.pipeline.record_failure([request.id], interrupt)
            click.echo(f"stopped: request {request.id} failed; `brightrun requests retry "
                       f"{request.id}` runs it again", err=True)
            sys.exit(130)
    done = app.db.get_request(request.id)
    if done is not None and done.dagster_run_id:
        click.echo(f"dagster run {done.dagster_run_id}")
    _report_final(app, request.id)


def _survive_hangup() -> None:
    """Closing the terminal must not kill a build half-way: on SIGHUP, keep going with the
    output sent nowhere (the outcome is on the request and the run)."""

    def detach(_signum: int, _frame: object) -> None:
        devnull = os.open(os.devnull, os.O_WRONLY)
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):
                stream.flush()
                os.dup2(devnull, stream.fileno())

    if hasattr(signal, "SIGHUP"):
        signal.signal(signal.SIGHUP, detach)


def _report_final(app: App, request_id: str) -> None:
    request = app.db.get_request(request_id)
    assert request is not None
    if request.status == "succeeded":
        file_id = request.target_file_id or request.training_file_id
        assert file_id is not None
        version = app.db.get_version(file_id, request.result_version)
        file = app.db.get_file(file_id)
        assert version is not None and file is not None
        click.echo(f"published {file.name!r} ({file.id}) version {version.version}: "
                   f"{version.conversation_count} conversations, "
                   f"{version.training_pair_count} pairs, {version.jsonl_line_count} JSONL lines")
        return
    error = request.error
    message = error.message if error else f"request ended {request.status}"
    reasons = error.conversations if error else {}
    if request.status == "rejected":
        raise RequestRejected(message, reasons)
    from brightrun_pipeline.errors import ProcessingFailed

    raise ProcessingFailed(f"request {request.id} {request.status}: {message}", reasons)


@files.command("download")
@click.argument("file_ref", metavar="FILE")
@click.option("--format", "fmt", type=click.Choice(FORMATS), required=True)
@click.option("--split", type=click.Choice(SPLITS),
              help="Only the train or the validation part of an export.")
@click.option("--version", type=click.IntRange(min=1), help="A pinned version (default: current).")
@click.option("--output", type=click.Path(dir_okay=False, path_type=Path), required=True,
              help="Where to write it ('-' for standard output).")
@pass_app
def files_download(app: App, file_ref: str, fmt: str, split: str | None, version: int | None,
                   output: Path) -> None:
    """Download one output of a version: the JSON, the JSONL, an export (or one side of its
    split) or the manifest."""
    file = app.file(file_ref)
    record = queries.get_version(app.pipeline, file, version)
    key = queries.download_object(app.pipeline, file, record, fmt, split)[1].key
    with app.store.open_read(app.settings.training_bucket, key) as stream:
        if str(output) == "-":
            shutil.copyfileobj(stream, sys.stdout.buffer, 1 << 20)
            return
        # Like `aws s3 cp`, the directories are made as needed. The object goes to a partial
        # file beside the target first (created with the user's umask, as any other file they
        # write), which replaces the target only once whole and is removed if the copy fails.
        output.parent.mkdir(parents=True, exist_ok=True)
        partial = output.parent / f".{output.name}.{secrets.token_hex(4)}.part"
        try:
            with partial.open("xb") as target:
                shutil.copyfileobj(stream, target, 1 << 20)
            os.replace(partial, output)
        except BaseException:
            partial.unlink(missing_ok=True)
            raise
    click.echo(f"wrote {output} ({fmt}, version {record.version}, "
               f"{output.stat().st_size} bytes)", err=True)


@files.command("report")
@click.argument("file_ref", metavar="FILE")
@click.option("--version", type=click.IntRange(min=1), help="A pinned version (default: current).")
@click.option("--format", "fmt", type=click.Choice(["text", "json"]), default="text",
              show_default=True)
@pass_app
def files_report(app: App, file_ref: str, version: int | None, fmt: str) -> None:
    """Readiness report of a version: persona × arc × topic balance, quality and tiers,
    human-reviewed share, lengths in characters and tokens, and the warnings (missing system
    message, examples over BRIGHTRUN_CONTEXT_TOKENS, empty or very long responses)."""
    from brightrun_pipeline import readiness

    report = readiness.load_report(app.pipeline, app.file(file_ref).id, version)
    if fmt == "json":
        _echo_json(report.model_dump(mode="json"))
        return
    for line in readiness.summary_lines(report):
        click.echo(line)


@files.command("verify")
@click.argument("file_ref", metavar="FILE")
@click.option("--version", type=click.IntRange(min=1), help="A pinned version (default: current).")
@pass_app
def files_verify(app: App, file_ref: str, version: int | None) -> None:
    """Rebuild a version from its manifest in a temporary place and compare hashes."""
    from brightrun_pipeline.errors import ProcessingFailed
    from brightrun_pipeline.reproduce import reproduce_version

    file = app.file(file_ref)
    comparisons = reproduce_version(app.pipeline, file.id, version)
    width = max(len(item.name) for item in comparisons)
    for item in comparisons:
        state = "same" if item.matches else "DIFFERENT"
        click.echo(f"{item.name:<{width}} {state:<9} published {item.published_sha256}  "
                   f"rebuilt {item.rebuilt_sha256}")
    if not all(item.matches for item in comparisons):
        raise ProcessingFailed("the rebuild does not reproduce the published version")
    click.echo("verified: the rebuild reproduces the published bytes")


@files.command("diff")
@click.argument("file_ref", metavar="FILE")
@click.argument("version_a", metavar="A", type=click.IntRange(min=1))
@click.argument("version_b", metavar="B", type=click.IntRange(min=1))
@click.option("--format", "fmt", type=click.Choice(["text", "json"]), default="text",
              show_default=True)
@pass_app
def files_diff(app: App, file_ref: str, version_a: int, version_b: int, fmt: str) -> None:
    """What changed from version A to version B: conversations added, rebuilt and removed;
    pairs, trainable pairs and approx_tokens; the persona, arc, topic and quality-tier mix."""
    from brightrun_pipeline import diff

    file = app.file(file_ref)
    result = diff.diff_versions(app.pipeline, file.id, version_a, version_b)
    if fmt == "json":
        _echo_json(result.model_dump(mode="json"))
        return
    for line in diff.summary_lines(result):
        click.echo(line)
    for dimension in diff.MIX_DIMENSIONS:
        rows = getattr(result.mix, dimension)
        click.echo(f"\n{diff.MIX_TITLES[dimension]} mix")
        click.echo(tabulate(
            [[r.key or "(none)", r.count_a, r.count_b, diff.signed(r.count_b - r.count_a),
              f"{r.share_a:.2f}", f"{r.share_b:.2f}", diff.signed(r.shift_pp)] for r in rows],
            headers=["key", f"v{result.version_a}", f"v{result.version_b}", "change",
                     f"share v{result.version_a} %", f"share v{result.version_b} %", "shift pp"],
            disable_numparse=True, colalign=("left",) + ("right",) * 6))


@files.command("rematerialize")
@click.argument("file_ref", metavar="FILE", required=False)
@click.option("--all", "all_files", is_flag=True, help="Every file with changed sources.")
@pass_app
def files_rematerialize(app: App, file_ref: str | None, all_files: bool) -> None:
    """Rebuild FILE (or every file with --all) from its changed sources, as a new version."""
    from brightrun_pipeline.launcher import run_rematerialization_in_process

    if bool(file_ref) == all_files:
        raise UsageError("give either FILE or --all")
    stale = app.pipeline.stale_files()
    targets = sorted(stale) if all_files else [app.file(file_ref).id]  # type: ignore[arg-type]
    if not targets or not any(t in stale for t in targets):
        click.echo("no source changed since it was built: nothing to rebuild")
        return
    failed = []
    for file_id in targets:
        before = app.db.get_file(file_id)
        outcome = run_rematerialization_in_process(app.settings, file_id)
        after = app.db.get_file(file_id)
        assert before is not None and after is not None
        if not outcome.success:
            failed.append(file_id)
            click.echo(f"{after.name}: rebuild failed (dagster run {outcome.run_id})", err=True)
        else:
            click.echo(f"{after.name}: version {before.current_version} → "
                       f"{after.current_version} ({stale.get(file_id, 0)} changed conversations, "
                       f"dagster run {outcome.run_id})")
    if failed:
        from brightrun_pipeline.errors import ProcessingFailed

        raise ProcessingFailed(f"{len(failed)} rebuild(s) failed; see the runs in the Dagster UI")


# --- requests -------------------------------------------------------------------------------


@cli.group()
def requests() -> None:
    """Inspect selection requests."""


@requests.command("list")
@click.option("--status", type=click.Choice(
    ["pending", "queued", "running", "succeeded", "rejected", "failed"]))
@click.option("--format", "fmt", type=click.Choice(["table", "json"]), default="table",
              show_default=True)
@pass_app
def requests_list(app: App, status: str | None, fmt: str) -> None:
    """List selection requests, oldest first."""
    records = [{
        "id": r.id, "status": r.status,
        "target": r.target_file_id or r.training_file_id or f"new: {r.new_file_name}",
        "conversations": len(r.conversation_ids) if isinstance(r.conversation_ids, list) else "?",
        "version": r.result_version, "error": r.error.message if r.error else None,
        "created_at": r.created_at,
    } for r in app.db.list_requests(status=status)]
    _emit(records, fmt)


@requests.command("show")
@click.argument("request_id")
@pass_app
def requests_show(app: App, request_id: str) -> None:
    """Show one selection request with its outcome."""
    request = app.db.get_request(request_id)
    if request is None:
        raise UsageError(f"no selection request with id {request_id!r}")
    _echo_json(request.model_dump(mode="json"))


@requests.command("retry")
@click.argument("request_id")
@pass_app
def requests_retry(app: App, request_id: str) -> None:
    """Put a failed request back to pending; the sensor runs it again under a new run key."""
    request = app.pipeline.retry_request(request_id)
    click.echo(f"request {request.id} is {request.status} again")


# --- users ----------------------------------------------------------------------------------


@cli.group()
def users() -> None:
    """Console users and their API tokens."""


@users.command("add")
@click.argument("name")
@click.option("--admin", is_flag=True, help="May add to every training file.")
@pass_app
def users_add(app: App, name: str, admin: bool) -> None:
    """Add a console user and print its API token (shown this once; only its hash is kept)."""
    from brightrun_pipeline.users import add_user

    user, token = add_user(app.db, name, admin=admin)
    click.echo(f"user {user.name!r} added{' (admin)' if admin else ''}; its token, shown once:",
               err=True)
    click.echo(token)


@users.command("list")
@pass_app
def users_list(app: App) -> None:
    """List console users (never their tokens)."""
    _emit([{"name": u.name, "admin": u.is_admin, "created_at": u.created_at}
           for u in app.db.list_users()], "table")


@users.command("remove")
@click.argument("name")
@pass_app
def users_remove(app: App, name: str) -> None:
    """Remove a console user; its token stops working at once."""
    if not app.db.remove_user(name):
        raise UsageError(f"no user named {name!r}")
    click.echo(f"user {name!r} removed")


# --- lineage --------------------------------------------------------------------------------


@cli.group()
def lineage() -> None:
    """Which conversations built which file versions."""


@lineage.command("conversation")
@click.argument("conversation_id")
@click.option("--format", "fmt", type=click.Choice(["table", "json"]), default="table",
              show_default=True)
@pass_app
def lineage_conversation(app: App, conversation_id: str, fmt: str) -> None:
    """Every training file and version that contains a conversation."""
    cid = _uuid_option(conversation_id, "CONVERSATION_ID")
    records = [a.model_dump() for a in queries.conversation_lineage(app.pipeline, cid)]
    if fmt == "table" and not records:
        click.echo(f"conversation {cid} is in no training file")
        return
    if fmt == "table":
        for record in records:
            record["versions"] = _ranges(record["versions"])
    _emit(records, fmt)


def _ranges(versions: Iterable[int]) -> str:
    values = list(versions)
    if not values:
        return ""
    return f"{values[0]}" if len(values) == 1 else f"{values[0]}–{values[-1]}"


@lineage.command("file")
@click.argument("file_ref", metavar="FILE")
@click.option("--version", type=click.IntRange(min=1), help="A pinned version (default: current).")
@click.option("--format", "fmt", type=click.Choice(["table", "json", "csv"]), default="table",
              show_default=True)
@pass_app
def lineage_file(app: App, file_ref: str, version: int | None, fmt: str) -> None:
    """The conversations of a version with their batch and source hash."""
    file = app.file(file_ref)
    _emit([row.model_dump() for row in queries.version_lineage(app.pipeline, file.id, version)],
          fmt)


# --- console --------------------------------------------------------------------------------


@cli.command()
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to listen on (beyond loopback, users are required).")
@click.option("--port", type=click.IntRange(1, 65535), default=8000, show_default=True)
@pass_app
def console(app: App, host: str, port: int) -> None:
    """Serve the curators' web console (Conversations and LoRA Training JSON Files pages)."""
    from brightrun_pipeline.console.app import create_app, is_loopback

    app.db.upgrade()
    web = create_app(app.services, host=host)
    shown = f"[{host}]" if ":" in host else host
    click.echo(f"console on http://{shown}:{port}/ "
               + ("(open to this machine's user: no users defined)"
                  if is_loopback(host) and app.db.count_users() == 0 else "(sign-in required)"),
               err=True)
    import uvicorn

    uvicorn.run(web, host=host, port=port, log_level="info", server_header=False)


# --- demo -----------------------------------------------------------------------------------


@cli.command()
@pass_app
def demo(app: App) -> None:
    """Seed demo data, build a training file from one batch, add a second batch; print results."""
    from brightrun_pipeline.demo_data import generate_demo_dataset
    from brightrun_pipeline.launcher import ensure_dagster_home, process_in_this_process
    from brightrun_pipeline.seeding import seed_dataset

    settings = app.settings
    app.db.upgrade()
    app.store.ensure_bucket(settings.training_bucket)
    ensure_dagster_home(settings)
    dataset = generate_demo_dataset()
    added = seed_dataset(app.db, app.store, settings.source_bucket, dataset)
    click.echo(f"demo data: {len(dataset.conversations)} conversations in "
               f"{len(dataset.batches)} batches ({added} new rows)")
    name = "Demo · financial planning LoRA"
    pipeline = app.pipeline
    for batch in (dataset.batches[0].id, dataset.batches[1].id):
        current = app.db.find_file(name)
        kept, _ = queries.eligible_in_batch(pipeline, batch, current.id if current else None)
        if not kept:
            click.echo(f"batch {batch}: already in {name!r}")
            continue
        if current is None:
            request = pipeline.submit(conversation_ids=kept, new_file_name=name,
                                      description="Two demo batches", requested_by="demo")
        else:
            request = pipeline.submit(conversation_ids=kept, training_file=current.id,
                                      requested_by="demo")
        process_in_this_process(settings, pipeline, request.id)
        done = app.db.get_request(request.id)
        assert done is not None
        click.echo(f"batch {batch}: dagster run {done.dagster_run_id}")
        _report_final(app, request.id)
    _print_published(app, app.file(name))


def _print_published(app: App, file: TrainingFileRecord) -> None:
    version = app.db.get_version(file.id)
    assert version is not None
    bucket = app.settings.training_bucket
    click.echo(f"training file: {file.name} ({file.id})")
    click.echo(f"version: {version.version}  conversations: {version.conversation_count}  "
               f"pairs: {version.training_pair_count}  JSONL lines: {version.jsonl_line_count}")
    for label, key in (("JSON", version.json_key), ("JSONL", version.jsonl_key),
                       ("manifest", version.manifest_key)):
        path = app.store.local_path(bucket, key)
        click.echo(f"{label}: {path.resolve() if path else f'{bucket}/{key}'}")


# --- entry point ----------------------------------------------------------------------------


class _WithoutInterrupts(logging.Filter):
    """Drops log records about a Ctrl-C.

    Ctrl-C can land inside a library's clean-up (SQLAlchemy closing a pooled connection), which
    logs the KeyboardInterrupt with its stack trace before passing it on; the CLI reports the
    interrupt itself, once and without a stack trace.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        kind = record.exc_info[0] if record.exc_info else None
        return not (kind is not None and issubclass(kind, KeyboardInterrupt))


WITHOUT_INTERRUPTS = _WithoutInterrupts()


def quiet_interrupts() -> None:
    """Keep library records of a Ctrl-C off the terminal (see `_WithoutInterrupts`), and the
    interpreter's "Exception ignored in" report of a Ctrl-C that lands in a finalizer."""
    for handler in (logging.lastResort, *logging.getLogger().handlers):
        if handler is not None:
            handler.addFilter(WITHOUT_INTERRUPTS)
    if not isinstance(sys.unraisablehook, _UnraisableUnlessInterrupt):
        sys.unraisablehook = _UnraisableUnlessInterrupt(sys.unraisablehook)


class _UnraisableUnlessInterrupt:
    """Passes every unraisable exception but a KeyboardInterrupt on to the hook it replaced."""

    def __init__(self, previous: Callable[[Any], object]) -> None:
        self.previous = previous

    def __call__(self, unraisable: Any) -> None:
        if not isinstance(unraisable.exc_value, KeyboardInterrupt):
            self.previous(unraisable)


def main(argv: Sequence[str] | None = None) -> None:
    """Run the CLI, mapping domain errors to exit codes without stack traces."""
    quiet_interrupts()
    try:
        cli.main(args=list(argv) if argv is not None else None, prog_name="brightrun",
                 standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        sys.exit(1)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except RequestRejected as exc:
        click.echo(f"rejected: {exc.message}", err=True)
        for cid, reason in exc.conversations.items():
            click.echo(f"  {cid}: {reason}", err=True)
        sys.exit(exc.exit_code)
    except BrightRunError as exc:
        click.echo(f"error: {exc}", err=True)
        for cid, reason in getattr(exc, "conversations", {}).items():
            click.echo(f"  {cid}: {reason}", err=True)
        sys.exit(exc.exit_code)
    except (OperationalError, ProgrammingError) as exc:
        if "no such table" in str(exc) or "does not exist" in str(exc):
            click.echo("error: the database has no BrightRun schema, or an older one; run "
                       "`brightrun init` (it creates or upgrades it)", err=True)
        else:
            click.echo(f"error: database: {exc.orig}", err=True)
        sys.exit(1)
    except ValueError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(2)
