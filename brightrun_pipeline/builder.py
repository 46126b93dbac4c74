"""The version builder: version N+1 of a training file from version N plus new conversations.

Everything is streamed. The previous version's conversation blocks and JSONL lines are copied as
bytes (never re-fetched or re-parsed); only new (or re-enriched) sources are fetched, parsed and
serialized, one at a time. Hashes are computed while writing.
"""

from __future__ import annotations

import bisect
import ctypes
import fcntl
import hashlib
import io
import math
import os
import re
import shutil
import sys
import uuid
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any, BinaryIO

import orjson

from brightrun_pipeline.config import RetrySettings
from brightrun_pipeline.errors import ObjectExists, ProcessingFailed, RequestRejected, StaleVersion
from brightrun_pipeline.members import MemberRecord
from brightrun_pipeline.models import (
    FORMAT_SPEC,
    FORMAT_VERSION,
    JSONL_FIELDS,
    ConversationBlockMetadata,
    ManifestObject,
    QualitySummary,
    Scaffolding,
    ScaffoldingDistribution,
    TrainingFileMetadata,
)
from brightrun_pipeline.outputs import BY_NAME, EXPORTS, SPLITS, split_name
from brightrun_pipeline.outputs.base import LineExport
from brightrun_pipeline.rules import quality_tier
from brightrun_pipeline.sources import FetchedSource, ParsedSource, fetch_sources, parse_source
from brightrun_pipeline.storage import ObjectStore

CHUNK = 4 << 20
BACKGROUND_HASH_MIN = 256 << 10
# Chunks a HashingWriter may have in flight on its helper thread.
WRITE_BEHIND = 4
# Size of one spool segment file.
SEGMENT = 32 << 20
# A durable writer asks the OS to start writing to disk after every WRITEBACK bytes.
WRITEBACK = 32 << 20
BLOCK_START = b"    {\n"
BODY_OPEN = b',\n  "conversations": [\n'
BODY_CLOSE = b"\n  ]\n}"
BLOCK_SEPARATOR = b",\n"
_CONVERSATION_ID = re.compile(rb'"conversation_id": "([0-9a-f-]{36})"')


def object_key(training_file_id: str, version: int, name: str) -> str:
    """The storage key of one object of a version (contract §3)."""
    return f"{training_file_id}/v{version}/{name}"


def format_timestamp(moment: datetime) -> str:
    """A publication time as ISO-8601 with seconds and offset, e.g. 2025-12-01T09:30:00+00:00."""
    return moment.astimezone(UTC).isoformat(timespec="seconds")


def format_created(moment: datetime | None) -> str | None:
    """A conversation's creation time as the block shows it (microseconds, UTC offset)."""
    return None if moment is None else moment.astimezone(UTC).isoformat(timespec="microseconds")


@dataclass(frozen=True, slots=True)
class IncomingConversation:
    """Database facts about a conversation whose source is (re)read for this version."""

    conversation_id: str
    batch_id: str | None
    source_key: str
    quality_score: float | None
    persona_key: str | None
    emotional_arc_key: str | None
    topic_key: str | None
    created_at: datetime | None
    updated_at: datetime | None
    # Set when rebuilding a published version from its manifest; otherwise the version built.
    added_in_version: int | None = None


@dataclass(frozen=True)
class PreviousVersion:
    """Where the bytes of version N are, and how to check them."""

    version: int
    json_key: str
    json_sha256: str
    json_size: int
    jsonl_key: str
    jsonl_sha256: str
    jsonl_size: int
    body_start: int
    body_end: int
    # The exports the version holds (name → object), carried over on an append.
    exports: dict[str, ManifestObject] = field(default_factory=dict)


