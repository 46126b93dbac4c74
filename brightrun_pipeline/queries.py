"""Read models: what the CLI prints and the console shows, as typed rows.

Every front door reads through these functions, so a listing, a rule ("eligible", "already in
the file") or a header is computed one way only.
"""

from __future__ import annotations

import math
import uuid
from collections.abc import Mapping
from datetime import datetime
from functools import lru_cache
from typing import TYPE_CHECKING, Any, Literal

import orjson
from pydantic import BaseModel, Field

from brightrun_pipeline.db.repository import (
    CatalogRow,
    ObjectRecord,
    TrainingFileRecord,
    VersionRecord,
)
from brightrun_pipeline.errors import NotFound, RequestRejected, UsageError
from brightrun_pipeline.models import Manifest, SelectionRequest
from brightrun_pipeline.outputs import FORMATS, OUTPUTS, SPLITS, Output, output_for_format
from brightrun_pipeline.rules import (
    ConversationFacts,
    already_in,
    ineligibility_reason,
    normalize_uuid,
)

if TYPE_CHECKING:
    from brightrun_pipeline.service import Pipeline
    from brightrun_pipeline.storage import ObjectStore

# The names a listing is sorted by (the console's `sort` parameter), and the catalog column each
# one sorts on.
CONVERSATION_SORTS: dict[str, str] = {
    "conversation_id": "conversation_id", "batch_id": "batch_id", "title": "title",
    "status": "enrichment_status", "persona": "persona_key", "arc": "emotional_arc_key",
    "topic": "topic_key", "tier": "tier", "quality": "quality_score", "created": "created_at",
    "updated": "updated_at", "eligible": "eligible",
}
ConversationSort = Literal["conversation_id", "batch_id", "title", "status", "persona", "arc",
                           "topic", "tier", "quality", "created", "updated", "eligible"]
MAX_PAGE_SIZE = 500
# The objects every version has, including those recorded before objects were listed by name.
BASE_OUTPUT_NAMES = frozenset({"training.json", "training.jsonl", "manifest.json"})


# --- Conversations -------------------------------------------------------------------------


class FileRef(BaseModel):
    """A training file that holds a conversation, and the version that added it."""

    id: str
    name: str
    added_in_version: int


class ConversationRow(BaseModel):
    """One conversation of the catalog as a curator sees it."""

    conversation_id: str
    batch_id: str | None
    title: str | None
    status: str | None
    persona: str | None
    arc: str | None
    topic: str | None
    tier: str | None
    quality: float | None
    created_at: datetime | None
    eligible: bool
    ineligible_reason: str | None
    files: list[FileRef]


class ConversationFilter(BaseModel):
    """A curator's view of the catalog: filters, sort and page (the console's URL query)."""

    batch_id: str | None = None
    status: str | None = None
    persona: str | None = None
    arc: str | None = None
    topic: str | None = None
    tier: str | None = None
    eligible: bool | None = None
    q: str | None = Field(default=None, max_length=200)
    file: str | None = None
    sort: ConversationSort = "created"
    desc: bool = False
    page: int = Field(default=1, ge=1)
    page_size: int = Field(default=50, ge=1, le=MAX_PAGE_SIZE)


class ConversationPage(BaseModel):
    """One page of the catalog with the size of the whole filtered listing."""

    rows: list[ConversationRow]
    total: int
    page: int
    page_size: int
    pages: int


def conversation_row(row: CatalogRow, files: list[tuple[str, str, int]]) -> ConversationRow:
    """The curator's view of a catalog row."""
    reason = ineligibility_reason(
        ConversationFacts(row.conversation_id, row.enrichment_status, row.enriched_file_path))
    return ConversationRow(
        conversation_id=row.conversation_id, batch_id=row.batch_id, title=row.title,
        status=row.enrichment_status, persona=row.persona_key, arc=row.emotional_arc_key,
        topic=row.topic_key, tier=row.tier, quality=row.quality_score,
        created_at=row.created_at, eligible=reason is None, ineligible_reason=reason,
        files=[FileRef(id=i, name=n, added_in_version=v) for i, n, v in files])


def _db_filters(view: ConversationFilter) -> dict[str, Any]:
    batch_id = file_id = None
    if view.batch_id:
        batch_id = normalize_uuid(view.batch_id)
        if batch_id is None:
            raise UsageError(f"batch_id expects a UUID, got {view.batch_id!r}")
    if view.file:
        file_id = normalize_uuid(view.file)
        if file_id is None:
            raise UsageError(f"file expects a training file id (a UUID), got {view.file!r}")
    return {"batch_id": batch_id, "status": view.status or None,
            "persona": view.persona or None, "arc": view.arc or None,
            "topic": view.topic or None, "tier": view.tier or None, "eligible": view.eligible,
            "text": (view.q or "").strip() or None, "in_file": file_id}


