"""The console's pages: server-rendered from the same read models as the API and the CLI.

Browsing (filters, sort, paging) is plain links and GET forms whose state lives in the URL
query; static/console.js adds selection, checks, submission and progress over the JSON API.
"""

from __future__ import annotations

from datetime import UTC, datetime
from functools import partial
from typing import Annotated, Any
from urllib.parse import urlencode, urlsplit

from fastapi import APIRouter, Depends, Form, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from markupsafe import Markup, escape
from pydantic import ValidationError

from brightrun_pipeline import queries
from brightrun_pipeline.console.auth import (
    CSRF_COOKIE,
    CSRF_FIELD,
    SESSION_COOKIE,
    Identity,
    check_csrf,
    csrf_token,
    require_identity,
)
from brightrun_pipeline.diff import diff_from_previous, diff_versions, signed
from brightrun_pipeline.errors import BrightRunError, NotFound
from brightrun_pipeline.models import MAX_CONVERSATIONS_PER_REQUEST
from brightrun_pipeline.outputs import OUTPUTS
from brightrun_pipeline.readiness import load_report
from brightrun_pipeline.readiness_plots import PLOTS
from brightrun_pipeline.service import Pipeline
from brightrun_pipeline.users import authenticate

router = APIRouter(include_in_schema=False)
Caller = Annotated[Identity, Depends(require_identity)]


def render(request: Request, template: str, context: dict[str, Any],
           identity: Identity | None = None, status_code: int = 200) -> Response:
    """A page with the layout's context (who is signed in, the CSRF token) and the CSRF cookie."""
    token = csrf_token(request)
    install_filters(request.app.state.templates.env)
    response = request.app.state.templates.TemplateResponse(
        request, template, {"identity": identity, "csrf_token": token, **context},
        status_code=status_code)
    if request.cookies.get(CSRF_COOKIE) != token:
        response.set_cookie(CSRF_COOKIE, token, httponly=True, samesite="strict",
                            secure=request.url.scheme == "https", path="/")
    return response


def _safe_next(target: str | None) -> str:
    # Only a path on this site: never an absolute URL an attacker could plant in the link.
    if (not target or not target.startswith("/") or target.startswith("//")
            or "\\" in target):  # browsers read a backslash as a slash
        return "/conversations"
    # urlsplit drops tabs and newlines as browsers do: "/\t/x" is "//x", another host.
    parts = urlsplit(target)
    if parts.scheme or parts.netloc or not parts.path.startswith("/"):
        return "/conversations"
    return parts.path + (f"?{parts.query}" if parts.query else "")


@router.get("/")
def home() -> RedirectResponse:
    """The console opens on the Conversations page."""
    return RedirectResponse("/conversations", status_code=307)


@router.get("/sign-in", response_class=HTMLResponse)
def sign_in_page(request: Request, next: str = "/conversations") -> Response:
    """The sign-in form: paste the token `brightrun users add` printed."""
    return render(request, "sign_in.html", {"next": _safe_next(next), "error": None})


@router.post("/sign-in")
def sign_in(request: Request, token: Annotated[str, Form()],
            csrf: Annotated[str, Form(alias=CSRF_FIELD)] = "",
            next: Annotated[str, Form()] = "/conversations") -> Response:
    """Check the token and keep it in an HttpOnly cookie for this browser."""
    check_csrf(request, None, csrf)
    user = authenticate(request.app.state.services.db, token.strip())
    if user is None:
        return render(request, "sign_in.html",
                      {"next": _safe_next(next), "error": "that token belongs to no user"},
                      status_code=401)
    response = RedirectResponse(_safe_next(next), status_code=303)
    response.set_cookie(SESSION_COOKIE, token.strip(), httponly=True, samesite="strict",
                        secure=request.url.scheme == "https", path="/",
                        max_age=30 * 24 * 3600)
    return response


@router.post("/sign-out")
def sign_out(request: Request, csrf: Annotated[str, Form(alias=CSRF_FIELD)] = "") -> Response:
    """Forget this browser's token."""
    check_csrf(request, None, csrf)
    response = RedirectResponse("/sign-in", status_code=303)
    response.delete_cookie(SESSION_COOKIE, path="/")
    return response


# --- Formatting ----------------------------------------------------------------------------


def file_size(size: int | None) -> str:
    """Bytes as a person reads them: 980 B, 12.4 kB, 3.1 MB."""
    if size is None:
        return "—"
    if size < 1000:
        return f"{size} B"
    value, unit = size / 1000, "kB"
    for bigger in ("MB", "GB", "TB"):
        if value < 999.95:
            break
        value, unit = value / 1000, bigger
    return f"{value:.1f} {unit}"


def when(moment: datetime | None) -> str:
    """A timestamp in UTC to the minute (naive values are UTC already)."""
    if moment is None:
        return "—"
    if moment.tzinfo is not None:
        moment = moment.astimezone(UTC)
    return moment.strftime("%Y-%m-%d %H:%M UTC")


def score(value: float | None) -> str:
    """A quality score with two decimals."""
    return "—" if value is None else f"{value:.2f}"


def short(value: str | None, length: int = 8) -> str:
    """The start of an ID or a hash (shown with the full value in a title)."""
    return "—" if not value else value[:length]


def key(value: str | None) -> Markup:
    """A snake_case key that may wrap after its underscores in a narrow column."""
    return Markup("—") if not value else escape(value).replace("_", Markup("_<wbr>"))


FILTERS = {"file_size": file_size, "when": when, "score": score, "short": short, "key": key,
           "signed": signed}


