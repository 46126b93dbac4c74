"""The console's JSON API under /api/: the same read models and the same submission as the CLI."""

from __future__ import annotations

import enum
from collections.abc import Iterator
from contextlib import ExitStack
from typing import Annotated, Any, BinaryIO

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import RedirectResponse, Response, StreamingResponse
from pydantic import BaseModel, Field

from brightrun_pipeline import queries
from brightrun_pipeline.console.auth import CSRF_HEADER, Identity, check_csrf, require_identity
from brightrun_pipeline.console.errors import ServerFault
from brightrun_pipeline.db.repository import UserRecord
from brightrun_pipeline.diff import VersionDiff, diff_versions
from brightrun_pipeline.errors import Forbidden, ObjectNotFound, UsageError
from brightrun_pipeline.factory import Services
from brightrun_pipeline.models import MAX_CONVERSATIONS_PER_REQUEST
from brightrun_pipeline.outputs import FORMATS
from brightrun_pipeline.readiness import ReadinessReport, load_report
from brightrun_pipeline.readiness_plots import PLOT_NAMES, plot_png
from brightrun_pipeline.users import may_add_to

router = APIRouter(prefix="/api", tags=["api"])
# The download formats, one per registered output (brightrun_pipeline.outputs).
DownloadFormat = enum.Enum(  # type: ignore[misc]
    "DownloadFormat", {f.replace("-", "_"): f for f in FORMATS}, type=str)
# How long a presigned S3 download link stays valid.
DOWNLOAD_URL_SECONDS = 300
Caller = Annotated[Identity, Depends(require_identity)]


def services_of(request: Request) -> Services:
    """The services the app was created with."""
    services: Services = request.app.state.services
    return services


ServicesDep = Annotated[Services, Depends(services_of)]


def changing(request: Request, identity: Caller) -> Identity:
    """The caller of a state-changing request, after the CSRF check for browsers."""
    check_csrf(request, identity, request.headers.get(CSRF_HEADER))
    return identity


Editor = Annotated[Identity, Depends(changing)]


class UserView(BaseModel):
    """Who the caller is."""

    name: str
    admin: bool
    signed_in_via: str


@router.get("/me")
def me(identity: Caller) -> UserView:
    """The signed-in user."""
    return UserView(name=identity.user.name, admin=identity.user.is_admin,
                    signed_in_via=identity.via)


@router.get("/conversations")
def list_conversations(services: ServicesDep, _: Caller,
                       view: Annotated[queries.ConversationFilter, Query()]
                       ) -> queries.ConversationPage:
    """A page of conversations, filtered and sorted like the Conversations page."""
    return queries.list_conversations(services.pipeline, view)


@router.get("/conversations/{conversation_id}/lineage")
def conversation_lineage(services: ServicesDep, _: Caller, conversation_id: str
                         ) -> list[queries.Appearance]:
    """Every training file and version that contains a conversation."""
    return queries.conversation_lineage(services.pipeline, conversation_id)


@router.get("/choices")
def catalog_choices(services: ServicesDep, _: Caller) -> queries.CatalogChoices:
    """The values each conversation filter can take."""
    return queries.catalog_choices(services.pipeline)


@router.get("/batches")
def list_batches(services: ServicesDep, _: Caller) -> list[queries.BatchRow]:
    """Every batch job with its conversation and eligible counts."""
    return queries.list_batches(services.pipeline)


class BatchSelection(BaseModel):
    """The conversations of a batch that can be added to a file, and why the others cannot."""

    batch_id: str
    conversation_ids: list[str]
    left_out: dict[str, str]


@router.get("/batches/{batch_id}/eligible")
def eligible_in_batch(services: ServicesDep, _: Caller, batch_id: str,
                      file: str | None = None) -> BatchSelection:
    """What "select all eligible in this batch" selects (for `file`, or for a new file)."""
    file_id = queries.find_file(services.pipeline, file).id if file else None
    kept, left_out = queries.eligible_in_batch(services.pipeline, batch_id, file_id)
    return BatchSelection(batch_id=batch_id, conversation_ids=kept, left_out=left_out)


