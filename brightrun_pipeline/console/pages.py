"""The console's pages: server-rendered from the same read models as the API and the CLI."""

from __future__ import annotations

from typing import Annotated, Any
from urllib.parse import urlsplit

from fastapi import APIRouter, Depends, Form, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from brightrun_pipeline.console.auth import (
    CSRF_COOKIE,
    CSRF_FIELD,
    SESSION_COOKIE,
    Identity,
    check_csrf,
    csrf_token,
    require_identity,
)
from brightrun_pipeline.users import authenticate

router = APIRouter(include_in_schema=False)
Caller = Annotated[Identity, Depends(require_identity)]


def render(request: Request, template: str, context: dict[str, Any],
           identity: Identity | None = None, status_code: int = 200) -> Response:
    """A page with the layout's context (who is signed in, the CSRF token) and the CSRF cookie."""
    token = csrf_token(request)
    response = request.app.state.templates.TemplateResponse(
        request, template, {"identity": identity, "csrf_token": token, **context},
        status_code=status_code)
    if request.cookies.get(CSRF_COOKIE) != token:
        response.set_cookie(CSRF_COOKIE, token, httponly=True, samesite="strict",
                            secure=request.url.scheme == "https", path="/")
    return response


def _safe_next(target: str | None) -> str:
    # Only a path on this site: never an absolute URL an attacker could plant in the link.
    if not target or not target.startswith("/") or target.startswith("//"):
        return "/conversations"
    parts = urlsplit(target)
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
