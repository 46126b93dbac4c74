"""Who is asking: a user's API token (Bearer header or the sign-in cookie), or the one local user
of a console bound to loopback with no users defined; and CSRF protection for forms."""

from __future__ import annotations

import getpass
import hmac
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Literal

from fastapi import Request

from brightrun_pipeline.console.errors import CsrfRejected, Unauthorized
from brightrun_pipeline.db.repository import Database, UserRecord
from brightrun_pipeline.users import authenticate

SESSION_COOKIE = "brightrun_token"
CSRF_COOKIE = "brightrun_csrf"
CSRF_HEADER = "X-CSRF-Token"
CSRF_FIELD = "csrf_token"


@dataclass(frozen=True)
class Identity:
    """A signed-in user and how the request proved it."""

    user: UserRecord
    via: Literal["bearer", "cookie", "open"]


class Access:
    """Decides who a request comes from."""

    def __init__(self, db: Database, *, loopback: bool) -> None:
        self.db = db
        self.loopback = loopback

    def open_access(self) -> bool:
        """Open to the local user: bound to loopback and no user defined (checked per request,
        so adding the first user closes a running console at once)."""
        return self.loopback and self.db.count_users() == 0

    def identify(self, request: Request) -> Identity | None:
        """The identity a request proves, or None."""
        header = request.headers.get("authorization")
        if header is not None:
            scheme, _, token = header.partition(" ")
            if scheme.lower() != "bearer":
                return None
            user = authenticate(self.db, token.strip())
            return Identity(user, "bearer") if user else None
        token = request.cookies.get(SESSION_COOKIE)
        if token:
            user = authenticate(self.db, token)
            if user is not None:
                return Identity(user, "cookie")
        if self.open_access():
            return Identity(local_user(), "open")
        return None


def local_user() -> UserRecord:
    """The one user of an open console: whoever runs it, with every right."""
    try:
        name = getpass.getuser()
    except (KeyError, OSError):
        name = "local"
    return UserRecord(id="local", name=name, is_admin=True,
                      created_at=datetime.fromtimestamp(0, UTC))


def require_identity(request: Request) -> Identity:
    """The caller's identity, or 401."""
    identity: Identity | None = request.app.state.access.identify(request)
    if identity is None:
        raise Unauthorized("sign in first: send `Authorization: Bearer <token>` or use the "
                           "sign-in page")
    return identity


def csrf_token(request: Request) -> str:
    """The CSRF token of this browser (from its cookie), or a new one the response must set."""
    return request.cookies.get(CSRF_COOKIE) or secrets.token_urlsafe(32)


def check_csrf(request: Request, identity: Identity | None, submitted: str | None) -> None:
    """Refuse a state-changing request from a browser (cookie or open access) unless it carries
    the CSRF token of its cookie. Bearer requests carry no ambient credential: nothing to forge."""
    if identity is not None and identity.via == "bearer":
        return
    expected = request.cookies.get(CSRF_COOKIE)
    if not expected or not submitted or not hmac.compare_digest(expected, submitted):
        raise CsrfRejected("the form's CSRF token is missing or wrong; reload the page and "
                           "try again")
