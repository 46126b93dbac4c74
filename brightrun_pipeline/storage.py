"""Object storage: one interface, a local-directory store and an S3 store."""

from __future__ import annotations

import contextlib
import errno
import io
import os
import re
import secrets
import stat
import tempfile
import threading
import unicodedata
from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from botocore.client import BaseClient
from botocore.exceptions import (
    ClientError,
    ConnectionClosedError,
    ConnectTimeoutError,
    EndpointConnectionError,
    IncompleteReadError,
    ReadTimeoutError,
    ResponseStreamingError,
)

from brightrun_pipeline.errors import (
    InvalidKey,
    ObjectExists,
    ObjectNotFound,
    TransientStorageError,
)

MAX_KEY_BYTES = 1024
CHUNK_SIZE = 1024 * 1024

_BUCKET_NAME = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")
# Inside a local bucket directory this name holds temp files; it is never a key's first segment.
_SCRATCH = ".scratch"
_MAX_SEGMENT_BYTES = 255

# S3 rejects parts below 5 MiB (except the last) and uploads of more than 10,000 parts.
_MIN_PART_SIZE = 5 * 1024 * 1024
_MAX_PARTS = 10_000
_NOT_FOUND_CODES = frozenset({"NoSuchKey", "NotFound", "404"})
_TRANSIENT_CODES = frozenset({
    "SlowDown", "Throttling", "ThrottlingException", "RequestTimeout", "RequestTimeoutException",
    "InternalError", "ServiceUnavailable", "ConditionalRequestConflict", "OperationAborted",
})
_TRANSIENT_EXCEPTIONS = (
    EndpointConnectionError, ConnectionClosedError, ReadTimeoutError, ConnectTimeoutError,
    ResponseStreamingError, IncompleteReadError,
)


@dataclass(frozen=True)
class ObjectInfo:
    """What the store knows about one object."""

    size: int


def validate_key(key: str) -> str:
    """Return the key unchanged if it is a safe relative object key, else raise InvalidKey."""
    reason = _key_problem(key)
    if reason:
        raise InvalidKey(f"invalid storage key {key!r}: {reason}")
    return key


def _key_problem(key: str) -> str | None:
    if not key:
        return "empty"
    if key.startswith("/") or key.endswith("/"):
        return "leading or trailing '/'"
    problem = _character_problem(key)
    if problem:
        return problem
    if len(key.encode("utf-8")) > MAX_KEY_BYTES:
        return f"longer than {MAX_KEY_BYTES} bytes"
    if any(segment in ("", ".", "..") for segment in key.split("/")):
        return "empty, '.' or '..' segment"
    return None


# Keys made only of these characters (the usual case) need no per-character check.
_PLAIN_KEY = re.compile(r"[A-Za-z0-9._/ -]*")


def _character_problem(text: str) -> str | None:
    if _PLAIN_KEY.fullmatch(text):
        return None
    if "\\" in text:
        return "backslash"
    if any(unicodedata.category(char) == "Cc" for char in text):
        return "control character"
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return "not encodable as UTF-8"
    return None


def _validate_prefix(prefix: str) -> str:
    """A listing prefix is a valid key, optionally followed by '/' and part of a segment."""
    head, sep, tail = prefix.rpartition("/")
    problem = "leading '/'" if sep and not head else _character_problem(tail)
    if problem:
        raise InvalidKey(f"invalid storage prefix {prefix!r}: {problem}")
    if head:
        validate_key(head)
    return prefix


def _read_exactly(stream: BinaryIO, size: int) -> bytes:
    """Read `size` bytes, fewer only at the end of the stream."""
    chunks = []
    remaining = size
    while remaining:
        chunk = stream.read(remaining)
        if not chunk:
            break
        chunks.append(chunk)
        remaining -= len(chunk)
    return b"".join(chunks)


def _same_stream(first: BinaryIO, second: BinaryIO) -> bool:
    """Compare two streams chunk by chunk, stopping at the first difference."""
    while True:
        left = _read_exactly(first, CHUNK_SIZE)
        if left != _read_exactly(second, CHUNK_SIZE):
            return False
        if not left:
            return True


