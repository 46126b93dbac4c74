"""Streaming byte plumbing shared by the builder, the outputs and their checks: writers that
hash as they write (on a helper thread), spool files, readers that check a previous object's
hash, and the splitting of a training.json body into conversation blocks and of a JSONL into
per-conversation runs of lines."""

from __future__ import annotations

import bisect
import ctypes
import hashlib
import io
import os
import re
import sys
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import IO, Any, BinaryIO

import orjson

from brightrun_pipeline.errors import ProcessingFailed
from brightrun_pipeline.models import ManifestObject

CHUNK = 4 << 20
BACKGROUND_HASH_MIN = 256 << 10
# Chunks a HashingWriter may have in flight on its helper thread.
WRITE_BEHIND = 2
# Size of one spool segment file.
SEGMENT = 32 << 20
# A durable writer asks the OS to start writing to disk after every WRITEBACK bytes.
WRITEBACK = 32 << 20
BLOCK_START = b"    {\n"
BODY_OPEN = b',\n  "conversations": [\n'
BODY_CLOSE = b"\n  ]\n}"
BLOCK_SEPARATOR = b",\n"
_CONVERSATION_ID = re.compile(rb'"conversation_id": "([0-9a-f-]{36})"')


class _BackgroundHash:
    """sha256 whose large updates run on a helper thread (hashlib releases the GIL), so hashing
    overlaps with the file I/O of the thread that feeds it. Updates stay in order."""

    _pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="brightrun-hash")

    def __init__(self) -> None:
        self._hash = hashlib.sha256()
        self._pending: Future[None] | None = None

    def update(self, data: bytes) -> None:
        """Add bytes (never mutated afterwards) to the hash."""
        if self._pending is not None:
            self._pending.result()
            self._pending = None
        if len(data) >= BACKGROUND_HASH_MIN:
            self._pending = self._pool.submit(self._hash.update, data)
        else:
            self._hash.update(data)

    def snapshot(self) -> hashlib._Hash:
        """A copy of the hash state once every update so far is applied."""
        if self._pending is not None:
            self._pending.result()
            self._pending = None
        return self._hash.copy()

    def hexdigest(self) -> str:
        """The digest of everything added so far."""
        return self.snapshot().hexdigest()


