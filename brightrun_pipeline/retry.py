"""The one retry layer for storage calls: transient errors are retried with exponential backoff
and full jitter (RetrySettings), permanent ones pass through at once, and retries are counted.

The S3 client does not retry on its own (its retries are turned off), so every storage call a
build makes is tried at most `RetrySettings.attempts` times: source fetches by `fetch_sources`,
and the writes of a version and the reads of the previous one by a `RetryingStore`.
"""

from __future__ import annotations

import contextlib
import io
import random
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, BinaryIO, TypeVar

from brightrun_pipeline.config import RetrySettings
from brightrun_pipeline.errors import TransientStorageError
from brightrun_pipeline.storage import CHUNK_SIZE, ObjectInfo, ObjectStore

T = TypeVar("T")


def backoff_delay(attempt: int, retry: RetrySettings, rng: Callable[[], float]) -> float:
    """Full-jitter exponential backoff: a random delay up to base * 2^attempt, capped."""
    ceiling = min(retry.max_delay, retry.base_delay * (2 ** attempt))
    return ceiling * rng()


def call_with_retry(
    call: Callable[[], T],
    retry: RetrySettings,
    *,
    on_retry: Callable[[], None] = lambda: None,
    sleep: Callable[[float], None] = time.sleep,
    rng: Callable[[], float] = random.random,
) -> T:
    """Call `call`, retrying transient storage errors with backoff; permanent ones pass through.

    `on_retry` is told of every retry, before its backoff.
    """
    for attempt in range(retry.attempts):
        try:
            return call()
        except TransientStorageError:
            if attempt + 1 >= retry.attempts:
                raise
            on_retry()
            sleep(backoff_delay(attempt, retry, rng))
    raise AssertionError("unreachable")


class RetryCount:
    """Retries made so far, counted from any thread."""

    def __init__(self) -> None:
        self._count = 0
        self._lock = threading.Lock()

    def add(self) -> None:
        """Count one retry."""
        with self._lock:
            self._count += 1

    @property
    def value(self) -> int:
        """Retries counted."""
        with self._lock:
            return self._count


class RetryingStore(ObjectStore):
    """Another store whose calls are retried on transient errors, and counted.

    This is the retry layer of the calls made through it: give it a store that does not retry
    by itself (an S3 client with its retries off). A streaming read that breaks mid-way resumes
    where it stopped; a write that fails is tried again whole (a multipart upload is aborted
    first), and a retried write-once put whose earlier attempt landed finds the same bytes there.
    """

    def __init__(self, inner: ObjectStore, retry: RetrySettings) -> None:
        self.inner = inner
        self.retry = retry
        self.retries = RetryCount()
        self.max_useful_concurrency = inner.max_useful_concurrency
        self.syncs_files = inner.syncs_files

    def _call(self, call: Callable[[], T]) -> T:
        return call_with_retry(call, self.retry, on_retry=self.retries.add)

    def ensure_bucket(self, bucket: str) -> None:
        """Create the bucket unless it already exists."""
        self._call(lambda: self.inner.ensure_bucket(bucket))

    def get_bytes(self, bucket: str, key: str) -> bytes:
        """Return the whole object; ObjectNotFound if it is missing."""
        return self._call(lambda: self.inner.get_bytes(bucket, key))

    @contextlib.contextmanager
    def open_read(self, bucket: str, key: str, *, start: int = 0) -> Iterator[BinaryIO]:
        """Open the object for streaming reads that resume where they broke off."""
        raw = _ResumingReader(self, bucket, key, start)
        try:
            raw.reopen()
        except BaseException:
            raw.close()
            raise
        with io.BufferedReader(raw, CHUNK_SIZE) as stream:
            yield stream

    def stat(self, bucket: str, key: str) -> ObjectInfo | None:
        """Return the object's size, or None if it is missing."""
        return self._call(lambda: self.inner.stat(bucket, key))

    def put_file(self, bucket: str, key: str, path: Path, *, replace: bool = False) -> None:
        """Store a file under key once (see put_bytes); on success the file at path is gone."""
        self._call(lambda: self.inner.put_file(bucket, key, path, replace=replace))

    def put_bytes(self, bucket: str, key: str, data: bytes, *, replace: bool = False) -> None:
        """Store bytes once: same bytes already there is a no-op, other bytes raise ObjectExists."""
        self._call(lambda: self.inner.put_bytes(bucket, key, data, replace=replace))

    def delete(self, bucket: str, key: str) -> None:
        """Remove the object if it exists."""
        self._call(lambda: self.inner.delete(bucket, key))

    def list_keys(self, bucket: str, prefix: str = "") -> Iterator[str]:
        """Yield the bucket's keys that start with prefix, in sorted order.

        A listing is retried whole, so it is read in full before the first key is yielded.
        """
        yield from self._call(lambda: list(self.inner.list_keys(bucket, prefix)))

    def local_path(self, bucket: str, key: str) -> Path | None:
        """Return the object's filesystem path, or None when the store has no filesystem."""
        return self.inner.local_path(bucket, key)

    def scratch_dir(self, bucket: str) -> Path:
        """Return a directory for temp files that put_file into this bucket can take cheaply."""
        return self.inner.scratch_dir(bucket)

    def download_url(self, bucket: str, key: str, *, file_name: str,
                     expires_in: int) -> str | None:
        """The wrapped store's download URL (signing makes no request: nothing to retry)."""
        return self.inner.download_url(bucket, key, file_name=file_name, expires_in=expires_in)


class _ResumingReader(io.RawIOBase):
    """An object read front to back; a transient failure re-opens it at the byte it stopped at.

    Each read has the retry policy's attempts of its own: a long read that keeps making
    progress is not failed by faults spread over its length.
    """

    def __init__(self, store: RetryingStore, bucket: str, key: str, start: int) -> None:
        self._store = store
        self._bucket = bucket
        self._key = key
        self._position = start
        self._opened: contextlib.ExitStack | None = None
        self._stream: BinaryIO | None = None

    def readable(self) -> bool:
        return True

    def reopen(self) -> None:
        """Open the object at the current position (retried)."""
        self._store._call(self._open)

    def _open(self) -> None:
        self._drop()
        opened = contextlib.ExitStack()
        self._stream = opened.enter_context(
            self._store.inner.open_read(self._bucket, self._key, start=self._position))
        self._opened = opened

    def _drop(self) -> None:
        opened, self._opened, self._stream = self._opened, None, None
        if opened is not None:
            with contextlib.suppress(Exception):
                opened.close()

    def _read_once(self, buffer: Any) -> int:
        if self._stream is None:
            self._open()
        assert self._stream is not None
        try:
            count = self._stream.readinto(buffer)  # type: ignore[attr-defined]
        except TransientStorageError:
            self._drop()
            raise
        self._position += count
        return count

    def readinto(self, buffer: Any) -> int:
        return self._store._call(lambda: self._read_once(buffer))

    def close(self) -> None:
        if not self.closed:
            self._drop()
        super().close()