class ObjectStore(ABC):
    """Buckets of write-once objects addressed by validated keys."""

    # Reads worth having in flight at once; None means as many as the caller asks for.
    max_useful_concurrency: int | None = None
    # Whether put_file fsyncs the file it takes: writers of such files may start early.
    syncs_files: bool = False

    @abstractmethod
    def ensure_bucket(self, bucket: str) -> None:
        """Create the bucket unless it already exists."""

    @abstractmethod
    def get_bytes(self, bucket: str, key: str) -> bytes:
        """Return the whole object; ObjectNotFound if it is missing."""

    @abstractmethod
    def open_read(self, bucket: str, key: str) -> contextlib.AbstractContextManager[BinaryIO]:
        """Open the object for streaming reads; ObjectNotFound if it is missing."""

    @abstractmethod
    def stat(self, bucket: str, key: str) -> ObjectInfo | None:
        """Return the object's size, or None if it is missing."""

    @abstractmethod
    def put_file(self, bucket: str, key: str, path: Path, *, replace: bool = False) -> None:
        """Store a file under key once (see put_bytes); on success the file at path is gone."""

    @abstractmethod
    def put_bytes(self, bucket: str, key: str, data: bytes, *, replace: bool = False) -> None:
        """Store bytes once: same bytes already there is a no-op, other bytes raise ObjectExists."""

    @abstractmethod
    def delete(self, bucket: str, key: str) -> None:
        """Remove the object if it exists."""

    @abstractmethod
    def list_keys(self, bucket: str, prefix: str = "") -> Iterator[str]:
        """Yield the bucket's keys that start with prefix, in sorted order."""

    @abstractmethod
    def local_path(self, bucket: str, key: str) -> Path | None:
        """Return the object's filesystem path, or None when the store has no filesystem."""

    @abstractmethod
    def scratch_dir(self, bucket: str) -> Path:
        """Return a directory for temp files that put_file into this bucket can take cheaply."""