def list_conversations(pipeline: Pipeline, view: ConversationFilter) -> ConversationPage:
    """A page of the catalog, filtered and sorted, with eligibility and the files holding each."""
    db = pipeline.db
    filters = _db_filters(view)
    total = db.count_conversations(**filters)
    rows = db.list_conversations(sort=CONVERSATION_SORTS[view.sort], descending=view.desc,
                                 limit=view.page_size,
                                 offset=(view.page - 1) * view.page_size, **filters)
    held = db.memberships(r.conversation_id for r in rows)
    return ConversationPage(
        rows=[conversation_row(r, held.get(r.conversation_id, [])) for r in rows],
        total=total, page=view.page, page_size=view.page_size,
        pages=max(1, math.ceil(total / view.page_size)))


def all_conversations(pipeline: Pipeline, *, sort: ConversationSort = "created",
                      desc: bool = False, limit: int | None = None, **filters: Any
                      ) -> list[ConversationRow]:
    """Every conversation a filter keeps (no paging), for listings printed whole."""
    view = ConversationFilter(sort=sort, desc=desc, **filters)
    rows = pipeline.db.list_conversations(sort=CONVERSATION_SORTS[view.sort],
                                          descending=view.desc, limit=limit,
                                          **_db_filters(view))
    held = pipeline.db.memberships(r.conversation_id for r in rows)
    return [conversation_row(r, held.get(r.conversation_id, [])) for r in rows]


class BatchRow(BaseModel):
    """A batch job and how much of it can still go into training files."""

    id: str
    name: str | None
    status: str
    tier: str | None
    created_at: datetime | None
    conversations: int
    eligible: int


def list_batches(pipeline: Pipeline) -> list[BatchRow]:
    """Every batch job, newest first."""
    return [BatchRow(**vars(b)) for b in pipeline.db.list_batches()]


class BatchOption(BaseModel):
    """A batch job as a filter choice: cheap to list for thousands of batches."""

    id: str
    name: str | None
    total_items: int


def batch_options(pipeline: Pipeline) -> list[BatchOption]:
    """Every batch job, newest first, without counting its conversations (`list_batches` counts
    them for every batch; `batch_counts` for one)."""
    return [BatchOption(id=b.id, name=b.name, total_items=b.total_items)
            for b in pipeline.db.batch_jobs()]


def batch_counts(pipeline: Pipeline, batch_id: str) -> BatchRow:
    """One batch job with how many conversations it holds and how many are eligible."""
    batch = normalize_uuid(batch_id)
    found = pipeline.db.batch_job(batch) if batch else None
    if found is None:
        raise NotFound(f"no batch with id {batch_id}")
    return BatchRow(id=found.id, name=found.name, status=found.status, tier=found.tier,
                    created_at=found.created_at,
                    conversations=pipeline.db.count_conversations(batch_id=found.id),
                    eligible=pipeline.db.count_conversations(batch_id=found.id, eligible=True))


class CatalogChoices(BaseModel):
    """The values each catalog filter can take."""

    statuses: list[str]
    personas: list[str]
    arcs: list[str]
    topics: list[str]
    tiers: list[str]


def catalog_choices(pipeline: Pipeline) -> CatalogChoices:
    """The distinct statuses, personas, arcs, topics and tiers in the catalog."""
    values = pipeline.db.catalog_values()
    return CatalogChoices(statuses=values["enrichment_status"], personas=values["persona_key"],
                          arcs=values["emotional_arc_key"], topics=values["topic_key"],
                          tiers=values["tier"])


