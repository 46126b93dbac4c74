"""The builder's writers: write-behind hashing, early writeback and fsync, segmented spools."""

from __future__ import annotations

import hashlib
import os
import random
from pathlib import Path

import pytest

from brightrun_pipeline import streams
from brightrun_pipeline.streams import HashingWriter, SpoolFiles


def _pieces(seed: int, count: int) -> list[bytes]:
    """Random pieces from a few bytes to more than a chunk, so chunking is exercised both ways."""
    rng = random.Random(seed)
    sizes = [rng.choice((1, 17, 4096, 70_000, streams.CHUNK + 3)) for _ in range(count)]
    return [rng.randbytes(size) for size in sizes]


def test_writes_land_in_order_with_their_hash_and_size(tmp_path: Path) -> None:
    pieces = _pieces(1, 40)
    expected = b"".join(pieces)
    with open(tmp_path / "out", "wb") as raw, HashingWriter(raw) as writer:
        for piece in pieces:
            writer.write(piece)
        result = writer.result("some/key")
    assert (tmp_path / "out").read_bytes() == expected
    assert result.size == len(expected)
    assert result.sha256 == hashlib.sha256(expected).hexdigest()


def test_a_durable_writer_starts_writeback_in_order_and_fsyncs(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(streams, "WRITEBACK", 256 << 10)
    ranges: list[tuple[int, int]] = []
    monkeypatch.setattr(streams, "_SYNC_FILE_RANGE",
                        lambda fd, offset, length, flags: ranges.append((offset, length)) or 0)
    synced: list[int] = []
    real_fsync = os.fsync
    monkeypatch.setattr(streams.os, "fsync", lambda fd: (synced.append(fd), real_fsync(fd))[1])
    pieces = _pieces(2, 30)
    expected = b"".join(pieces)

    with open(tmp_path / "out", "wb") as raw, HashingWriter(raw, durable=True) as writer:
        for piece in pieces:
            writer.write(piece)
        writer.sync()
        digest = writer.hexdigest()
        assert synced == [raw.fileno()]

    assert (tmp_path / "out").read_bytes() == expected
    assert digest == hashlib.sha256(expected).hexdigest()
    # Consecutive ranges from the start of the file, each at least WRITEBACK long.
    assert ranges and ranges[0][0] == 0
    for (offset, length), (next_offset, _) in zip(ranges, ranges[1:], strict=False):
        assert next_offset == offset + length and length >= streams.WRITEBACK
    assert sum(length for _, length in ranges) <= len(expected)


def test_a_writer_that_is_not_durable_never_syncs(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(streams, "WRITEBACK", 1024)
    calls: list[object] = []
    monkeypatch.setattr(streams, "_SYNC_FILE_RANGE", lambda *args: calls.append(args) or 0)
    monkeypatch.setattr(streams.os, "fsync", lambda fd: calls.append(fd))
    with open(tmp_path / "out", "wb") as raw, HashingWriter(raw) as writer:
        for piece in _pieces(3, 10):
            writer.write(piece)
        writer.sync()
        writer.flush()
    assert calls == []


def test_a_failed_write_on_the_helper_thread_reaches_the_caller(tmp_path: Path) -> None:
    (tmp_path / "read-only").write_bytes(b"")
    with open(tmp_path / "read-only", "rb") as raw, HashingWriter(raw) as writer:  # noqa: SIM117
        writer.write(b"x" * (streams.CHUNK + 1))
        with pytest.raises(OSError):
            writer.flush()


def test_spool_segments_read_back_by_offset_and_drain_in_order(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(streams, "SEGMENT", 1000)
    monkeypatch.setattr(streams, "CHUNK", 256)  # hand writes to the files often
    files = SpoolFiles(tmp_path, name="test")
    pieces = [bytes([i % 251]) * size for i, size in enumerate((10, 999, 1, 2500, 7, 1200, 3))]
    offsets = []
    with HashingWriter(files, hashed=False) as spool:
        for piece in pieces:
            offsets.append(spool.size)
            spool.write(piece)
        spool.flush()
    assert len(list(tmp_path.glob("test-*"))) > 1  # the pieces span several segments
    for offset, piece in zip(offsets, pieces, strict=True):
        assert files.read(offset, len(piece)) == piece
    # A range that starts in one segment and ends in another.
    joined = b"".join(pieces)
    assert files.read(5, 3000) == joined[5:3005]

    with open(tmp_path / "out", "wb") as raw, HashingWriter(raw) as out:
        files.drain(out)
        digest = out.hexdigest()
    assert (tmp_path / "out").read_bytes() == joined
    assert digest == hashlib.sha256(joined).hexdigest()
    assert list(tmp_path.glob("test-*")) == []


def test_a_sweep_removes_only_the_work_of_dead_builds(tmp_path: Path) -> None:
    import subprocess
    import sys

    from brightrun_pipeline.builder import _held, sweep_dead_builds

    dead, live = tmp_path / "build-dead", tmp_path / "build-live"
    dead.mkdir()
    live.mkdir()
    (dead / "training.json").write_bytes(b"half")
    # A build whose process was killed holding its lock: the kernel released it.
    subprocess.run([sys.executable, "-c", (
        "import os, signal, sys; from pathlib import Path; "
        "from brightrun_pipeline.builder import _held; "
        f"ctx = _held(Path({str(dead / '.alive')!r})); ctx.__enter__(); "
        "os.kill(os.getpid(), signal.SIGKILL)")], check=False)
    with _held(live / ".alive"):
        assert sweep_dead_builds(tmp_path) == 1
        assert not dead.exists() and live.exists()
    assert sweep_dead_builds(tmp_path) == 1  # once its build ended, its lock is free too