@router.get("/files")
def list_files(services: ServicesDep, _: Caller) -> list[queries.FileSummary]:
    """Every training file with its current figures."""
    return queries.list_files(services.pipeline)


@router.get("/files/{file_ref}")
def show_file(services: ServicesDep, _: Caller, file_ref: str) -> queries.FileDetail:
    """A training file with its version history."""
    return queries.file_detail(services.pipeline, file_ref)


@router.get("/files/{file_ref}/versions")
def list_versions(services: ServicesDep, _: Caller, file_ref: str) -> list[queries.VersionRow]:
    """Every published version of a file, newest first."""
    file = queries.find_file(services.pipeline, file_ref)
    return queries.version_rows(services.pipeline, file.id)


# The readiness report's plots, by name (brightrun_pipeline.readiness_plots).
PlotName = enum.Enum("PlotName", {name: name for name in PLOT_NAMES}, type=str)  # type: ignore[misc]


@router.get("/files/{file_ref}/report")
def readiness_report(services: ServicesDep, _: Caller, file_ref: str,
                     version: Annotated[int | None, Query(ge=1)] = None) -> ReadinessReport:
    """The readiness report of a version (default: the current one): balance, quality, human
    review, lengths and warnings. Computed once per version and kept in the training bucket."""
    file = queries.find_file(services.pipeline, file_ref)
    return load_report(services.pipeline, file.id, version)


@router.get("/files/{file_ref}/report/plots/{name}.png", response_class=Response,
            responses={200: {"content": {"image/png": {}}}})
def readiness_plot(services: ServicesDep, _: Caller, file_ref: str,
                   name: PlotName,  # type: ignore[valid-type]
                   version: Annotated[int | None, Query(ge=1)] = None) -> Response:
    """One plot of a version's readiness report as a PNG: lengths, quality or balance."""
    file = queries.find_file(services.pipeline, file_ref)
    report = load_report(services.pipeline, file.id, version)
    return Response(plot_png(report, name.value), media_type="image/png",
                    headers={"Cache-Control": "private, max-age=300"})


@router.get("/files/{file_ref}/lineage")
def file_lineage(services: ServicesDep, _: Caller, file_ref: str,
                 version: Annotated[int | None, Query(ge=1)] = None
                 ) -> list[queries.LineageRow]:
    """The conversations (and source hashes) that built a version (default: the current one)."""
    file = queries.find_file(services.pipeline, file_ref)
    queries.get_version(services.pipeline, file, version)
    return queries.version_lineage(services.pipeline, file.id, version)


@router.get("/files/{file_ref}/diff")
def version_diff(services: ServicesDep, _: Caller, file_ref: str,
                 a: Annotated[int, Query(ge=1)], b: Annotated[int, Query(ge=1)],
                 token_totals: bool = True) -> VersionDiff:
    """What changed from version `a` to version `b`: conversations added, rebuilt and removed,
    pairs, trainable pairs and approx_tokens, and the mix shift (`token_totals=false`: only the
    change of approx_tokens, counted on the conversations that changed)."""
    file = queries.find_file(services.pipeline, file_ref)
    return diff_versions(services.pipeline, file.id, a, b, token_totals=token_totals)


@router.get("/files/{file_ref}/download", response_model=None,
            responses={200: {"content": {"application/octet-stream": {}}},
                       307: {"description": "a short-lived presigned URL on S3"}})
