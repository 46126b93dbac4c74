"""The object stores: the same behaviour from the local directory store and from S3 (moto)."""

from __future__ import annotations

import os
import random
import socket
import tempfile
from collections.abc import Callable
from pathlib import Path

import boto3
import pytest
from botocore.client import BaseClient
from botocore.config import Config

from brightrun_pipeline.config import RetrySettings
from brightrun_pipeline.errors import (
    InvalidKey,
    ObjectExists,
    ObjectNotFound,
    TransientStorageError,
)
from brightrun_pipeline.retry import RetryingStore
from brightrun_pipeline.s3_store import S3ObjectStore
from brightrun_pipeline.storage import (
    LocalObjectStore,
    ObjectInfo,
    ObjectStore,
    validate_key,
)

MIB = 1024 * 1024

INVALID_KEYS = [
    "",
    "../x",
    "a/../../x",
    "..",
    ".",
    "/abs",
    "trailing/",
    "a//b",
    "a/./b",
    "a\\b",
    "x\x00",
    "tab\there",
    "line\nbreak",
    "del\x7f",
    "c1\x85",
    "é" * 513,
    "surrogate\udc80",
]

VALID_KEYS = [
    "training.json",
    "4b0f6a4e-2c7b-4d0e-9b55-7d3c1f2a9e10/v1/training.jsonl",
    "a/b/c/d",
    ".hidden/..dots../x.y",
    "unicodé/名前",
    "k" * 1024,
]


def random_bytes(size: int, seed: int = 0) -> bytes:
    """Deterministic incompressible test data."""
    return random.Random(seed).randbytes(size)


def write_file(directory: Path, data: bytes) -> Path:
    """A file holding data, in directory."""
    fd, name = tempfile.mkstemp(dir=directory)
    with os.fdopen(fd, "wb") as out:
        out.write(data)
    return Path(name)


