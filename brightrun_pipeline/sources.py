"""Fetching and reading enriched conversation files: bounded concurrency, per-fetch retries
(the retry layer of source GETs; see brightrun_pipeline.retry)."""

from __future__ import annotations

import hashlib
from collections import deque
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import orjson
from pydantic import ValidationError

from brightrun_pipeline.config import RetrySettings
from brightrun_pipeline.errors import (
    InvalidKey,
    ObjectNotFound,
    SourceError,
    TransientStorageError,
)
from brightrun_pipeline.models import EnrichedConversationFile
from brightrun_pipeline.retry import call_with_retry
from brightrun_pipeline.storage import ObjectStore


@dataclass(frozen=True)
class FetchedSource:
    """The bytes of one source file, or why they could not be had."""

    conversation_id: str
    key: str
    data: bytes | None
    error: BaseException | None
    # sha256 of `data` (None with it), computed where it was fetched.
    sha256: str | None
    # GETs it took: 1, plus one per transient failure retried.
    attempts: int = 1


def fetch_sources(
    store: ObjectStore,
    bucket: str,
    wanted: Sequence[tuple[str, str]],
    *,
    concurrency: int,
    retry: RetrySettings,
) -> Iterator[FetchedSource]:
    """Fetch (conversation_id, key) pairs in order, at most `concurrency` at a time.

    Results come back in request order; only a bounded window of them is held at once, so memory
    depends on the concurrency, not on how many sources are fetched. Each GET is retried here,
    so `store` must not retry by itself (not a RetryingStore).
    """

    def fetch_one(conversation_id: str, key: str) -> FetchedSource:
        attempts = 1

        def count_retry() -> None:
            nonlocal attempts
            attempts += 1

        try:
            data = call_with_retry(lambda: store.get_bytes(bucket, key), retry,
                                   on_retry=count_retry)
        # A path the store refuses (e.g. '..' in enriched_file_path) is this source's problem.
        except (ObjectNotFound, TransientStorageError, InvalidKey) as exc:
            return FetchedSource(conversation_id, key, None, exc, None, attempts)
        return FetchedSource(conversation_id, key, data, None, hashlib.sha256(data).hexdigest(),
                             attempts)

    concurrency = min(concurrency, store.max_useful_concurrency or concurrency)
    if concurrency <= 1:
        # One at a time: in the caller's thread, with no hand-over between threads.
        for conversation_id, key in wanted:
            yield fetch_one(conversation_id, key)
        return
    window = max(1, concurrency) * 2
    with ThreadPoolExecutor(max_workers=max(1, concurrency),
                            thread_name_prefix="brightrun-fetch") as pool:
        pending: deque[Future[FetchedSource]] = deque()
        items = iter(wanted)
        try:
            for conversation_id, key in items:
                pending.append(pool.submit(fetch_one, conversation_id, key))
                if len(pending) >= window:
                    yield pending.popleft().result()
            while pending:
                yield pending.popleft().result()
        finally:
            for future in pending:
                future.cancel()


@dataclass(frozen=True)
class ParsedSource:
    """A validated enriched file: its raw document (for exact copies) and its hash."""

    conversation_id: str
    key: str
    sha256: str
    document: dict[str, Any]


def parse_source(fetched: FetchedSource) -> ParsedSource:
    """Check a fetched source is an enriched conversation file; name the conversation if not."""
    cid = fetched.conversation_id
    if fetched.error is not None:
        if isinstance(fetched.error, ObjectNotFound):
            raise SourceError(cid, f"enriched file {fetched.key!r} is missing")
        raise SourceError(cid, f"enriched file {fetched.key!r} could not be read: {fetched.error}")
    assert fetched.data is not None
    try:
        document = orjson.loads(fetched.data)
    except orjson.JSONDecodeError as exc:
        raise SourceError(cid, f"enriched file {fetched.key!r} is not valid JSON ({exc})") from exc
    if not isinstance(document, dict):
        raise SourceError(cid, f"enriched file {fetched.key!r} is not a JSON object")
    try:
        EnrichedConversationFile.model_validate(document)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first["loc"]) or "(top level)"
        raise SourceError(
            cid,
            f"enriched file {fetched.key!r} does not match the enriched format: "
            f"{where}: {first['msg']} ({exc.error_count()} problem(s))",
        ) from exc
    assert fetched.sha256 is not None
    return ParsedSource(cid, fetched.key, fetched.sha256, document)