def download(services: ServicesDep, _: Caller, file_ref: str,
             format: DownloadFormat = DownloadFormat.json,  # type: ignore[attr-defined]
             split: Annotated[str | None, Query(
                 description="train or validation: one side of a split export")] = None,
             version: Annotated[int | None, Query(ge=1)] = None) -> Response:
    """One output of a version (default: the current one): the JSON, the JSONL, an export or
    the manifest."""
    pipeline = services.pipeline
    file = queries.find_file(pipeline, file_ref)
    record = queries.get_version(pipeline, file, version)
    output, item = queries.download_object(pipeline, file, record, format.value,
                                           split or None)
    key = item.key
    name = queries.download_name(file, record.version, output)
    url = pipeline.store.download_url(pipeline.training_bucket, key, file_name=name,
                                      expires_in=DOWNLOAD_URL_SECONDS)
    if url is not None:
        return RedirectResponse(url, status_code=307)
    headers = {"Content-Disposition": f'attachment; filename="{name}"'}
    if item.size is not None:
        headers["Content-Length"] = str(item.size)
    media = output.media_type
    # Opened before the answer starts: a missing object is an error, not a 200 cut short.
    opened = ExitStack()
    try:
        stream = opened.enter_context(services.store.open_read(pipeline.training_bucket, key))
    except ObjectNotFound as exc:
        raise ServerFault(f"the {output.format} of version {record.version} of {file.name!r} is "
                          "missing from storage") from exc
    return StreamingResponse(_chunks(opened, stream), media_type=media, headers=headers)


def _chunks(opened: ExitStack, stream: BinaryIO) -> Iterator[bytes]:
    with opened:
        while chunk := stream.read(1 << 20):
            yield chunk


class Selection(BaseModel):
    """Conversations to add to an existing training file, or to a new one."""

    conversation_ids: list[Any] = Field(
        description=f"Conversation IDs (UUIDs), at most {MAX_CONVERSATIONS_PER_REQUEST}.")
    training_file: str | None = Field(default=None,
                                      description="An existing file's id or name.")
    new_file_name: str | None = Field(default=None, description="The name of a new file.")
    description: str | None = Field(default=None, max_length=2000,
                                    description="A new file's description.")


def _target_check(services: Services, user: UserRecord, selection: Selection) -> None:
    if (selection.training_file is None) == (selection.new_file_name is None):
        raise UsageError("name exactly one target: training_file or new_file_name")
    if selection.training_file is not None:
        file = queries.find_file(services.pipeline, selection.training_file)
        if not may_add_to(user, file):
            raise Forbidden(f"only the creator of {file.name!r} ({file.created_by or 'unknown'})"
                            " or an admin may add to it")


@router.post("/selections/validate")
def validate_selection(services: ServicesDep, identity: Editor, selection: Selection
                       ) -> queries.SelectionCheck:
    """Check a selection with the submission rules, storing nothing."""
    _target_check(services, identity.user, selection)
    return queries.check_selection(services.pipeline, selection.conversation_ids,
                                   training_file=selection.training_file,
                                   new_file_name=selection.new_file_name)


@router.post("/requests", status_code=202)
def submit_request(services: ServicesDep, identity: Editor, selection: Selection
                   ) -> queries.SubmittedRequest:
    """Store a pending selection request (the sensor runs it), answered with the near-duplicate
    warnings it was accepted with; a selection that breaks the rules is refused with a reason
    per conversation and nothing is stored."""
    _target_check(services, identity.user, selection)
    request = services.pipeline.submit(
        conversation_ids=selection.conversation_ids, training_file=selection.training_file,
        new_file_name=selection.new_file_name, description=selection.description,
        requested_by=identity.user.name)
    return queries.submitted_request(services.pipeline, request)


@router.post("/requests/{request_id}/retry")
def retry_request(services: ServicesDep, identity: Editor, request_id: str
                  ) -> queries.RequestView:
    """Put a failed request back to pending (409 when it has not failed); only its submitter
    or an admin may."""
    request = queries.get_request(services.pipeline, request_id)
    if not identity.user.is_admin and request.requested_by != identity.user.name:
        raise Forbidden(f"only {request.requested_by or 'its submitter'} or an admin may retry "
                        f"request {request_id}")
    return queries.request_view(services.pipeline,
                                services.pipeline.retry_request(request_id))


@router.get("/requests/{request_id}")
def show_request(services: ServicesDep, _: Caller, request_id: str) -> queries.RequestView:
    """Where a selection request stands."""
    return queries.get_request(services.pipeline, request_id)