@dataclass(frozen=True)
class BuildSpec:
    """What to build: the file, the version, and the conversations to add or rebuild."""

    training_file_id: str
    file_name: str
    description: str | None
    file_created_at: datetime
    version: int
    published_at: datetime
    reason: str
    dagster_run_id: str | None
    request_ids: list[str]
    vertical: str | None
    consultant_profile: dict[str, Any] | None
    previous: PreviousVersion | None
    additions: list[IncomingConversation]
    rebuilds: list[IncomingConversation] = field(default_factory=list)
    # The exports to write (names registered in brightrun_pipeline.outputs): every one for a
    # new version; those a published version had when it is reproduced.
    exports: tuple[str, ...] = tuple(e.name for e in EXPORTS)
    # The side of every conversation of the version when the file holds out a validation share
    # (each export is then also written as a train and a validation object); None: no split.
    splits: dict[str, str] | None = None


@dataclass(frozen=True)
class BuiltVersion:
    """A version whose three objects are written (not yet published)."""

    spec: BuildSpec
    json: ManifestObject
    jsonl: ManifestObject
    manifest: ManifestObject
    exports: dict[str, ManifestObject]
    body_start: int
    body_end: int
    conversation_count: int
    training_pair_count: int
    trainable_pair_count: int
    human_reviewed_count: int
    avg_quality_score: float | None
    vertical: str | None
    consultant_profile: dict[str, Any]
    added_members: list[MemberRecord]
    rebuilt_members: list[MemberRecord]
    # Retries of transient storage errors: of the source fetches (counted here), and of the
    # writes of this version and reads of the previous one (counted by the store that did them).
    source_fetch_retries: int = 0
    output_retries: int = 0

    @property
    def storage_retries(self) -> int:
        """Every retry of a storage call this build made."""
        return self.source_fetch_retries + self.output_retries


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
    serialization overlap with hashing and I/O. At most WRITE_BEHIND chunks are in flight, so
    memory stays bounded. Use it as a context manager, inside the one that closes `raw`.

    A `durable` writer also starts writing its file to disk as it goes (every WRITEBACK bytes,
    where the OS allows it) and can fsync in the background (`sync`), so that making the file
    durable at publication does not wait for all of it at the end.
    """

    def __init__(self, raw: IO[bytes] | SpoolFiles, *, hashed: bool = True,
                 durable: bool = False) -> None:
        self.raw = raw
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
        while len(self._pending) >= WRITE_BEHIND:
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


@dataclass(slots=True)
class _Processed:
    """A freshly serialized conversation, spooled to disk."""

    member: MemberRecord
    block_offset: int
    block_length: int
    lines_offset: int
    lines_length: int


@dataclass
class HeaderTotals:
    """Header figures accumulated over the conversations in file order."""

    conversations: int = 0
    pairs: int = 0
    trainable: int = 0
    human_reviewed: int = 0
    scores: list[float] = field(default_factory=list)
    personas: dict[str, int] = field(default_factory=dict)
    arcs: dict[str, int] = field(default_factory=dict)
    topics: dict[str, int] = field(default_factory=dict)

    def add(self, member: MemberRecord) -> None:
        """Count one conversation from its membership facts."""
        self.conversations += 1
        self.pairs += member.pair_count
        self.trainable += member.trainable_pair_count
        self.human_reviewed += member.human_reviewed_count
        if member.quality_score is not None:
            self.scores.append(float(member.quality_score))
        for counts, key in ((self.personas, member.persona_key),
                            (self.arcs, member.emotional_arc_key),
                            (self.topics, member.topic_key)):
            if key is not None:
                counts[key] = counts.get(key, 0) + 1

    def quality_summary(self) -> QualitySummary:
        scores = self.scores
        return QualitySummary(
            avg_quality_score=math.fsum(scores) / len(scores) if scores else None,
            min_quality_score=min(scores) if scores else None,
            max_quality_score=max(scores) if scores else None,
            human_reviewed_count=self.human_reviewed,
            human_reviewed_percentage=(
                round(100 * self.human_reviewed / self.pairs, 2) if self.pairs else 0.0),
        )


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


def _document_prefix(metadata: TrainingFileMetadata, profile: dict[str, Any]) -> bytes:
    head = orjson.dumps(
        {"training_file_metadata": metadata.model_dump(mode="json"), "consultant_profile": profile},
        option=orjson.OPT_INDENT_2,
    )
    assert head.endswith(b"\n}")
    return head[:-2] + BODY_OPEN


def block_and_lines(
    source: ParsedSource, incoming: IncomingConversation, added_in_version: int, version: int,
) -> tuple[bytes, bytes, MemberRecord]:
    """Serialize one conversation: its JSON block, its JSONL lines and its membership facts."""
    pairs: list[dict[str, Any]] = source.document["training_pairs"]
    first_meta = pairs[0]["conversation_metadata"]
    cid = incoming.conversation_id
    metadata = ConversationBlockMetadata(
        conversation_id=cid,
        batch_id=incoming.batch_id,
        source_file=incoming.source_key,
        source_sha256=source.sha256,
        created_date=format_created(incoming.created_at),
        total_turns=len(pairs),
        quality_score=incoming.quality_score,
        quality_tier=quality_tier(incoming.quality_score),
        added_in_version=added_in_version,
        scaffolding=Scaffolding(
            persona_key=incoming.persona_key,
            persona_name=first_meta.get("client_persona"),
            emotional_arc_key=incoming.emotional_arc_key,
            emotional_arc=first_meta.get("emotional_arc"),
            training_topic_key=incoming.topic_key,
            training_topic=first_meta.get("training_topic"),
        ),
    )
    block = array_item({"conversation_metadata": metadata.model_dump(mode="json"),
                        "training_pairs": pairs})
    lines = io.BytesIO()
    trainable = 0
    reviewed = 0
    for pair in pairs:
        if pair["training_metadata"].get("human_reviewed") is True:
            reviewed += 1
        target = pair["target_response"]
        if not (isinstance(target, str) and target):
            continue
        trainable += 1
        line = {"id": f"{cid}_turn{pair['turn_number']}", "conversation_id": cid}
        for name in JSONL_FIELDS[2:]:
            line[name] = pair[name]
        lines.write(orjson.dumps(line))
        lines.write(b"\n")
    member = MemberRecord(
        training_file_id="",
        conversation_id=cid,
        position=-1,
        added_in_version=added_in_version,
        built_in_version=version,
        batch_id=incoming.batch_id,
        source_key=incoming.source_key,
        source_sha256=source.sha256,
        source_updated_at=incoming.updated_at,
        pair_count=len(pairs),
        trainable_pair_count=trainable,
        human_reviewed_count=reviewed,
        quality_score=incoming.quality_score,
        persona_key=incoming.persona_key,
        emotional_arc_key=incoming.emotional_arc_key,
        topic_key=incoming.topic_key,
    )
    return block, lines.getvalue(), member


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


def _iter_line_groups(reader: VerifyingReader) -> Iterator[tuple[str, bytes]]:
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


@dataclass(frozen=True)
class Serialized:
    """One source, read and serialized: its block, its JSONL lines and its facts."""

    conversation_id: str
    block: bytes
    lines: bytes
    member: MemberRecord
    consultant_profile: dict[str, Any]
    vertical: str


def serialize_source(fetched: FetchedSource, conversation: IncomingConversation, added_in: int,
                     version: int) -> Serialized:
    """Validate one fetched source and serialize it."""
    source = parse_source(fetched)
    block, lines, member = block_and_lines(source, conversation, added_in, version)
    return Serialized(conversation.conversation_id, block, lines, member,
                      source.document["consultant_profile"],
                      source.document["dataset_metadata"]["vertical"])


def build_version(
    spec: BuildSpec,
    members: Callable[[], Iterable[MemberRecord]],
    *,
    sources: ObjectStore,
    source_bucket: str,
    outputs: ObjectStore,
    output_bucket: str,
    concurrency: int,
    retry: RetrySettings,
) -> BuiltVersion:
    """Build and write training.json, training.jsonl and manifest.json of `spec.version`.

    The caller holds the version's build lease: it alone writes at the version's keys, and it
    cleared them when it took the lease. Objects are written once; finding one already there
    with other bytes means another writer got in, and this build is stale.

    `members` yields the conversations already in the file, in file order (the database's view of
    version N). Nothing is published here: the objects are written, the caller checks and commits.
    """
    tid = spec.training_file_id
    names = ("training.json", "training.jsonl", *_export_objects(spec), "manifest.json")
    keys = {name: object_key(tid, spec.version, name) for name in names}
    scratch = outputs.scratch_dir(output_bucket)
    sweep_dead_builds(scratch)
    work = scratch / f"build-{uuid.uuid4().hex}"
    work.mkdir(parents=True)
    try:
        with ExitStack() as stack:
            stack.enter_context(_held(work / ".alive"))
            built = _build(spec, members, keys, work, stack, sources=sources,
                           source_bucket=source_bucket, outputs=outputs,
                           output_bucket=output_bucket, concurrency=concurrency, retry=retry)
        for name in names:
            try:
                outputs.put_file(output_bucket, keys[name], work / name)
            except ObjectExists as exc:
                raise StaleVersion(
                    f"version {spec.version} of training file {tid}: {name} was written by "
                    "another build; this build is stale") from exc
        return built
    finally:
        shutil.rmtree(work, ignore_errors=True)


@contextmanager
def _held(path: Path) -> Iterator[None]:
    """Hold an exclusive lock on `path` while building: the kernel releases it when the process
    dies, however it dies, which is how a sweep tells a dead build's work directory."""
    # Locked under another name first: a sweep must never find the file unlocked.
    pending = path.with_name(path.name + ".new")
    fd = os.open(pending, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        os.rename(pending, path)
        yield
    finally:
        os.close(fd)


def sweep_dead_builds(scratch: Path) -> int:
    """Remove the work directories of builds whose process died (SIGKILL leaves them behind);
    a live build holds its directory's lock. Returns how many were removed."""
    removed = 0
    for work in scratch.glob("build-*"):
        try:
            fd = os.open(work / ".alive", os.O_WRONLY)
        except FileNotFoundError:
            continue  # just created, its lock not taken yet: a live build
        except OSError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            continue
        finally:
            os.close(fd)
        shutil.rmtree(work, ignore_errors=True)
        removed += 1
    return removed


def _build(
    spec: BuildSpec,
    members: Callable[[], Iterable[MemberRecord]],
    keys: dict[str, str],
    work: Path,
    stack: ExitStack,
    *,
    sources: ObjectStore,
    source_bucket: str,
    outputs: ObjectStore,
    output_bucket: str,
    concurrency: int,
    retry: RetrySettings,
) -> BuiltVersion:
    spool_files = SpoolFiles(work)
    stack.callback(spool_files.close)
    spool = stack.enter_context(HashingWriter(spool_files, hashed=False))
    rebuild_ids = {c.conversation_id for c in spec.rebuilds}
    durable = outputs.syncs_files
    jsonl_out = stack.enter_context(HashingWriter(
        stack.enter_context(open(work / "training.jsonl", "wb")), durable=durable))  # noqa: SIM115
    # Appending only (the usual case): the JSONL is final as soon as each conversation is read,
    # and the spool holds exactly the bytes that follow the previous body in training.json.
    appending = not rebuild_ids
    previous = spec.previous
    new_lines = jsonl_out
    previous_jsonl: Future[None] | None = None
    if appending and previous is not None:
        # The previous JSONL is copied (and checked) on a helper thread while the new sources
        # are read and training.json is written; the new lines wait in a spool of their own.
        def copy_previous_jsonl() -> None:
            assert previous is not None
            with outputs.open_read(output_bucket, previous.jsonl_key) as raw:
                copy_verified_prefix(raw, jsonl_out, previous.jsonl_sha256, previous.jsonl_size,
                                     f"training.jsonl of version {previous.version}")

        helper = stack.enter_context(
            ThreadPoolExecutor(max_workers=1, thread_name_prefix="brightrun-copy"))
        previous_jsonl = helper.submit(copy_previous_jsonl)
        lines_files = SpoolFiles(work, name="lines")
        stack.callback(lines_files.close)
        new_lines = stack.enter_context(HashingWriter(lines_files, hashed=False))
    profile = spec.consultant_profile
    vertical = spec.vertical
    processed: dict[str, _Processed] = {}
    wanted = [(c.conversation_id, c.source_key) for c in [*spec.rebuilds, *spec.additions]]
    incoming = {c.conversation_id: c for c in [*spec.rebuilds, *spec.additions]}
    previous_members = {}
    if rebuild_ids:
        previous_members = {m.conversation_id: m for m in members()
                            if m.conversation_id in rebuild_ids}
    ineligible: dict[str, str] = {}

    def added_in_of(conversation: IncomingConversation) -> int:
        if conversation.conversation_id in rebuild_ids:
            return previous_members[conversation.conversation_id].added_in_version
        return conversation.added_in_version or spec.version

    fetched_sources = fetch_sources(sources, source_bucket, wanted, concurrency=concurrency,
                                    retry=retry)
    fetch_retries = 0

    def counted(fetched: FetchedSource) -> FetchedSource:
        nonlocal fetch_retries
        fetch_retries += fetched.attempts - 1
        return fetched

    jobs = ((counted(fetched), incoming[fetched.conversation_id],
             added_in_of(incoming[fetched.conversation_id]), spec.version)
            for fetched in fetched_sources)
    for item in (serialize_source(*job) for job in jobs):
        if profile is None:
            profile = item.consultant_profile
            vertical = item.vertical
        elif item.consultant_profile != profile:
            ineligible[item.conversation_id] = (
                f"its consultant ({item.consultant_profile.get('name')!r}) differs from the "
                f"training file's ({profile.get('name')!r})")
            continue
        conversation = incoming[item.conversation_id]
        block, lines, member = item.block, item.lines, item.member
        if appending:
            if previous is not None or processed:
                spool.write(BLOCK_SEPARATOR)
            spool.write(block)
            new_lines.write(lines)
            processed[conversation.conversation_id] = _Processed(member, 0, 0, 0, 0)
            continue
        block_offset = spool.size
        spool.write(block)
        lines_offset = spool.size
        spool.write(lines)
        processed[conversation.conversation_id] = _Processed(
            member, block_offset, len(block), lines_offset, len(lines))
    if appending and previous_jsonl is None:
        jsonl_out.sync()  # complete: its fsync overlaps with writing training.json
    if ineligible:
        if rebuild_ids & ineligible.keys():
            raise ProcessingFailed("re-enriched sources changed consultant", ineligible)
        raise RequestRejected(
            f"{len(ineligible)} conversation(s) cannot be added to {spec.file_name!r}", ineligible)
    assert profile is not None

    spool.flush()

    def spooled(offset: int, length: int) -> bytes:
        return spool_files.read(offset, length)

    # Header figures and manifest entries, in file order.
    totals = HeaderTotals()
    manifest_entries = stack.enter_context(open(work / "manifest.part", "w+b"))  # noqa: SIM115
    added_members: list[MemberRecord] = []
    rebuilt_members: list[MemberRecord] = []
    position = -1
    first_entry = True

    def record(member: MemberRecord) -> None:
        nonlocal first_entry
        totals.add(member)
        # Field order of ManifestConversation; a plain dict keeps this per-member step cheap.
        entry = {"conversation_id": member.conversation_id, "batch_id": member.batch_id,
                 "source_key": member.source_key, "source_sha256": member.source_sha256,
                 "pair_count": member.pair_count, "added_in_version": member.added_in_version}
        if spec.splits is not None:
            entry["split"] = spec.splits[member.conversation_id]
        if not first_entry:
            manifest_entries.write(BLOCK_SEPARATOR)
        first_entry = False
        manifest_entries.write(array_item(entry))

    for member in members() if spec.previous is not None else ():
        position = member.position
        fresh = processed.get(member.conversation_id)
        if fresh is not None and member.conversation_id in rebuild_ids:
            member = _placed(fresh.member, tid=spec.training_file_id, position=member.position,
                             split=spec.splits[member.conversation_id] if spec.splits
                             else member.split)
            rebuilt_members.append(member)
        record(member)
    for conversation in spec.additions:
        position += 1
        fresh = (processed.pop(conversation.conversation_id) if appending
                 else processed[conversation.conversation_id])
        member = _placed(fresh.member, tid=spec.training_file_id, position=position,
                         split=spec.splits[conversation.conversation_id] if spec.splits else None)
        added_members.append(member)
        record(member)

    metadata = TrainingFileMetadata(
        training_file_id=spec.training_file_id,
        file_name=spec.file_name,
        description=spec.description,
        version=FORMAT_VERSION,
        file_version=spec.version,
        format_spec=FORMAT_SPEC,
        vertical=vertical,
        created_date=spec.file_created_at.astimezone(UTC).date().isoformat(),
        last_updated=format_timestamp(spec.published_at),
        total_conversations=totals.conversations,
        total_training_pairs=totals.pairs,
        trainable_pairs=totals.trainable,
        quality_summary=totals.quality_summary(),
        scaffolding_distribution=ScaffoldingDistribution(
            personas=totals.personas, emotional_arcs=totals.arcs, training_topics=totals.topics),
    )

    # training.json and training.jsonl
    json_out = stack.enter_context(HashingWriter(
        stack.enter_context(open(work / "training.json", "wb")), durable=durable))  # noqa: SIM115
    json_out.write(_document_prefix(metadata, profile))
    body_start = json_out.size
    wrote_block = False
    if previous is not None:
        with outputs.open_read(output_bucket, previous.json_key) as raw:
            reader = VerifyingReader(raw, expected_sha256=previous.json_sha256,
                                     expected_size=previous.json_size,
                                     label=f"training.json of version {previous.version}")
            reader.skip(previous.body_start)
            body_length = previous.body_end - previous.body_start
            if appending:
                reader.copy_to(json_out, body_length)
            else:
                for index, (cid, block) in enumerate(iter_blocks(reader, body_length)):
                    if index:
                        json_out.write(BLOCK_SEPARATOR)
                    fresh = processed.get(cid) if cid in rebuild_ids else None
                    json_out.write(block if fresh is None
                                   else spooled(fresh.block_offset, fresh.block_length))
            reader.finish()
            wrote_block = True
    if appending:
        spool_files.drain(json_out)
    elif previous is not None:
        with outputs.open_read(output_bucket, previous.jsonl_key) as raw:
            reader = VerifyingReader(raw, expected_sha256=previous.jsonl_sha256,
                                     expected_size=previous.jsonl_size,
                                     label=f"training.jsonl of version {previous.version}")
            groups = _iter_line_groups(reader)
            for member in members():
                previous_lines = b""
                if member.trainable_pair_count:
                    group_cid, previous_lines = next(groups, ("", b""))
                    if group_cid != member.conversation_id:
                        raise ProcessingFailed(
                            f"training.jsonl of version {previous.version} is out of step "
                            f"with its membership at conversation {member.conversation_id}")
                fresh = processed.get(member.conversation_id)
                if member.conversation_id in rebuild_ids and fresh is not None:
                    jsonl_out.write(spooled(fresh.lines_offset, fresh.lines_length))
                else:
                    jsonl_out.write(previous_lines)
            reader.finish()
    for conversation in spec.additions if not appending else ():
        fresh = processed[conversation.conversation_id]
        if wrote_block:
            json_out.write(BLOCK_SEPARATOR)
        json_out.write(spooled(fresh.block_offset, fresh.block_length))
        jsonl_out.write(spooled(fresh.lines_offset, fresh.lines_length))
        wrote_block = True
    if previous_jsonl is not None:
        previous_jsonl.result()
        new_lines.flush()
        lines_files.drain(jsonl_out)
        jsonl_out.sync()
    body_end = json_out.size
    json_out.write(BODY_CLOSE)
    json_object = json_out.result(keys["training.json"])
    json_out.sync()  # overlaps with writing the manifest
    if not appending:
        jsonl_out.sync()
    jsonl_object = jsonl_out.result(keys["training.jsonl"])
    exports: dict[str, ManifestObject] = {}
    for name in spec.exports:
        exports.update(_write_export(BY_NAME[name].export, spec, work, keys, outputs,
                                     output_bucket, durable=durable, appending=appending))

    # manifest.json
    manifest_out = stack.enter_context(
        HashingWriter(stack.enter_context(open(work / "manifest.json", "wb"))))  # noqa: SIM115
    head = orjson.dumps({
        "training_file_id": spec.training_file_id,
        "file_name": spec.file_name,
        "version": spec.version,
        "created_at": format_timestamp(spec.published_at),
        "dagster_run_id": spec.dagster_run_id,
        "request_ids": spec.request_ids,
        "reason": spec.reason,
        "files": {"training.json": json_object.model_dump(),
                  "training.jsonl": jsonl_object.model_dump(),
                  **{name: item.model_dump() for name, item in exports.items()}},
    }, option=orjson.OPT_INDENT_2)
    manifest_out.write(head[:-2] + b',\n  "conversations": [\n')
    manifest_entries.seek(0)
    while chunk := manifest_entries.read(CHUNK):
        manifest_out.write(chunk)
    manifest_out.write(BODY_CLOSE)

    return BuiltVersion(
        spec=spec,
        json=json_object,
        jsonl=jsonl_object,
        manifest=manifest_out.result(keys["manifest.json"]),
        exports=exports,
        body_start=body_start,
        body_end=body_end,
        conversation_count=totals.conversations,
        training_pair_count=totals.pairs,
        trainable_pair_count=totals.trainable,
        human_reviewed_count=totals.human_reviewed,
        avg_quality_score=metadata.quality_summary.avg_quality_score,
        vertical=vertical,
        consultant_profile=profile,
        added_members=added_members,
        rebuilt_members=rebuilt_members,
        source_fetch_retries=fetch_retries,
    )


def _export_objects(spec: BuildSpec) -> list[str]:
    """The objects the spec's exports are written as: each export, then its split parts."""
    names = []
    for name in spec.exports:
        names.append(name)
        export = BY_NAME[name].export
        if spec.splits is not None and export is not None:
            names += [split_name(export, side) for side in SPLITS]
    return names


def _write_export(export: LineExport | None, spec: BuildSpec, work: Path, keys: dict[str, str],
                  outputs: ObjectStore, output_bucket: str, *, durable: bool,
                  appending: bool) -> dict[str, ManifestObject]:
    """Write one export (and its train/validation parts when the file is split) from the
    finished training.jsonl. On an append, each object of the previous version is copied
    (checked against its hash) and only the new lines are derived."""
    assert export is not None, "only exports derived from the JSONL are written here"
    previous = spec.previous
    names = [export.name]
    if spec.splits is not None:
        names += [split_name(export, side) for side in SPLITS]
    carried = {name: previous.exports.get(name) for name in names} if previous else {}
    # Carried over only when every object is (a split first configured now is derived whole).
    carry = appending and previous is not None and all(carried.values())
    with ExitStack() as stack:
        writers = {}
        for name in names:
            raw = stack.enter_context(open(work / name, "wb"))  # noqa: SIM115
            writers[name] = stack.enter_context(HashingWriter(raw, durable=durable))
        lines = stack.enter_context(open(work / "training.jsonl", "rb"))  # noqa: SIM115
        if carry:
            assert previous is not None
            for name, writer in writers.items():
                item = carried[name]
                assert item is not None
                with outputs.open_read(output_bucket, item.key) as old:
                    copy_verified_prefix(old, writer, item.sha256, item.size,
                                         f"{name} of version {previous.version}")
            # The new lines follow the previous version's JSONL, byte for byte.
            lines.seek(previous.jsonl_size)
        whole = writers[export.name]
        for line in lines:
            pair = orjson.loads(line)
            row = export.row(pair)
            whole.write(row)
            if spec.splits is not None:
                side = spec.splits[pair["conversation_id"]]
                writers[split_name(export, side)].write(row)
        results = {}
        for name, writer in writers.items():
            writer.sync()
            results[name] = writer.result(keys[name])
        return results


def _placed(member: MemberRecord, *, tid: str, position: int, split: str | None
            ) -> MemberRecord:
    return replace(member, training_file_id=tid, position=position, split=split)


