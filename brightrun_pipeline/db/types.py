"""Column types storing UUIDs, timestamps and JSON natively on PostgreSQL and as text on SQLite."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

import orjson
from sqlalchemy import String, Text
from sqlalchemy.dialects import postgresql
from sqlalchemy.engine import Dialect
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.functions import FunctionElement
from sqlalchemy.types import TypeDecorator, TypeEngine


def as_utc(value: datetime) -> datetime:
    """The same instant as a timezone-aware UTC datetime (naive values are taken as UTC)."""
    if value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value.astimezone(UTC)


def parse_timestamp(value: str | datetime) -> datetime:
    """Parse an ISO-8601 timestamp written by any SQL client into an aware UTC datetime."""
    if isinstance(value, datetime):
        return as_utc(value)
    return as_utc(datetime.fromisoformat(value.strip()))


class ForeignText(TypeDecorator[str]):
    """Text written by another application, read back as str whatever its native type there
    (e.g. `created_by` as a PostgreSQL uuid)."""

    impl = Text
    cache_ok = True

    def process_result_value(self, value: Any, dialect: Dialect) -> str | None:
        return None if value is None else str(value)


class UUIDText(TypeDecorator[str]):
    """A UUID: native on PostgreSQL, canonical 36-character lowercase text on SQLite."""

    impl = String(36)
    cache_ok = True

    def load_dialect_impl(self, dialect: Dialect) -> TypeEngine[Any]:
        if dialect.name == "postgresql":
            return dialect.type_descriptor(postgresql.UUID(as_uuid=False))
        return dialect.type_descriptor(String(36))

    def process_bind_param(self, value: Any, dialect: Dialect) -> str | None:
        if value is None:
            return None
        return str(uuid.UUID(str(value)))

    def process_result_value(self, value: Any, dialect: Dialect) -> str | None:
        if value is None:
            return None
        return str(value).lower()


class Timestamp(TypeDecorator[datetime]):
    """A point in time: timestamptz on PostgreSQL, ISO-8601 text on SQLite."""

    impl = String(40)
    cache_ok = True

    def load_dialect_impl(self, dialect: Dialect) -> TypeEngine[Any]:
        if dialect.name == "postgresql":
            return dialect.type_descriptor(postgresql.TIMESTAMP(timezone=True))
        return dialect.type_descriptor(String(40))

    def process_bind_param(self, value: Any, dialect: Dialect) -> Any:
        if value is None:
            return None
        moment = parse_timestamp(value)
        if dialect.name == "postgresql":
            return moment
        return moment.isoformat(timespec="microseconds")

    def process_result_value(self, value: Any, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return parse_timestamp(value)


class JSONDocument(TypeDecorator[Any]):
    """A JSON value: jsonb on PostgreSQL, JSON text on SQLite.

    With `keep_key_order`, PostgreSQL stores json instead: jsonb reorders object keys, and a
    document that is written back out byte for byte must keep its source's order.
    """

    impl = Text
    cache_ok = True

    def __init__(self, keep_key_order: bool = False) -> None:
        super().__init__()
        self.keep_key_order = keep_key_order

    def load_dialect_impl(self, dialect: Dialect) -> TypeEngine[Any]:
        if dialect.name == "postgresql":
            native = postgresql.JSON() if self.keep_key_order else postgresql.JSONB()
            return dialect.type_descriptor(native)
        return dialect.type_descriptor(Text())

    def process_bind_param(self, value: Any, dialect: Dialect) -> Any:
        if value is None or dialect.name == "postgresql":
            return value
        return orjson.dumps(value).decode()

    def process_result_value(self, value: Any, dialect: Dialect) -> Any:
        if value is None or dialect.name == "postgresql":
            return value
        if isinstance(value, bytes | str):
            try:
                return orjson.loads(value)
            except orjson.JSONDecodeError:
                # Rows written by other applications may hold malformed JSON; the caller reports it.
                return value
        return value


class utc_now(FunctionElement[datetime]):  # noqa: N801 - reads like the SQL function it renders
    """The current time as a column default: timestamptz on PostgreSQL, ISO-8601 text on SQLite."""

    type = Timestamp()
    inherit_cache = True


@compiles(utc_now)
def _utc_now_default(element: utc_now, compiler: Any, **kw: Any) -> str:
    return "CURRENT_TIMESTAMP"


@compiles(utc_now, "sqlite")
def _utc_now_sqlite(element: utc_now, compiler: Any, **kw: Any) -> str:
    # Same text form as the values the pipeline writes, so rows sort and compare alike.
    return "(strftime('%Y-%m-%dT%H:%M:%f000+00:00', 'now'))"