@pytest.fixture(params=["local", "s3", "s3-retrying"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> ObjectStore:
    """Each behavioural test runs once per store (and once through the retry layer)."""
    if request.param == "local":
        return LocalObjectStore(tmp_path / "store")
    s3 = S3ObjectStore(request.getfixturevalue("s3_client"))
    if request.param == "s3-retrying":
        return RetryingStore(s3, RetrySettings(attempts=2, base_delay=0, max_delay=0))
    return s3


@pytest.fixture
def bucket(store: ObjectStore, bucket_name: str) -> str:
    """A fresh, empty bucket in the store under test."""
    store.ensure_bucket(bucket_name)
    return bucket_name


def test_bytes_round_trip(store: ObjectStore, bucket: str) -> None:
    data = bytes(range(256)) * 10
    store.put_bytes(bucket, "tf/v1/training.json", data)
    store.put_bytes(bucket, "empty", b"")

    assert store.get_bytes(bucket, "tf/v1/training.json") == data
    assert store.stat(bucket, "tf/v1/training.json") == ObjectInfo(size=len(data))
    assert store.get_bytes(bucket, "empty") == b""
    assert store.stat(bucket, "empty") == ObjectInfo(size=0)


def test_file_round_trip_consumes_the_file(store: ObjectStore, bucket: str,
                                           tmp_path: Path) -> None:
    data = random_bytes(300_000)
    from_scratch = write_file(store.scratch_dir(bucket), data)
    from_elsewhere = write_file(tmp_path, data[::-1])

    store.put_file(bucket, "a/scratch.jsonl", from_scratch)
    store.put_file(bucket, "a/elsewhere.jsonl", from_elsewhere)

    assert store.get_bytes(bucket, "a/scratch.jsonl") == data
    assert store.get_bytes(bucket, "a/elsewhere.jsonl") == data[::-1]
    assert not from_scratch.exists()
    assert not from_elsewhere.exists()


def test_streaming_read_in_chunks(store: ObjectStore, bucket: str) -> None:
    data = random_bytes(3 * MIB + 17)
    store.put_bytes(bucket, "big.jsonl", data)

    with store.open_read(bucket, "big.jsonl") as stream:
        first = stream.read(10)
        chunks = [first]
        while chunk := stream.read(100_000):
            assert len(chunk) <= 100_000
            chunks.append(chunk)
        assert stream.read(1) == b""

    assert first == data[:10]
    assert b"".join(chunks) == data


def test_streaming_read_from_an_offset(store: ObjectStore, bucket: str) -> None:
    data = random_bytes(2 * MIB + 5)
    store.put_bytes(bucket, "big.json", data)

    for start in (0, 1, MIB + 3, len(data) - 1, len(data)):
        with store.open_read(bucket, "big.json", start=start) as stream:
            assert stream.read() == data[start:]


def test_missing_object(store: ObjectStore, bucket: str) -> None:
    assert store.stat(bucket, "nope/training.json") is None
    with pytest.raises(ObjectNotFound) as raised:
        store.get_bytes(bucket, "nope/training.json")
    assert (raised.value.bucket, raised.value.key) == (bucket, "nope/training.json")
    with pytest.raises(ObjectNotFound), store.open_read(bucket, "nope/training.json"):
        pass


def test_same_bytes_again_is_a_no_op(store: ObjectStore, bucket: str, tmp_path: Path) -> None:
    data = b'{"version": 1}'
    store.put_bytes(bucket, "v1/manifest.json", data)
    store.put_bytes(bucket, "v1/manifest.json", data)
    retry = write_file(store.scratch_dir(bucket), data)
    store.put_file(bucket, "v1/manifest.json", retry)

    assert store.get_bytes(bucket, "v1/manifest.json") == data
    assert not retry.exists()
    assert list(store.list_keys(bucket)) == ["v1/manifest.json"]


def test_other_bytes_raise_object_exists(store: ObjectStore, bucket: str) -> None:
    store.put_bytes(bucket, "v1/manifest.json", b'{"version": 1}')
    with pytest.raises(ObjectExists) as raised:
        store.put_bytes(bucket, "v1/manifest.json", b'{"version": 2}')
    assert (raised.value.bucket, raised.value.key) == (bucket, "v1/manifest.json")
    with pytest.raises(ObjectExists):
        store.put_bytes(bucket, "v1/manifest.json", b'{"version": 1} ')

    rival = write_file(store.scratch_dir(bucket), b'{"version": 3}')
    with pytest.raises(ObjectExists):
        store.put_file(bucket, "v1/manifest.json", rival)

    assert store.get_bytes(bucket, "v1/manifest.json") == b'{"version": 1}'
    assert rival.read_bytes() == b'{"version": 3}'


def test_replace_overwrites(store: ObjectStore, bucket: str) -> None:
    store.put_bytes(bucket, "leftover.json", b"old and longer")
    store.put_bytes(bucket, "leftover.json", b"new", replace=True)
    assert store.get_bytes(bucket, "leftover.json") == b"new"

    newer = write_file(store.scratch_dir(bucket), b"newest")
    store.put_file(bucket, "leftover.json", newer, replace=True)
    assert store.get_bytes(bucket, "leftover.json") == b"newest"
    assert not newer.exists()

    store.put_bytes(bucket, "fresh.json", b"first", replace=True)
    assert store.get_bytes(bucket, "fresh.json") == b"first"


def test_list_keys_sorted_and_filtered_by_prefix(store: ObjectStore, bucket: str) -> None:
    keys = ["b/2", "a/b", "a-c", "a0", "a/a/x", "b/10", "b10"]
    for key in keys:
        store.put_bytes(bucket, key, key.encode())

    assert list(store.list_keys(bucket)) == sorted(keys)
    assert list(store.list_keys(bucket, "a/")) == ["a/a/x", "a/b"]
    assert list(store.list_keys(bucket, "a")) == ["a-c", "a/a/x", "a/b", "a0"]
    assert list(store.list_keys(bucket, "b/1")) == ["b/10"]
    assert list(store.list_keys(bucket, "a/a/x")) == ["a/a/x"]
    assert list(store.list_keys(bucket, "zz/")) == []


def test_list_keys_ignores_scratch_files(store: ObjectStore, bucket: str) -> None:
    store.put_bytes(bucket, "kept", b"1")
    write_file(store.scratch_dir(bucket), b"half-built training file")

    assert list(store.list_keys(bucket)) == ["kept"]


def test_delete(store: ObjectStore, bucket: str) -> None:
    store.put_bytes(bucket, "x/y/z", b"leftover")
    store.put_bytes(bucket, "x/keep", b"kept")

    store.delete(bucket, "x/y/z")
    store.delete(bucket, "x/y/z")
    store.delete(bucket, "never/written")

    assert store.stat(bucket, "x/y/z") is None
    assert list(store.list_keys(bucket)) == ["x/keep"]
    # Once its last object is gone, a prefix is free to be a key again (as in S3).
    store.put_bytes(bucket, "x/y", b"now an object")
    assert store.get_bytes(bucket, "x/y") == b"now an object"


def test_ensure_bucket_is_idempotent(store: ObjectStore, bucket: str) -> None:
    store.put_bytes(bucket, "kept", b"1")
    store.ensure_bucket(bucket)
    assert store.get_bytes(bucket, "kept") == b"1"


def test_local_path(store: ObjectStore, bucket: str) -> None:
    store.put_bytes(bucket, "v1/training.json", b"{}")
    path = store.local_path(bucket, "v1/training.json")
    if isinstance(store, LocalObjectStore):
        assert path is not None and path.read_bytes() == b"{}"
    else:
        assert path is None


@pytest.mark.parametrize("key", VALID_KEYS)
def test_validate_key_accepts(key: str) -> None:
    assert validate_key(key) == key


@pytest.mark.parametrize("key", INVALID_KEYS)
def test_validate_key_rejects(key: str) -> None:
    with pytest.raises(InvalidKey):
        validate_key(key)


@pytest.mark.parametrize("key", INVALID_KEYS)
def test_every_operation_rejects_invalid_keys(store: ObjectStore, bucket: str, key: str) -> None:
    operations: list[Callable[[], object]] = [
        lambda: store.get_bytes(bucket, key),
        lambda: store.stat(bucket, key),
        lambda: store.put_bytes(bucket, key, b"x"),
        lambda: store.put_bytes(bucket, key, b"x", replace=True),
        lambda: store.delete(bucket, key),
        lambda: store.local_path(bucket, key),
        lambda: store.open_read(bucket, key).__enter__(),
    ]
    for operation in operations:
        with pytest.raises(InvalidKey):
            operation()
    assert list(store.list_keys(bucket)) == []


@pytest.mark.parametrize("prefix", ["/a", "../", "a/../", "a//", "a\\", "a\x00"])
def test_list_keys_rejects_invalid_prefixes(store: ObjectStore, bucket: str, prefix: str) -> None:
    with pytest.raises(InvalidKey):
        list(store.list_keys(bucket, prefix))


def test_s3_multipart_upload(make_s3_client: Callable[..., BaseClient], bucket_name: str,
                             tmp_path: Path) -> None:
    client = make_s3_client()
    store = S3ObjectStore(client, multipart_threshold=5 * MIB, part_size=5 * MIB)
    store.ensure_bucket(bucket_name)
    data = random_bytes(11 * MIB + 123)

    store.put_file(bucket_name, "tf/v1/training.jsonl", write_file(tmp_path, data))
    store.put_bytes(bucket_name, "tf/v1/training.json", data)

    for key in ("tf/v1/training.jsonl", "tf/v1/training.json"):
        assert store.get_bytes(bucket_name, key) == data
        assert store.stat(bucket_name, key) == ObjectInfo(size=len(data))

    store.put_bytes(bucket_name, "tf/v1/training.jsonl", data)
    altered = data[:-1] + bytes([data[-1] ^ 1])
    with pytest.raises(ObjectExists):
        store.put_file(bucket_name, "tf/v1/training.jsonl", write_file(tmp_path, altered))
    store.put_bytes(bucket_name, "tf/v1/training.json", altered, replace=True)

    assert store.get_bytes(bucket_name, "tf/v1/training.jsonl") == data
    assert store.get_bytes(bucket_name, "tf/v1/training.json") == altered
    assert client.list_multipart_uploads(Bucket=bucket_name).get("Uploads", []) == []


def test_s3_part_size_below_the_s3_minimum_is_refused(s3_client: BaseClient) -> None:
    with pytest.raises(ValueError):
        S3ObjectStore(s3_client, part_size=MIB)


@pytest.fixture
def unreachable_store() -> S3ObjectStore:
    """An S3 store pointed at a local port nothing listens on, without botocore retries."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    client = boto3.client(
        "s3",
        endpoint_url=f"http://127.0.0.1:{port}",
        region_name="us-east-1",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
        config=Config(retries={"mode": "standard", "total_max_attempts": 1}, connect_timeout=1),
    )
    return S3ObjectStore(client)


@pytest.mark.parametrize("operation", [
    lambda store: store.get_bytes("conversation-files", "c/enriched.json"),
    lambda store: store.open_read("conversation-files", "c/enriched.json").__enter__(),
    lambda store: store.stat("conversation-files", "c/enriched.json"),
    lambda store: store.put_bytes("training-files", "tf/v1/training.json", b"{}"),
    lambda store: list(store.list_keys("training-files", "tf/")),
    lambda store: store.delete("training-files", "tf/v1/training.json"),
    lambda store: store.ensure_bucket("training-files"),
], ids=["get_bytes", "open_read", "stat", "put_bytes", "list_keys", "delete", "ensure_bucket"])
def test_s3_connection_failures_are_transient(
        unreachable_store: S3ObjectStore, operation: Callable[[S3ObjectStore], object]) -> None:
    with pytest.raises(TransientStorageError):
        operation(unreachable_store)


@pytest.fixture
def local_store(tmp_path: Path) -> LocalObjectStore:
    """A local store with one bucket, `training-files`."""
    store = LocalObjectStore(tmp_path / "store")
    store.ensure_bucket("training-files")
    return store


def test_local_store_layout_and_atomic_move(local_store: LocalObjectStore) -> None:
    scratch = local_store.scratch_dir("training-files")
    built = write_file(scratch, b"[]")
    inode = built.stat().st_ino

    local_store.put_file("training-files", "tf/v1/training.json", built)

    target = local_store.root / "training-files" / "tf" / "v1" / "training.json"
    assert scratch == local_store.root / "training-files" / ".scratch"
    assert target.read_bytes() == b"[]"
    assert target.stat().st_ino == inode
    assert list(scratch.iterdir()) == []


def test_local_store_rejects_symlink_escapes(local_store: LocalObjectStore,
                                             tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret").write_bytes(b"secret")
    bucket_dir = local_store.root / "training-files"
    (bucket_dir / "link").symlink_to(outside, target_is_directory=True)
    (bucket_dir / "file-link").symlink_to(outside / "secret")
    (bucket_dir / "scratch-link").symlink_to(bucket_dir / ".scratch", target_is_directory=True)

    for key in ("link/secret", "file-link", "link/new", "scratch-link/x"):
        with pytest.raises(InvalidKey):
            local_store.get_bytes("training-files", key)
        with pytest.raises(InvalidKey):
            local_store.put_bytes("training-files", key, b"planted")
        with pytest.raises(InvalidKey):
            local_store.delete("training-files", key)
    assert sorted(p.name for p in outside.iterdir()) == ["secret"]
    assert (outside / "secret").read_bytes() == b"secret"
    assert list(local_store.list_keys("training-files")) == []
    assert list(local_store.list_keys("training-files", "link/")) == []


@pytest.mark.parametrize("bucket", ["ab", "Upper", "a_b", "-ab", "ab.", "a..b", "..", "../x",
                                    "a/b", "x" * 64, ".scratch"])
def test_local_store_rejects_bad_bucket_names(local_store: LocalObjectStore, bucket: str) -> None:
    with pytest.raises(InvalidKey):
        local_store.ensure_bucket(bucket)
    with pytest.raises(InvalidKey):
        local_store.stat(bucket, "key")


def test_local_store_reserves_the_scratch_directory(local_store: LocalObjectStore) -> None:
    with pytest.raises(InvalidKey):
        local_store.put_bytes("training-files", ".scratch/x", b"x")
    assert list(local_store.list_keys("training-files", ".scratch/")) == []


def test_local_store_cannot_hold_a_key_that_is_also_a_prefix(
        local_store: LocalObjectStore) -> None:
    local_store.put_bytes("training-files", "a/b", b"1")
    with pytest.raises(InvalidKey):
        local_store.put_bytes("training-files", "a", b"2")
    with pytest.raises(InvalidKey):
        local_store.put_bytes("training-files", "a/b/c", b"3")
    assert local_store.stat("training-files", "a") is None
    assert list(local_store.list_keys("training-files")) == ["a/b"]


def test_local_store_needs_the_bucket(tmp_path: Path) -> None:
    store = LocalObjectStore(tmp_path / "store")
    assert store.stat("training-files", "k") is None
    with pytest.raises(FileNotFoundError):
        store.put_bytes("training-files", "k", b"x")


def test_local_store_put_file_of_the_object_itself_keeps_it(local_store: LocalObjectStore) -> None:
    local_store.put_bytes("training-files", "tf/v1/training.json", b"[]")
    path = local_store.local_path("training-files", "tf/v1/training.json")
    assert path is not None

    local_store.put_file("training-files", "tf/v1/training.json", path)

    assert local_store.get_bytes("training-files", "tf/v1/training.json") == b"[]"


def test_s3_store_from_the_resource_pools_as_many_connections_as_fetches(
        s3_endpoint_url: str, bucket_name: str) -> None:
    from resources import ObjectStoreResource

    store = ObjectStoreResource(backend="s3", endpoint_url=s3_endpoint_url,
                                region_name="us-east-1", aws_access_key_id="testing",
                                aws_secret_access_key="testing",
                                max_pool_connections=24).store()
    assert isinstance(store, S3ObjectStore)
    assert store.client.meta.config.max_pool_connections == 24
    # botocore makes one attempt per call (the pipeline retries); the rest as dagster-aws's own
    # S3Resource configures it.
    assert store.client.meta.config.retries == {"mode": "standard", "total_max_attempts": 1}
    from dagster_aws.s3 import S3Resource
    plain = S3Resource(endpoint_url=s3_endpoint_url, region_name="us-east-1").get_client()
    assert plain.meta.config.retries["total_max_attempts"] > 1
    assert store.client.meta.endpoint_url == plain.meta.endpoint_url == s3_endpoint_url
    assert store.max_useful_concurrency == 24
    store.ensure_bucket(bucket_name)
    store.put_bytes(bucket_name, "a/b.json", b"{}")
    assert store.get_bytes(bucket_name, "a/b.json") == b"{}"