def eligible_in_batch(pipeline: Pipeline, batch_id: str, file_id: str | None
                      ) -> tuple[list[str], dict[str, str]]:
    """A batch split into conversations that can be added to a file (or to a new one when
    `file_id` is None) and, for the others, why not. Raises UsageError for an unknown batch."""
    batch = normalize_uuid(batch_id)
    if batch is None:
        raise UsageError(f"a batch ID is a UUID, got {batch_id!r}")
    if not pipeline.db.batch_exists(batch):
        raise NotFound(f"no batch with id {batch}")
    rows = pipeline.db.list_conversations(batch_id=batch, sort="created_at")
    file = pipeline.db.get_file(file_id) if file_id else None
    members = (pipeline.db.member_versions(file.id, [r.conversation_id for r in rows])
               if file else {})
    kept: list[str] = []
    left_out: dict[str, str] = {}
    for row in rows:
        reason = ineligibility_reason(
            ConversationFacts(row.conversation_id, row.enrichment_status, row.enriched_file_path))
        if reason is None and row.conversation_id in members:
            assert file is not None
            reason = already_in(f"training file {file.name!r}", members[row.conversation_id])
        if reason is None:
            kept.append(row.conversation_id)
        else:
            left_out[row.conversation_id] = reason
    return kept, left_out


# --- Selections and requests ---------------------------------------------------------------


class SelectionCheck(BaseModel):
    """Whether a selection can be submitted as it stands, and why not per conversation; and
    what it may be submitted with but should be looked at (near-duplicates of a file that
    warns), per conversation."""

    ok: bool
    target: str
    message: str
    conversations: dict[str, str] = Field(default_factory=dict)
    warnings: dict[str, str] = Field(default_factory=dict)


def check_selection(pipeline: Pipeline, conversation_ids: list[Any], *,
                    training_file: str | None = None, new_file_name: str | None = None
                    ) -> SelectionCheck:
    """Apply the submission rules to a selection without storing anything."""
    file_id = None
    if training_file is not None:
        existing = pipeline.db.find_file(training_file)
        if existing is None:
            raise NotFound(f"no training file named or with id {training_file!r}")
        file_id = existing.id
    request = SelectionRequest(id=str(uuid.uuid4()), training_file_id=file_id,
                               new_file_name=new_file_name, conversation_ids=conversation_ids)
    try:
        valid = pipeline.validate(request)
    except RequestRejected as rejection:
        target = (f"training file {existing.name!r}" if file_id else
                  f"new training file {new_file_name!r}")
        return SelectionCheck(ok=False, target=target, message=rejection.message,
                              conversations=dict(rejection.conversations))
    target = (f"training file {valid.existing_file.name!r}" if valid.existing_file else
              f"new training file {valid.new_file_name!r}")
    warned = len(valid.warnings)
    return SelectionCheck(ok=True, target=target,
                          message=f"{len(valid.rows)} conversation"
                                  f"{'' if len(valid.rows) == 1 else 's'} can be added "
                                  f"to {target}" + (
                                      f"; {warned} of them {'is a' if warned == 1 else 'are'} "
                                      f"near-duplicate{'' if warned == 1 else 's'}"
                                      if warned else ""),
                          warnings=dict(valid.warnings))


class RequestView(BaseModel):
    """A selection request with where it stands and what it produced."""

    id: str
    status: str
    finished: bool
    training_file_id: str | None
    training_file_name: str | None
    new_file_name: str | None
    conversation_count: int | None
    requested_by: str | None
    attempts: int
    result_version: int | None
    dagster_run_id: str | None
    error: dict[str, Any] | None
    created_at: datetime | None
    updated_at: datetime | None


FINISHED_STATUSES = ("succeeded", "rejected", "failed")


def request_view(pipeline: Pipeline, request: SelectionRequest) -> RequestView:
    """What a request's submitter follows until it ends."""
    file_id = request.target_file_id or request.training_file_id
    file = pipeline.db.get_file(file_id) if file_id and normalize_uuid(file_id) else None
    ids = request.conversation_ids
    return RequestView(
        id=request.id, status=request.status, finished=request.status in FINISHED_STATUSES,
        training_file_id=file.id if file else None, training_file_name=file.name if file else None,
        new_file_name=request.new_file_name,
        conversation_count=len(ids) if isinstance(ids, list) else None,
        requested_by=request.requested_by, attempts=request.attempts,
        result_version=request.result_version, dagster_run_id=request.dagster_run_id,
        error=request.error.model_dump() if request.error else None,
        created_at=request.created_at, updated_at=request.updated_at)


class SubmittedRequest(RequestView):
    """A request as its submission answers it: where it stands, and what its check warned
    about."""

    warnings: dict[str, str] = Field(
        default_factory=dict,
        description="The near-duplicates the selection was accepted with (the file warns rather "
                    "than blocks), per conversation ID: the reason names the conversation it "
                    "nearly repeats, worded as the selection check words it. Only the answer to "
                    "the submission carries them; they are not stored with the request.")