def _load_sync_file_range() -> Callable[[int, int, int, int], int] | None:
    """Linux's sync_file_range(2), which starts writing a file range to disk without waiting."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        function = ctypes.CDLL(None, use_errno=True).sync_file_range
    except (OSError, AttributeError):
        return None
    function.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
    function.restype = ctypes.c_int
    return function


_SYNC_FILE_RANGE = _load_sync_file_range()
_SYNC_FILE_RANGE_WRITE = 2


class HashingWriter:
    """A binary file writer that hashes (optionally) and counts what it writes.

    Writes are gathered into chunks of about CHUNK bytes; a helper thread hashes and writes each
    chunk in order (hashlib and file writes release the GIL), so the caller's parsing and
    serialization overlap with hashing and I/O. At most `in_flight` chunks (WRITE_BEHIND unless
    told) are in flight, so memory stays bounded. Use it as a context manager, inside the one
    that closes `raw`.

    A `durable` writer also starts writing its file to disk as it goes (every WRITEBACK bytes,
    where the OS allows it) and can fsync in the background (`sync`), so that making the file
    durable at publication does not wait for all of it at the end.
    """

    def __init__(self, raw: IO[bytes] | SpoolFiles, *, hashed: bool = True,
                 durable: bool = False, in_flight: int = WRITE_BEHIND) -> None:
        self.raw = raw
        self._in_flight = in_flight
        self._hash = hashlib.sha256() if hashed else None
        self.size = 0
        self._buffer: list[bytes] = []
        self._buffered = 0
        self._pending: deque[Future[None]] = deque()
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="brightrun-write")
        assert not (durable and isinstance(raw, SpoolFiles)), "a spool is never made durable"
        self._durable = durable
        self._written = 0
        self._written_back = 0

    def __enter__(self) -> HashingWriter:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._thread.shutdown(wait=True)

    def write(self, data: bytes) -> None:
        """Write bytes (never mutated afterwards), updating hash and size."""
        self.size += len(data)
        self._buffer.append(data)
        self._buffered += len(data)
        if self._buffered >= CHUNK:
            self._submit()

    def _submit(self) -> None:
        if not self._buffer:
            return
        data = self._buffer[0] if len(self._buffer) == 1 else b"".join(self._buffer)
        self._buffer = []
        self._buffered = 0
        while len(self._pending) >= self._in_flight:
            self._pending.popleft().result()
        self._pending.append(self._thread.submit(self._put, data))

    def _put(self, data: bytes) -> None:
        if self._hash is not None:
            self._hash.update(data)
        self.raw.write(data)
        self._written += len(data)
        if self._durable and self._written - self._written_back >= WRITEBACK:
            self._start_writeback()

    def _start_writeback(self) -> None:
        """Ask the OS to start writing what was written since the last call (no waiting).

        Only a head start: its result is not checked, the fsync at publication decides."""
        if _SYNC_FILE_RANGE is None:
            return
        assert not isinstance(self.raw, SpoolFiles)
        self.raw.flush()
        _SYNC_FILE_RANGE(self.raw.fileno(), self._written_back,
                         self._written - self._written_back, _SYNC_FILE_RANGE_WRITE)
        self._written_back = self._written

    def _fsync(self) -> None:
        assert not isinstance(self.raw, SpoolFiles)
        self.raw.flush()
        os.fsync(self.raw.fileno())

    def sync(self) -> None:
        """Once everything written so far is in the file, fsync it on the helper thread (the
        caller goes on; `flush` and `result` wait for it). No-op unless `durable`."""
        if not self._durable:
            return
        self._submit()
        self._pending.append(self._thread.submit(self._fsync))

    def flush(self) -> None:
        """Wait until everything written so far is hashed and handed to the file."""
        self._submit()
        while self._pending:
            self._pending.popleft().result()
        self.raw.flush()

    def hexdigest(self) -> str:
        """The sha256 of everything written so far."""
        assert self._hash is not None, "this writer does not hash"
        self.flush()
        return self._hash.hexdigest()

    def result(self, key: str) -> ManifestObject:
        """The key, sha256 and size of what was written."""
        return ManifestObject(key=key, sha256=self.hexdigest(), size=self.size)


class SpoolFiles:
    """The raw side of a spool: bytes appended in order to segment files of about SEGMENT bytes.

    Reading back in order (`drain`) deletes each segment as soon as it is copied, so the
    page-cache memory it held is reused by the writes that follow instead of new memory.
    """

    def __init__(self, directory: Path, name: str = "spool") -> None:
        self.directory = directory
        self.name = name
        self._segments: list[Path] = []
        self._starts: list[int] = []  # offset of each segment's first byte
        self._current: IO[bytes] | None = None
        self._written = 0
        self._segment_start = 0

    def write(self, data: bytes) -> None:
        """Append bytes (called in order, from one thread at a time)."""
        if self._current is None or self._written - self._segment_start >= SEGMENT:
            self._close_current()
            path = self.directory / f"{self.name}-{len(self._segments):05d}"
            self._current = open(path, "wb")  # noqa: SIM115 - closed by _close_current/close
            self._segments.append(path)
            self._starts.append(self._written)
            self._segment_start = self._written
        self._current.write(data)
        self._written += len(data)

    def flush(self) -> None:
        """Hand buffered bytes to the files, so that they can be read."""
        if self._current is not None:
            self._current.flush()

    def _close_current(self) -> None:
        if self._current is not None:
            self._current.close()
            self._current = None

    def close(self) -> None:
        """Close the open segment (the files go with the build's work directory)."""
        self._close_current()

    def read(self, offset: int, length: int) -> bytes:
        """`length` bytes from `offset` (the segments are still all there)."""
        index = bisect.bisect_right(self._starts, offset) - 1
        parts = []
        while length > 0:
            with open(self._segments[index], "rb") as segment:
                segment.seek(offset - self._starts[index])
                part = segment.read(length)
            parts.append(part)
            offset += len(part)
            length -= len(part)
            index += 1
        return b"".join(parts)

    def drain(self, out: HashingWriter) -> None:
        """Copy everything to `out` in order, deleting each segment once it is read."""
        self._close_current()
        for path in self._segments:
            with open(path, "rb") as segment:
                while chunk := segment.read(CHUNK):
                    out.write(chunk)
            path.unlink()
        self._segments.clear()
        self._starts.clear()


class VerifyingReader:
    """Reads a previous object front to back and checks its hash once it has been read whole."""

    def __init__(self, raw: BinaryIO, *, expected_sha256: str, expected_size: int, label: str):
        self.raw = raw
        self.hash = _BackgroundHash()
        self.size = 0
        self.expected_sha256 = expected_sha256
        self.expected_size = expected_size
        self.label = label

    def read(self, n: int = -1) -> bytes:
        """Read and hash up to n bytes."""
        data = self.raw.read(n)
        self.hash.update(data)
        self.size += len(data)
        return data

    def copy_to(self, out: HashingWriter, length: int) -> None:
        """Copy exactly `length` bytes to `out`."""
        remaining = length
        while remaining > 0:
            data = self.read(min(CHUNK, remaining))
            if not data:
                raise ProcessingFailed(f"{self.label} ends early")
            out.write(data)
            remaining -= len(data)

    def skip(self, length: int) -> None:
        """Read (and hash) `length` bytes without copying them."""
        remaining = length
        while remaining > 0:
            data = self.read(min(CHUNK, remaining))
            if not data:
                raise ProcessingFailed(f"{self.label} ends early")
            remaining -= len(data)

    def finish(self) -> None:
        """Read the rest and fail if the object is not the one the database recorded."""
        while self.read(CHUNK):
            pass
        if self.size != self.expected_size or self.hash.hexdigest() != self.expected_sha256:
            raise ProcessingFailed(
                f"{self.label} does not match its recorded sha256/size; refusing to build on it")



def copy_verified_prefix(raw: BinaryIO, out: HashingWriter, expected_sha256: str,
                         expected_size: int, label: str) -> None:
    """Copy a whole previous object to the start of `out`, checking it against its recorded hash.

    The output's running hash after the copy is the previous object's hash, so the check costs
    no second pass over the bytes.
    """
    assert out.size == 0
    while chunk := raw.read(CHUNK):
        out.write(chunk)
    if out.size != expected_size or out.hexdigest() != expected_sha256:
        raise ProcessingFailed(
            f"{label} does not match its recorded sha256/size; refusing to build on it")


_ITEM_HEAD = len(b'{\n  "a": [\n')
_ITEM_TAIL = len(b"\n  ]\n}")


def array_item(document: Any) -> bytes:
    """`document` as an item of an array held by a top-level key: 2-space indentation, nested
    two levels deep (cut out of a one-item wrapper, so orjson does the indenting)."""
    return orjson.dumps({"a": [document]}, option=orjson.OPT_INDENT_2)[_ITEM_HEAD:-_ITEM_TAIL]


def iter_blocks(reader: VerifyingReader, length: int) -> Iterator[tuple[str, bytes]]:
    """Split the previous body (`length` bytes) into (conversation_id, block) pairs.

    Blocks are written by this module, so each starts with a line of exactly four spaces and `{`.
    """
    buffered = io.BufferedReader(_LimitedRaw(reader, length), buffer_size=CHUNK)
    block: list[bytes] = []
    for line in buffered:
        if line == BLOCK_START and block:
            yield _finish_block(block)
            block = []
        block.append(line)
    if block:
        yield _finish_block(block)


def _finish_block(lines: list[bytes]) -> tuple[str, bytes]:
    data = b"".join(lines)
    if data.endswith(BLOCK_SEPARATOR):
        data = data[: -len(BLOCK_SEPARATOR)]
    match = _CONVERSATION_ID.search(data, 0, 400)
    if match is None:
        raise ProcessingFailed("previous training.json has a conversation block without an id")
    return match.group(1).decode(), data


class _LimitedRaw(io.RawIOBase):
    """A raw stream over the next `length` bytes of a VerifyingReader."""

    def __init__(self, reader: VerifyingReader, length: int) -> None:
        self.reader = reader
        self.remaining = length

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        if self.remaining <= 0:
            return 0
        data = self.reader.read(min(len(buffer), self.remaining))
        buffer[: len(data)] = data
        self.remaining -= len(data)
        return len(data)


def iter_line_groups(reader: VerifyingReader) -> Iterator[tuple[str, bytes]]:
    """Group the previous JSONL into (conversation_id, lines) runs; a line's id starts with its
    conversation id."""
    buffered = io.BufferedReader(_LimitedRaw(reader, reader.expected_size), buffer_size=CHUNK)
    current: str | None = None
    group: list[bytes] = []
    for line in buffered:
        cid = line[7:43].decode()
        if cid != current and group:
            assert current is not None
            yield current, b"".join(group)
            group = []
        current = cid
        group.append(line)
    if group:
        assert current is not None
        yield current, b"".join(group)




class HashingReader:
    """A reader that hashes everything read through it."""

    def __init__(self, raw: Any) -> None:
        self.raw = raw
        self.hash = hashlib.sha256()
        self.size = 0

    def read(self, n: int = -1) -> bytes:
        data = self.raw.read(n)
        self.hash.update(data)
        self.size += len(data)
        return data


class Limited:
    """The first `size` bytes of a reader."""

    def __init__(self, raw: Any, size: int) -> None:
        self.raw = raw
        self.remaining = size

    def read(self, n: int = -1) -> bytes:
        if self.remaining <= 0:
            return b""
        n = self.remaining if n < 0 else min(n, self.remaining)
        data = self.raw.read(n)
        self.remaining -= len(data)
        return data


def skip(reader: Any, length: int) -> None:
    """Read (and so hash, through a hashing reader) the next `length` bytes without keeping
    them."""
    remaining = length
    while remaining > 0:
        data = reader.read(min(CHUNK, remaining))
        if not data:
            break
        remaining -= len(data)


def iter_lines(reader: Any) -> Iterator[bytes]:
    """The lines of a stream, each with its newline (the last one without, if it has none)."""
    pending = b""
    while chunk := reader.read(CHUNK):
        pending += chunk
        *complete, pending = pending.split(b"\n")
        for line in complete:
            yield line + b"\n"
    if pending:
        yield pending
