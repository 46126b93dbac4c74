"""Object storage: one interface, a local-directory store and an S3 store."""

from __future__ import annotations

import contextlib
import errno
import io
import os
import re
import secrets
import stat
import unicodedata
from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

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


def validate_prefix(prefix: str) -> str:
    """A listing prefix is a valid key, optionally followed by '/' and part of a segment."""
    head, sep, tail = prefix.rpartition("/")
    problem = "leading '/'" if sep and not head else _character_problem(tail)
    if problem:
        raise InvalidKey(f"invalid storage prefix {prefix!r}: {problem}")
    if head:
        validate_key(head)
    return prefix


def read_exactly(stream: BinaryIO, size: int) -> bytes:
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


def same_stream(first: BinaryIO, second: BinaryIO) -> bool:
    """Compare two streams chunk by chunk, stopping at the first difference."""
    while True:
        left = read_exactly(first, CHUNK_SIZE)
        if left != read_exactly(second, CHUNK_SIZE):
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
    def open_read(self, bucket: str, key: str, *,
                  start: int = 0) -> contextlib.AbstractContextManager[BinaryIO]:
        """Open the object for streaming reads from byte `start`; ObjectNotFound if missing."""

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

    def download_url(self, bucket: str, key: str, *, file_name: str,
                     expires_in: int) -> str | None:
        """A short-lived URL that serves the object as `file_name`, or None when the store
        cannot give one (then the caller streams the object itself)."""
        return None


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
    def open_read(self, bucket: str, key: str, *, start: int = 0) -> Iterator[BinaryIO]:
        """Open the object for streaming reads from byte `start`; ObjectNotFound if missing."""
        path = self._object_file(bucket, key, existing_bucket=True)
        try:
            stream = open(path, "rb")  # noqa: SIM115 - closed below
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError) as exc:
            raise ObjectNotFound(bucket, key) from exc
        with stream:
            if start:
                stream.seek(start)
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
        validate_prefix(prefix)
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
        return same_stream(left, right)


def _fsync_file(path: Path) -> None:
    with path.open("rb") as stream:
        os.fsync(stream.fileno())


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