def submitted_request(pipeline: Pipeline, request: SelectionRequest) -> SubmittedRequest:
    """What a submitter sees once the request is stored: the request and its warnings."""
    view = request_view(pipeline, request)
    return SubmittedRequest(**view.model_dump(), warnings=dict(request.warnings))


def get_request(pipeline: Pipeline, request_id: str) -> RequestView:
    """One request by id, or a UsageError naming it."""
    request = pipeline.db.get_request(request_id)
    if request is None:
        raise NotFound(f"no selection request with id {request_id!r}")
    return request_view(pipeline, request)


# --- Training files ------------------------------------------------------------------------


class QualitySummary(BaseModel):
    """The quality figures of a version's header."""

    avg_quality_score: float | None = None
    min_quality_score: float | None = None
    max_quality_score: float | None = None
    human_reviewed_count: int | None = None
    human_reviewed_percentage: float | None = None


class FileSummary(BaseModel):
    """One row of the LoRA Training JSON Files page."""

    id: str
    name: str
    description: str | None
    owner: str | None
    status: str
    busy: bool
    open_requests: list[str]
    current_version: int | None
    conversations: int
    training_pairs: int
    trainable_pairs: int
    quality: QualitySummary
    scaffolding_distribution: dict[str, dict[str, int]]
    json_bytes: int | None
    jsonl_bytes: int | None
    created_at: datetime
    updated_at: datetime
    near_duplicates: str
    validation_fraction: float | None


class VersionRow(BaseModel):
    """One published version: who asked for it, when, what it holds and its hashes."""

    version: int
    reason: str
    created_at: datetime
    requested_by: list[str]
    request_ids: list[str]
    dagster_run_id: str | None
    conversations: int
    training_pairs: int
    trainable_pairs: int
    jsonl_lines: int
    json_bytes: int
    jsonl_bytes: int
    json_sha256: str
    jsonl_sha256: str
    manifest_sha256: str
    # The download formats this version has (versions published before an output existed lack
    # it).
    formats: list[str]


class FileDetail(BaseModel):
    """A training file's page: its summary and every version, newest first."""

    file: FileSummary
    versions: list[VersionRow]


@lru_cache(maxsize=1024)
def _header(store: ObjectStore, bucket: str, key: str, sha256: str, body_start: int
            ) -> dict[str, Any]:
    # Published objects never change, so a header read once (keyed by its hash) stays true.
    with store.open_read(bucket, key) as stream:
        prefix = stream.read(body_start)
    return orjson.loads(prefix.rstrip()[:-1] + b"[]}")["training_file_metadata"]


def read_header(pipeline: Pipeline, version: VersionRecord) -> dict[str, Any]:
    """The `training_file_metadata` header of a version's JSON (only its first bytes are read)."""
    return _header(pipeline.store, pipeline.training_bucket, version.json_key,
                   version.json_sha256, version.json_body_start)


def _summary(pipeline: Pipeline, file: TrainingFileRecord, version: VersionRecord | None,
             open_requests: list[SelectionRequest]) -> FileSummary:
    header = read_header(pipeline, version) if version else {}
    status = ("a request is running" if any(r.status == "running" for r in open_requests)
              else "a request is queued" if open_requests else file.status)
    return FileSummary(
        id=file.id, name=file.name, description=file.description, owner=file.created_by,
        status=status, busy=bool(open_requests), open_requests=[r.id for r in open_requests],
        current_version=file.current_version,
        conversations=version.conversation_count if version else 0,
        training_pairs=version.training_pair_count if version else 0,
        trainable_pairs=version.trainable_pair_count if version else 0,
        quality=QualitySummary(**header.get("quality_summary", {})),
        scaffolding_distribution=header.get("scaffolding_distribution", {}),
        json_bytes=version.json_size if version else None,
        jsonl_bytes=version.jsonl_size if version else None,
        created_at=file.created_at, updated_at=file.updated_at,
        near_duplicates=file.near_duplicates, validation_fraction=file.validation_fraction)


def list_files(pipeline: Pipeline) -> list[FileSummary]:
    """Every training file with its current version's figures, newest activity first."""
    open_requests = pipeline.db.open_requests_by_file()
    return [_summary(pipeline, file, version, open_requests.get(file.id, []))
            for file, version in pipeline.db.list_files()]


def find_file(pipeline: Pipeline, ref: str) -> TrainingFileRecord:
    """A training file by name or id, or a UsageError naming the reference."""
    file = pipeline.db.find_file(ref)
    if file is None:
        raise NotFound(f"no training file named or with id {ref!r}")
    return file