def install_filters(env: Any) -> None:
    """The pages' formatting filters on the templates' environment."""
    if "file_size" not in env.filters:
        env.filters.update(FILTERS)


def pipeline_of(request: Request) -> Pipeline:
    """The service the app was created with."""
    pipeline: Pipeline = request.app.state.services.pipeline
    return pipeline


# --- Conversations -------------------------------------------------------------------------

VIEW_FIELDS = tuple(queries.ConversationFilter.model_fields)
DEFAULT_VIEW = queries.ConversationFilter()
PAGE_SIZES = (25, 50, 100, 200)


def conversation_view(request: Request) -> queries.ConversationFilter:
    """The Conversations page's view from its URL query (an empty field means "any")."""
    given = {name: value.strip() for name, value in request.query_params.items()
             if name in VIEW_FIELDS and value.strip()}
    try:
        return queries.ConversationFilter.model_validate(given)
    except ValidationError as exc:
        raise RequestValidationError(exc.errors(include_url=False, include_context=False)) from exc


def view_query(view: queries.ConversationFilter) -> dict[str, str]:
    """The URL query of a view, leaving out what is at its default."""
    query = {}
    for name in VIEW_FIELDS:
        value = getattr(view, name)
        if value is None or value == getattr(DEFAULT_VIEW, name):
            continue
        query[name] = ("yes" if value else "no") if isinstance(value, bool) else str(value)
    return query


def conversations_url(view: queries.ConversationFilter, **changes: Any) -> str:
    """The Conversations page for `view` with some fields changed (None clears one)."""
    query = view_query(view.model_copy(update=changes))
    return "/conversations" + (f"?{urlencode(query)}" if query else "")


@router.get("/conversations", response_class=HTMLResponse)
def conversations_page(request: Request, identity: Caller) -> Response:
    """The catalog: filter, sort and page it; select conversations for a training file."""
    pipeline = pipeline_of(request)
    view = conversation_view(request)
    listing = queries.list_conversations(pipeline, view)
    batches = queries.batch_options(pipeline)
    return render(request, "conversations.html", {
        "active": "conversations", "view": view, "listing": listing, "batches": batches,
        "batch_names": {b.id: b.name for b in batches},
        "batch": queries.batch_counts(pipeline, view.batch_id) if view.batch_id else None,
        "choices": queries.catalog_choices(pipeline), "files": queries.list_files(pipeline),
        "in_file": queries.find_file(pipeline, view.file) if view.file else None,
        "link": partial(conversations_url, view), "page_sizes": PAGE_SIZES,
        "max_selection": MAX_CONVERSATIONS_PER_REQUEST,
    }, identity)


# --- Training files ------------------------------------------------------------------------


@router.get("/training-files", response_class=HTMLResponse)
def training_files_page(request: Request, identity: Caller) -> Response:
    """Every training file with its current figures."""
    files = queries.list_files(pipeline_of(request))
    return render(request, "training_files.html", {"active": "files", "files": files}, identity)


def readiness_view(request: Request, pipeline: Pipeline, detail: queries.FileDetail
                   ) -> dict[str, Any] | None:
    """The Readiness section: the report of the version the `report` query parameter names (the
    current version by default), its plots' addresses, or why the report could not be made."""
    if detail.file.current_version is None:
        return None
    raw = request.query_params.get("report", "").strip()
    if raw and not (raw.isdigit() and int(raw) >= 1):
        raise RequestValidationError([{"type": "int_parsing", "loc": ("query", "report"),
                                       "msg": "report must be a version number", "input": raw}])
    version = int(raw) if raw else None
    base = f"/api/files/{detail.file.id}/report"
    query = f"?version={version}" if version else ""
    try:
        report = load_report(pipeline, detail.file.id, version)
    except NotFound:
        raise
    except BrightRunError as exc:
        return {"error": str(exc), "version": version, "json_url": base + query}
    query = f"?version={report.version}"
    return {"report": report, "version": report.version, "json_url": base + query,
            "plots": [(name, title, f"{base}/plots/{name}.png{query}")
                      for name, (title, _) in PLOTS.items()]}


@router.get("/training-files/{ref}", response_class=HTMLResponse)
def training_file_page(request: Request, identity: Caller, ref: str,
                       a: Annotated[int | None, Query(ge=1)] = None,
                       b: Annotated[int | None, Query(ge=1)] = None) -> Response:
    """One training file: its figures, downloads, version history, the changes of its current
    version, a comparison of any two versions (`a` and `b`) and its conversations."""
    pipeline = pipeline_of(request)
    detail = queries.file_detail(pipeline, ref)
    file_id = detail.file.id
    lineage = (queries.version_lineage(pipeline, file_id, None)
               if detail.file.current_version is not None else [])
    batches = {batch.id: batch.name for batch in queries.batch_options(pipeline)}
    # Only the change of approx_tokens: the totals would stream both JSONLs on every visit.
    current = pipeline.db.get_version(file_id) if detail.file.current_version else None
    changes = (diff_from_previous(pipeline, current, token_totals=False)
               if current is not None and current.version > 1 else None)
    compared = (diff_versions(pipeline, file_id, a, b, token_totals=False)
                if a is not None and b is not None else None)
    return render(request, "training_file.html", {
        "active": "files", "detail": detail, "file": detail.file, "lineage": lineage,
        "readiness": readiness_view(request, pipeline, detail),
        "batch_names": batches, "outputs": OUTPUTS,
        "in_conversations": conversations_url(DEFAULT_VIEW, file=file_id),
        "changes": changes, "compared": compared,
        "compare_a": a or (changes.version_a if changes else None),
        "compare_b": b or detail.file.current_version,
    }, identity)
