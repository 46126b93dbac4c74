"""The S3 object store (S3 or an S3-compatible service), in its own module so that code that only
uses the local store does not load botocore."""

from __future__ import annotations

import contextlib
import io
import os
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO

from botocore.client import BaseClient
from botocore.exceptions import (
    ClientError,
    HTTPClientError,
    IncompleteReadError,
)
from botocore.exceptions import (
    ConnectionError as ClientConnectionError,
)

from brightrun_pipeline.errors import (
    ObjectExists,
    ObjectNotFound,
    TransientStorageError,
)
from brightrun_pipeline.storage import (
    CHUNK_SIZE,
    ObjectInfo,
    ObjectStore,
    read_exactly,
    same_stream,
    validate_key,
    validate_prefix,
)

# S3 rejects parts below 5 MiB (except the last) and uploads of more than 10,000 parts.
_MIN_PART_SIZE = 5 * 1024 * 1024
_MAX_PARTS = 10_000
_NOT_FOUND_CODES = frozenset({"NoSuchKey", "NotFound", "404"})
_TRANSIENT_CODES = frozenset({
    "SlowDown", "Throttling", "ThrottlingException", "RequestTimeout", "RequestTimeoutException",
    "InternalError", "ServiceUnavailable", "ConditionalRequestConflict", "OperationAborted",
})
# Every failure of the connection: refused, reset, closed early, timed out, cut off mid-body.
_TRANSIENT_EXCEPTIONS = (ClientConnectionError, HTTPClientError, IncompleteReadError)


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
    def open_read(self, bucket: str, key: str, *, start: int = 0) -> Iterator[BinaryIO]:
        """Open the object for streaming reads from byte `start`; ObjectNotFound if missing."""
        body = self._body_from(bucket, key, start)
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
        validate_prefix(prefix)
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

    def download_url(self, bucket: str, key: str, *, file_name: str,
                     expires_in: int) -> str | None:
        """A presigned GET that S3 answers with `file_name` as the attachment's name."""
        validate_key(key)
        return str(self.client.generate_presigned_url(
            "get_object", ExpiresIn=expires_in,
            Params={"Bucket": bucket, "Key": key,
                    "ResponseContentDisposition": f'attachment; filename="{file_name}"'}))

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
                while chunk := read_exactly(source, part_size):
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

    def _get(self, bucket: str, key: str, **options: str) -> dict[str, Any]:
        validate_key(key)
        with _s3_errors(bucket, key):
            return self.client.get_object(Bucket=bucket, Key=key, **options)

    def _body_from(self, bucket: str, key: str, start: int) -> Any:
        """The object's body from byte `start` (a ranged GET unless it starts at 0)."""
        if not start:
            return self._get(bucket, key)["Body"]
        try:
            return self._get(bucket, key, Range=f"bytes={start}-")["Body"]
        except ClientError as exc:
            # A read resumed exactly at the end of the object: nothing is left to read.
            if _error_code(exc) != "InvalidRange":
                raise
            return io.BytesIO()

    def _matches(self, bucket: str, key: str, source: BinaryIO, size: int) -> bool:
        """Whether the stored object holds exactly the source's bytes, streaming both."""
        try:
            response = self._get(bucket, key)
        except ObjectNotFound as exc:
            raise TransientStorageError(
                f"object {bucket}/{key} was deleted during a write-once put; try again") from exc
        reader = _BodyReader(response["Body"], bucket, key)
        with io.BufferedReader(reader, CHUNK_SIZE) as existing:
            return response["ContentLength"] == size and same_stream(source, existing)


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