def version_rows(pipeline: Pipeline, file_id: str) -> list[VersionRow]:
    """Every published version of a file, newest first."""
    versions = pipeline.db.list_versions(file_id)
    requests = pipeline.db.requests_by_id(i for v in versions for i in v.request_ids)
    names = pipeline.db.version_object_names(file_id)
    rows = []
    for v in reversed(versions):
        who = sorted({requests[i].requested_by for i in v.request_ids
                      if i in requests and requests[i].requested_by})
        rows.append(VersionRow(
            version=v.version, reason=v.reason, created_at=v.created_at, requested_by=who,
            request_ids=v.request_ids, dagster_run_id=v.dagster_run_id,
            conversations=v.conversation_count, training_pairs=v.training_pair_count,
            trainable_pairs=v.trainable_pair_count, jsonl_lines=v.jsonl_line_count,
            json_bytes=v.json_size, jsonl_bytes=v.jsonl_size, json_sha256=v.json_sha256,
            jsonl_sha256=v.jsonl_sha256, manifest_sha256=v.manifest_sha256,
            formats=[o.format for o in OUTPUTS
                     if o.name in names.get(v.version, BASE_OUTPUT_NAMES)]))
    return rows


def file_detail(pipeline: Pipeline, ref: str) -> FileDetail:
    """A training file's summary and version history."""
    file = find_file(pipeline, ref)
    version = pipeline.db.get_version(file.id)
    open_requests = pipeline.db.open_requests_by_file().get(file.id, [])
    return FileDetail(file=_summary(pipeline, file, version, open_requests),
                      versions=version_rows(pipeline, file.id))


def get_version(pipeline: Pipeline, file: TrainingFileRecord, version: int | None
                ) -> VersionRecord:
    """A published version of a file (the current one when `version` is None), or a UsageError."""
    record = pipeline.db.get_version(file.id, version)
    if record is None:
        raise NotFound(f"training file {file.name!r} has no "
                       + (f"version {version}" if version else "published version yet"))
    return record


def version_objects(pipeline: Pipeline, record: VersionRecord) -> list[ObjectRecord]:
    """The objects of a published version (for versions recorded before objects were listed by
    name: their three columns)."""
    return pipeline.db.version_objects(record.training_file_id, record.version) or [
        ObjectRecord("training.json", record.json_key, record.json_sha256, record.json_size),
        ObjectRecord("training.jsonl", record.jsonl_key, record.jsonl_sha256, record.jsonl_size),
        ObjectRecord("manifest.json", record.manifest_key, record.manifest_sha256, None)]