class LocalObjectStore(ObjectStore):
    """Objects as files under `<root>/<bucket>/<key>`, written atomically.

    put_file moves the file into place when it is on the same filesystem: the caller must not
    use the path afterwards. A key may not start with `.scratch/` (the bucket's temp files), a
    key cannot be both an object and the prefix directory of another key, and listings show
    regular files only (symlinks are never followed).
    """

    # Reads come from the page cache or a local disk: more threads only contend for the GIL.
    max_useful_concurrency = 1
    syncs_files = True

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self._real_buckets: dict[Path, str] = {}

    def ensure_bucket(self, bucket: str) -> None:
        """Create the bucket directory unless it already exists."""
        self._bucket_dir(bucket).mkdir(parents=True, exist_ok=True)

    def get_bytes(self, bucket: str, key: str) -> bytes:
        """Return the whole object; ObjectNotFound if it is missing."""
        with self.open_read(bucket, key) as stream:
            return stream.read()

    @contextlib.contextmanager
    def open_read(self, bucket: str, key: str) -> Iterator[BinaryIO]:
        """Open the object for streaming reads; ObjectNotFound if it is missing."""
        path = self._object_file(bucket, key, existing_bucket=True)
        try:
            stream = open(path, "rb")  # noqa: SIM115 - closed below
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError) as exc:
            raise ObjectNotFound(bucket, key) from exc
        with stream:
            yield stream

    def stat(self, bucket: str, key: str) -> ObjectInfo | None:
        """Return the object's size, or None if it is missing."""
        try:
            info = self._object_path(bucket, key).stat()
        except (FileNotFoundError, NotADirectoryError):
            return None
        return ObjectInfo(size=info.st_size) if stat.S_ISREG(info.st_mode) else None

    def put_file(self, bucket: str, key: str, path: Path, *, replace: bool = False) -> None:
        """Move the file into place once (see put_bytes); on success the file at path is gone."""
        target = self._object_path(bucket, key, existing_bucket=True)
        path = Path(path)
        if os.path.realpath(path) == os.path.realpath(target):
            return  # the object itself: unlinking the source would delete it
        _fsync_file(path)
        try:
            self._install(bucket, key, path, target, replace=replace)
        except OSError as exc:
            if exc.errno != errno.EXDEV:
                raise
            # Another filesystem: copy into the bucket's scratch directory, then link from there.
            temp = self._temp_path(bucket)
            with path.open("rb") as source:
                self._write_temp(temp, source)
            try:
                self._install(bucket, key, temp, target, replace=replace)
            finally:
                temp.unlink(missing_ok=True)
        path.unlink(missing_ok=True)

    def put_bytes(self, bucket: str, key: str, data: bytes, *, replace: bool = False) -> None:
        """Store bytes once: same bytes already there is a no-op, other bytes raise ObjectExists."""
        target = self._object_path(bucket, key, existing_bucket=True)
        temp = self._temp_path(bucket)
        try:
            self._write_temp(temp, io.BytesIO(data))
            self._install(bucket, key, temp, target, replace=replace)
        finally:
            temp.unlink(missing_ok=True)

    def delete(self, bucket: str, key: str) -> None:
        """Remove the object if it exists, and the directories it leaves empty."""
        path = self._object_path(bucket, key, existing_bucket=True)
        try:
            path.unlink()
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
            return
        bucket_dir = self._bucket_dir(bucket)
        parent = path.parent
        while parent != bucket_dir:
            try:
                parent.rmdir()
            except OSError:
                break
            parent = parent.parent

    def list_keys(self, bucket: str, prefix: str = "") -> Iterator[str]:
        """Yield the bucket's keys that start with prefix, in sorted order."""
        _validate_prefix(prefix)
        bucket_dir = self._require_bucket(bucket)
        head = prefix.rpartition("/")[0]
        segments = head.split("/") if head else []
        if segments[:1] == [_SCRATCH]:
            return
        start = bucket_dir.joinpath(*segments)
        # Listing never follows symlinks, so a prefix reached through one lists nothing.
        if os.path.realpath(start) != os.path.join(os.path.realpath(bucket_dir), *segments):
            return
        yield from self._walk(start, f"{head}/" if head else "", prefix)

    def local_path(self, bucket: str, key: str) -> Path | None:
        """Return the object's filesystem path (it may not exist yet)."""
        return self._object_path(bucket, key)

    def scratch_dir(self, bucket: str) -> Path:
        """Return `<root>/<bucket>/.scratch`: same filesystem as the objects, never listed."""
        scratch = self._require_bucket(bucket) / _SCRATCH
        scratch.mkdir(exist_ok=True)
        return scratch

    def _walk(self, directory: Path, relative: str, prefix: str) -> Iterator[str]:
        """Yield regular files below directory in key order, descending only where prefix leads.

        A directory sorts as its name plus '/', which is where its keys fall among its siblings.
        """
        entries: list[tuple[str, os.DirEntry[str]]] = []
        try:
            with os.scandir(directory) as scan:
                for entry in scan:
                    if not relative and entry.name == _SCRATCH:
                        continue
                    if entry.is_dir(follow_symlinks=False):
                        entries.append((f"{entry.name}/", entry))
                    elif entry.is_file(follow_symlinks=False):
                        entries.append((entry.name, entry))
        except (FileNotFoundError, NotADirectoryError):
            return
        entries.sort(key=lambda item: item[0])
        for name, entry in entries:
            key = relative + name
            if not name.endswith("/"):
                if key.startswith(prefix):
                    yield key
            elif key.startswith(prefix) or prefix.startswith(key):
                yield from self._walk(Path(entry.path), key, prefix)

    def _bucket_dir(self, bucket: str) -> Path:
        if not _BUCKET_NAME.fullmatch(bucket) or ".." in bucket:
            raise InvalidKey(f"invalid bucket name {bucket!r}: use 3-63 characters a-z 0-9 . -")
        return self.root / bucket

    def _require_bucket(self, bucket: str) -> Path:
        bucket_dir = self._bucket_dir(bucket)
        if not bucket_dir.is_dir():
            raise FileNotFoundError(f"bucket {bucket!r} does not exist under {self.root}")
        return bucket_dir

    def _object_path(self, bucket: str, key: str, *, existing_bucket: bool = False) -> Path:
        return Path(self._object_file(bucket, key, existing_bucket=existing_bucket))

    def _object_file(self, bucket: str, key: str, *, existing_bucket: bool = False) -> str:
        validate_key(key)
        segments = key.split("/")
        if segments[0] == _SCRATCH:
            raise InvalidKey(f"invalid storage key {key!r}: {_SCRATCH} is reserved")
        if any(len(segment.encode("utf-8")) > _MAX_SEGMENT_BYTES for segment in segments):
            raise InvalidKey(f"invalid storage key {key!r}: segment longer than 255 bytes")
        bucket_dir = self._require_bucket(bucket) if existing_bucket else self._bucket_dir(bucket)
        if self._escapes(bucket_dir, segments):
            raise InvalidKey(f"invalid storage key {key!r}: resolves outside bucket {bucket!r}")
        # A plain string: pathlib would intern every segment, a table that only grows.
        return os.path.join(bucket_dir, *segments)

    def _escapes(self, bucket_dir: Path, segments: list[str]) -> bool:
        """Whether the key's path leaves the bucket (or enters its scratch area) via a symlink.

        Only the segments under the bucket are looked at (the bucket's own real path is resolved
        once): a key with no symlink in it, the usual case, costs one lstat per segment.
        """
        real_bucket = self._real_buckets.get(bucket_dir)
        if real_bucket is None:
            real_bucket = self._real_buckets[bucket_dir] = os.path.realpath(bucket_dir)
        current = real_bucket
        for segment in segments:
            current = os.path.join(current, segment)
            try:
                mode = os.lstat(current).st_mode
            except (FileNotFoundError, NotADirectoryError):
                return False  # nothing below a missing entry can be a link
            if stat.S_ISLNK(mode):
                resolved = os.path.realpath(os.path.join(real_bucket, *segments))
                relative = os.path.relpath(resolved, real_bucket)
                return relative == os.curdir or relative.split(os.sep)[0] in (os.pardir, _SCRATCH)
        return False

    def _temp_path(self, bucket: str) -> Path:
        return self.scratch_dir(bucket) / f"put-{secrets.token_hex(8)}"

    @staticmethod
    def _write_temp(temp: Path, source: BinaryIO) -> None:
        # O_EXCL with mode 0o666 lets the umask decide permissions, unlike mkstemp's 0o600.
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        with os.fdopen(fd, "wb") as out:
            while chunk := source.read(CHUNK_SIZE):
                out.write(chunk)
            out.flush()
            os.fsync(out.fileno())

    def _install(self, bucket: str, key: str, source: Path, target: Path, *, replace: bool) -> None:
        """Link (or with replace, rename) a durable file into place, once."""
        for attempt in range(3):
            try:
                target.parent.mkdir(parents=True, exist_ok=True)
                if replace:
                    os.replace(source, target)
                else:
                    os.link(source, target)
            except FileNotFoundError:
                # A concurrent delete pruned the parent directory between mkdir and link.
                if attempt == 2 or not source.exists():
                    raise
                continue
            except FileExistsError:
                if target.parent.is_dir() and not target.is_dir():
                    try:
                        if _same_file(source, target):
                            return
                    except FileNotFoundError:
                        continue
                    raise ObjectExists(bucket, key) from None
                raise _conflict(key) from None
            except (NotADirectoryError, IsADirectoryError):
                raise _conflict(key) from None
            _fsync_dir(target.parent)
            return
        raise TransientStorageError(f"object {bucket}/{key} kept changing during a put; try again")


