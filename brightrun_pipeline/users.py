"""Console users and their API tokens: a token is shown once; only its SHA-256 is kept."""

from __future__ import annotations

import hashlib
import hmac
import secrets
import uuid
from datetime import UTC, datetime

from brightrun_pipeline.db.repository import Database, TrainingFileRecord, UserRecord
from brightrun_pipeline.errors import UsageError
from brightrun_pipeline.rules import MAX_NAME_LENGTH

TOKEN_PREFIX = "brt_"


def token_hash(token: str) -> str:
    """The stored form of a token. Tokens carry 256 random bits, so a plain SHA-256 cannot be
    reversed by guessing (unlike a password, no slow hash is needed)."""
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def add_user(db: Database, name: str, *, admin: bool = False) -> tuple[UserRecord, str]:
    """Create a user and return it with its token (the only time the token exists in clear)."""
    clean = name.strip()
    if not clean or len(clean) > MAX_NAME_LENGTH or not clean.isprintable():
        raise UsageError(f"a user name has 1 to {MAX_NAME_LENGTH} printable characters, "
                         f"got {name!r}")
    token = TOKEN_PREFIX + secrets.token_urlsafe(32)
    user = UserRecord(id=str(uuid.uuid4()), name=clean, is_admin=admin,
                      created_at=datetime.now(UTC))
    if not db.add_user(user, token_hash(token)):
        raise UsageError(f"a user named {clean!r} already exists")
    return user, token


def authenticate(db: Database, token: str | None) -> UserRecord | None:
    """The user a token belongs to, or None."""
    if not token or not token.startswith(TOKEN_PREFIX) or len(token) > 200:
        return None
    wanted = token_hash(token)
    found = db.user_by_token_hash(wanted)
    if found is None:
        return None
    user, stored = found
    # The lookup is by hash; comparing again in constant time keeps timing independent of how
    # much of the stored hash a guess matched.
    return user if hmac.compare_digest(stored, wanted) else None


def may_add_to(user: UserRecord, file: TrainingFileRecord) -> bool:
    """Only a file's creator or an admin may add conversations to it."""
    return user.is_admin or (file.created_by is not None and file.created_by == user.name)
