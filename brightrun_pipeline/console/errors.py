"""One JSON error shape for the API, one error page for the pages, and the HTTP status of each
domain error."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, RedirectResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from brightrun_pipeline.errors import (
    BrightRunError,
    Conflict,
    Forbidden,
    NotFound,
    RequestOutcomeError,
    RequestRejected,
    UsageError,
)


class Unauthorized(BrightRunError):
    """The request proves no user."""


class CsrfRejected(BrightRunError):
    """A browser form without the page's CSRF token."""


class PayloadTooLarge(BrightRunError):
    """The request body is larger than the console accepts."""


class ServerFault(BrightRunError):
    """Something the server holds is broken (e.g. a published object is missing from storage):
    not the caller's doing."""


STATUSES: tuple[tuple[type[BaseException], int], ...] = (
    (Unauthorized, 401),
    (CsrfRejected, 403),
    (Forbidden, 403),
    (NotFound, 404),
    (Conflict, 409),
    (PayloadTooLarge, 413),
    (ServerFault, 500),
    (RequestRejected, 422),
    (UsageError, 400),
    (RequestOutcomeError, 409),
    (BrightRunError, 400),
)


def status_of(error: BaseException) -> int:
    """The HTTP status a domain error maps to."""
    for kind, status in STATUSES:
        if isinstance(error, kind):
            return status
    return 500


def error_body(message: str, conversations: dict[str, str] | None = None) -> dict[str, Any]:
    """The console's one error shape."""
    return {"error": {"message": message, "conversations": dict(conversations or {})}}


def _wants_page(request: Request) -> bool:
    return not request.url.path.startswith("/api/")


def _respond(request: Request, status: int, message: str,
             conversations: dict[str, str] | None = None) -> Response:
    if _wants_page(request):
        if status == 401:
            return RedirectResponse(f"/sign-in?next={request.url.path}", status_code=303)
        templates = request.app.state.templates
        return templates.TemplateResponse(
            request, "error.html", {"status": status, "message": message,
                                    "conversations": conversations or {}}, status_code=status)
    headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
    return JSONResponse(error_body(message, conversations), status_code=status, headers=headers)


def install_error_handlers(app: FastAPI) -> None:
    """Map domain errors, validation errors and HTTP errors to the console's responses."""

    @app.exception_handler(BrightRunError)
    async def domain_error(request: Request, exc: BrightRunError) -> Response:
        return _respond(request, status_of(exc), getattr(exc, "message", None) or str(exc),
                        getattr(exc, "conversations", None))

    @app.exception_handler(RequestValidationError)
    async def invalid_input(request: Request, exc: RequestValidationError) -> Response:
        problems = []
        for error in exc.errors():
            where = ".".join(str(part) for part in error.get("loc", ()) if part != "body")
            problems.append(f"{where}: {error.get('msg')}" if where else str(error.get("msg")))
        return _respond(request, 422, "invalid input: " + "; ".join(problems))

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> Response:
        # Starlette raises the error again once this answer is sent, so the server logs it with
        # its traceback; the caller gets the one shape and no internals.
        return _respond(request, 500, "the console failed to answer this request; the "
                                      "server's log has the details")

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> Response:
        message = exc.detail if isinstance(exc.detail, str) else "error"
        if exc.status_code == 404:
            message = f"nothing at {request.url.path}"
        elif exc.status_code == 405:
            message = f"{request.method} is not allowed on {request.url.path}"
        return _respond(request, exc.status_code, message)