def download_object(pipeline: Pipeline, file: TrainingFileRecord, record: VersionRecord,
                    fmt: str, split: str | None = None) -> tuple[Output, ObjectRecord]:
    """The output a download format (and split side) names and its object in a version,
    refusing a version whose records point anywhere but at this file's own objects."""
    from brightrun_pipeline.builder import object_key
    from brightrun_pipeline.errors import BrightRunError

    if fmt not in FORMATS:
        raise UsageError(f"format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    output = output_for_format(fmt, split)
    if output is None:
        raise UsageError(f"{fmt} has no {split} split (only the exports are split)"
                         if split in SPLITS else
                         f"split must be one of {', '.join(SPLITS)}, got {split!r}")
    found = {o.name: o for o in version_objects(pipeline, record)}.get(output.name)
    if found is None:
        what = f"{output.format} {split} split" if split else f"{output.format} output"
        raise NotFound(f"version {record.version} of {file.name!r} has no {what} (published "
                       "before it existed, or the file holds out no validation share)")
    own = object_key(file.id, record.version, output.name)
    if found.key != own:
        raise BrightRunError(f"version {record.version} of {file.name!r} records the key "
                             f"{found.key!r}, not its own {own!r}; refusing to download it")
    return output, found


def download_name(file: TrainingFileRecord, version: int, output: Output) -> str:
    """A safe file name for a download: the file's name reduced to [A-Za-z0-9._-], the version
    and the output's own suffix (".json", ".jsonl", ".chat.jsonl", ".manifest.json", …)."""
    stem = "".join(c if c.isascii() and (c.isalnum() or c in "-_.") else "-"
                   for c in file.name).strip("-.") or "training-file"
    stem = "-".join(part for part in stem.split("-") if part)[:80]
    return f"{stem}-v{version}.{output.name.removeprefix('training.')}"


_BLOCK_START = b"    {\n"
_PAIRS_KEY = b'      "training_pairs": ['


def recorded_metadata(pipeline: Pipeline, record: VersionRecord, sources: Mapping[str, str],
                      wanted: set[str]) -> dict[str, dict[str, Any]]:
    """The `conversation_metadata` that a version's training.json recorded for some
    conversations (built from the source with the given sha256): the body is streamed and only
    the block headers are parsed. For conversations rebuilt since, whose membership rows
    describe a later version."""
    from brightrun_pipeline.errors import ProcessingFailed

    found: dict[str, dict[str, Any]] = {}
    remaining = record.json_body_end - record.json_body_start
    header: list[bytes] | None = None
    with pipeline.store.open_read(pipeline.training_bucket, record.json_key,
                                  start=record.json_body_start) as stream:
        for line in stream:
            remaining -= len(line)
            if line == _BLOCK_START:
                header = []
            elif header is not None and line.startswith(_PAIRS_KEY):
                text = b"".join(header).rstrip().removesuffix(b",")
                meta = orjson.loads(b"{" + text + b"}")["conversation_metadata"]
                cid = meta["conversation_id"]
                if cid in wanted and meta["source_sha256"] == sources.get(cid):
                    found[cid] = meta
                    if len(found) == len(wanted):
                        break
                header = None
            elif header is not None:
                header.append(line)
            if remaining <= 0:
                break
    lost = sorted(wanted - set(found))
    if lost:
        raise ProcessingFailed(
            f"version {record.version} of training file {record.training_file_id}: "
            f"training.json has no block for {len(lost)} conversation(s) of its manifest "
            f"(first {lost[0]})")
    return found


# --- Lineage -------------------------------------------------------------------------------


def read_manifest(pipeline: Pipeline, training_file_id: str, version: int | None) -> Manifest:
    """The manifest of a published version (the current one when `version` is None)."""
    record = pipeline.db.get_version(training_file_id, version)
    if record is None:
        which = "version yet" if version is None else f"version {version}"
        raise NotFound(f"training file {training_file_id} has no published {which}")
    return Manifest.model_validate_json(
        pipeline.store.get_bytes(pipeline.training_bucket, record.manifest_key))


class LineageRow(BaseModel):
    """One conversation of a version: its batch, scaffolding, quality and source bytes."""

    conversation_id: str
    batch_id: str | None
    persona: str | None
    arc: str | None
    topic: str | None
    quality: float | None
    source_key: str
    source_sha256: str
    pair_count: int
    added_in_version: int


def version_lineage(pipeline: Pipeline, training_file_id: str, version: int | None
                    ) -> list[LineageRow]:
    """The conversations that built a version, in file order, from its manifest."""
    manifest = read_manifest(pipeline, training_file_id, version)
    facts = {m.conversation_id: m for m in pipeline.db.iter_members(training_file_id)}
    rows = []
    for entry in manifest.conversations:
        member = facts.get(entry.conversation_id)
        rows.append(LineageRow(
            conversation_id=entry.conversation_id, batch_id=entry.batch_id,
            persona=member.persona_key if member else None,
            arc=member.emotional_arc_key if member else None,
            topic=member.topic_key if member else None,
            quality=member.quality_score if member else None,
            source_key=entry.source_key, source_sha256=entry.source_sha256,
            pair_count=entry.pair_count, added_in_version=entry.added_in_version))
    return rows


class Appearance(BaseModel):
    """One training file that holds a conversation, and the versions that contain it."""

    training_file_id: str
    file_name: str
    added_in_version: int
    current_version: int | None
    versions: list[int]
    source_sha256: str


def conversation_lineage(pipeline: Pipeline, conversation_id: str) -> list[Appearance]:
    """Every training file and version that contains a conversation (files only grow, so every
    version from the one that added it onwards). Raises UsageError for an unknown ID."""
    cid = normalize_uuid(conversation_id)
    if cid is None:
        raise UsageError(f"a conversation ID is a UUID, got {conversation_id!r}")
    if not pipeline.db.conversations_by_id([cid]):
        raise NotFound(f"unknown conversation ID {cid}")
    appearances = []
    for file, member in pipeline.db.files_containing(cid):
        current = file.current_version or 0
        appearances.append(Appearance(
            training_file_id=file.id, file_name=file.name,
            added_in_version=member.added_in_version, current_version=file.current_version,
            versions=list(range(member.added_in_version, current + 1)),
            source_sha256=member.source_sha256))
    return appearances