def _conflict(key: str) -> InvalidKey:
    return InvalidKey(
        f"invalid storage key {key!r}: the local store cannot hold a key that is also "
        "the prefix directory of another key"
    )


def _same_file(first: Path, second: Path) -> bool:
    if first.stat().st_size != second.stat().st_size:
        return False
    with first.open("rb") as left, second.open("rb") as right:
        return _same_stream(left, right)


def _fsync_file(path: Path) -> None:
    with path.open("rb") as stream:
        os.fsync(stream.fileno())


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class S3ObjectStore(ObjectStore):
    """Objects in S3 or an S3-compatible service, written once with conditional writes.

    put_file deletes the file after a successful upload, so both stores consume it alike.
    """

    def __init__(self, client: BaseClient, *, multipart_threshold: int = 64 * 1024 * 1024,
                 part_size: int = 16 * 1024 * 1024) -> None:
        if part_size < _MIN_PART_SIZE:
            raise ValueError(f"part_size must be at least {_MIN_PART_SIZE} bytes")
        if multipart_threshold < 1:
            raise ValueError("multipart_threshold must be positive")
        self.client = client
        self.multipart_threshold = multipart_threshold
        self.part_size = part_size
        # More requests in flight than pooled connections would open (and drop) a connection each.
        self.max_useful_concurrency = int(getattr(client.meta.config, "max_pool_connections", 10))
        self._scratch_root: Path | None = None
        self._scratch_lock = threading.Lock()

    def ensure_bucket(self, bucket: str) -> None:
        """Create the bucket unless it already exists."""
        with _s3_errors(bucket):
            try:
                self.client.head_bucket(Bucket=bucket)
                return
            except ClientError as exc:
                if _error_code(exc) not in ("404", "NoSuchBucket", "NotFound"):
                    raise
            region = self.client.meta.region_name
            options: dict[str, Any] = {}
            if region and region != "us-east-1":
                options["CreateBucketConfiguration"] = {"LocationConstraint": region}
            try:
                self.client.create_bucket(Bucket=bucket, **options)
            except ClientError as exc:
                if _error_code(exc) != "BucketAlreadyOwnedByYou":
                    raise

    def get_bytes(self, bucket: str, key: str) -> bytes:
        """Return the whole object; ObjectNotFound if it is missing."""
        body = self._get(bucket, key)["Body"]
        with contextlib.closing(body), _s3_errors(bucket, key):
            return body.read()

    @contextlib.contextmanager
    def open_read(self, bucket: str, key: str) -> Iterator[BinaryIO]:
        """Open the object for streaming reads; ObjectNotFound if it is missing."""
        body = self._get(bucket, key)["Body"]
        with io.BufferedReader(_BodyReader(body, bucket, key), CHUNK_SIZE) as stream:
            yield stream

    def stat(self, bucket: str, key: str) -> ObjectInfo | None:
        """Return the object's size, or None if it is missing."""
        validate_key(key)
        try:
            with _s3_errors(bucket, key):
                response = self.client.head_object(Bucket=bucket, Key=key)
        except ObjectNotFound:
            return None
        return ObjectInfo(size=response["ContentLength"])

    def put_file(self, bucket: str, key: str, path: Path, *, replace: bool = False) -> None:
        """Upload a file once (see put_bytes); on success the file at path is deleted."""
        validate_key(key)
        path = Path(path)
        with path.open("rb") as source:
            self._put(bucket, key, source, os.fstat(source.fileno()).st_size, replace=replace)
        path.unlink(missing_ok=True)

    def put_bytes(self, bucket: str, key: str, data: bytes, *, replace: bool = False) -> None:
        """Store bytes once: same bytes already there is a no-op, other bytes raise ObjectExists."""
        validate_key(key)
        self._put(bucket, key, io.BytesIO(data), len(data), replace=replace)

    def delete(self, bucket: str, key: str) -> None:
        """Remove the object if it exists."""
        validate_key(key)
        with _s3_errors(bucket, key):
            self.client.delete_object(Bucket=bucket, Key=key)

    def list_keys(self, bucket: str, prefix: str = "") -> Iterator[str]:
        """Yield the bucket's keys that start with prefix, in sorted order."""
        _validate_prefix(prefix)
        with _s3_errors(bucket):
            pages = self.client.get_paginator("list_objects_v2").paginate(
                Bucket=bucket, Prefix=prefix)
            for page in pages:
                for item in page.get("Contents", []):
                    yield item["Key"]

    def local_path(self, bucket: str, key: str) -> Path | None:
        """S3 objects have no filesystem path."""
        validate_key(key)
        return None

    def scratch_dir(self, bucket: str) -> Path:
        """Return a private temp directory for this bucket, created on first use."""
        with self._scratch_lock:
            if self._scratch_root is None:
                self._scratch_root = Path(tempfile.mkdtemp(prefix="brightrun-scratch-"))
        scratch = self._scratch_root / bucket
        scratch.mkdir(exist_ok=True)
        return scratch

    def _put(self, bucket: str, key: str, source: BinaryIO, size: int, *, replace: bool) -> None:
        if size < self.multipart_threshold:
            written = self._put_single(bucket, key, source, replace=replace)
        else:
            # Check first so that an idempotent retry does not upload a large file again.
            if not replace and self.stat(bucket, key) is not None:
                written = False
            else:
                written = self._put_multipart(bucket, key, source, size, replace=replace)
        if not written:
            source.seek(0)
            if not self._matches(bucket, key, source, size):
                raise ObjectExists(bucket, key)

    def _put_single(self, bucket: str, key: str, source: BinaryIO, *, replace: bool) -> bool:
        """Put the object; False if a write-once put found the key taken."""
        condition = {} if replace else {"IfNoneMatch": "*"}
        with _s3_errors(bucket, key):
            try:
                self.client.put_object(Bucket=bucket, Key=key, Body=source, **condition)
            except ClientError as exc:
                if replace or not _precondition_failed(exc):
                    raise
                return False
        return True

    def _put_multipart(self, bucket: str, key: str, source: BinaryIO, size: int, *,
                       replace: bool) -> bool:
        """Upload in parts, holding one part in memory; False if the key was taken meanwhile."""
        part_size = max(self.part_size, -(-size // _MAX_PARTS))
        with _s3_errors(bucket, key):
            upload_id = self.client.create_multipart_upload(Bucket=bucket, Key=key)["UploadId"]
            try:
                parts = []
                while chunk := _read_exactly(source, part_size):
                    number = len(parts) + 1
                    response = self.client.upload_part(
                        Bucket=bucket, Key=key, UploadId=upload_id, PartNumber=number, Body=chunk)
                    part = {"PartNumber": number, "ETag": response["ETag"]}
                    # Parts uploaded with a checksum must name it again when completing.
                    part.update({name: value for name, value in response.items()
                                 if name.startswith("Checksum") and name != "ChecksumType"})
                    parts.append(part)
                condition = {} if replace else {"IfNoneMatch": "*"}
                self.client.complete_multipart_upload(
                    Bucket=bucket, Key=key, UploadId=upload_id,
                    MultipartUpload={"Parts": parts}, **condition)
            except BaseException as exc:
                with contextlib.suppress(Exception):
                    self.client.abort_multipart_upload(Bucket=bucket, Key=key, UploadId=upload_id)
                if isinstance(exc, ClientError) and not replace and _precondition_failed(exc):
                    return False
                raise
        return True

    def _get(self, bucket: str, key: str) -> dict[str, Any]:
        validate_key(key)
        with _s3_errors(bucket, key):
            return self.client.get_object(Bucket=bucket, Key=key)

    def _matches(self, bucket: str, key: str, source: BinaryIO, size: int) -> bool:
        """Whether the stored object holds exactly the source's bytes, streaming both."""
        try:
            response = self._get(bucket, key)
        except ObjectNotFound as exc:
            raise TransientStorageError(
                f"object {bucket}/{key} was deleted during a write-once put; try again") from exc
        reader = _BodyReader(response["Body"], bucket, key)
        with io.BufferedReader(reader, CHUNK_SIZE) as existing:
            return response["ContentLength"] == size and _same_stream(source, existing)


class _BodyReader(io.RawIOBase):
    """An S3 response body as a raw stream whose network failures are TransientStorageError."""

    def __init__(self, body: Any, bucket: str, key: str) -> None:
        self._body = body
        self._bucket = bucket
        self._key = key

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        with _s3_errors(self._bucket, self._key):
            data = self._body.read(len(buffer))
        buffer[:len(data)] = data
        return len(data)

    def close(self) -> None:
        if not self.closed:
            self._body.close()
        super().close()


@contextlib.contextmanager
def _s3_errors(bucket: str, key: str | None = None) -> Iterator[None]:
    """Translate S3 failures into the domain's storage errors; re-raise anything else."""
    where = f"{bucket}/{key}" if key is not None else bucket
    try:
        yield
    except ClientError as exc:
        code = _error_code(exc)
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0
        if key is not None and code in _NOT_FOUND_CODES:
            raise ObjectNotFound(bucket, key) from exc
        if code in _TRANSIENT_CODES or status >= 500:
            raise TransientStorageError(f"storage call on {where} failed: {code}") from exc
        raise
    except _TRANSIENT_EXCEPTIONS as exc:
        raise TransientStorageError(f"storage call on {where} failed: {exc}") from exc


def _error_code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


def _precondition_failed(exc: ClientError) -> bool:
    status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
    return _error_code(exc) == "PreconditionFailed" or status == 412
