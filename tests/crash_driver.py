"""Runs one claimed request through `Pipeline.run_request` and kills its own process with
SIGKILL at a chosen point of the build: used by the crash suite as a subprocess.

    python tests/crash_driver.py DATABASE_URL STORAGE_ROOT REQUEST_ID PHASE N

PHASE says where to die, N which occurrence:
  fetch          before the N-th source read
  write-before   before the N-th object write (training.json, .jsonl, manifest.json)
  write-after    after the N-th object write
  between        once the version is written and checked, before the publication starts
  publish        inside the publication transaction, before its N-th statement
  random         after N milliseconds, wherever the build is
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from typing import Any

import sqlalchemy as sa

from brightrun_pipeline.config import LifecycleSettings, RetrySettings
from brightrun_pipeline.db.repository import Database
from brightrun_pipeline.service import Pipeline
from brightrun_pipeline.storage import LocalObjectStore

HEARTBEAT_SECONDS = 0.2
STALE_AFTER_SECONDS = 1.5


def die() -> None:
    """Exactly what the OOM killer or `kill -9` does: no cleanup of any kind."""
    os.kill(os.getpid(), signal.SIGKILL)


def counting(n: int, action: Any) -> Any:
    calls = {"count": 0}

    def hit() -> None:
        calls["count"] += 1
        if calls["count"] == n:
            action()

    return hit


def arm(pipeline: Pipeline, phase: str, n: int) -> None:
    """Install the kill for the phase."""
    store = pipeline.store
    if phase == "fetch":
        hit = counting(n, die)
        read = store.get_bytes

        def get_bytes(bucket: str, key: str) -> bytes:
            if bucket == pipeline.source_bucket:
                hit()
            return read(bucket, key)

        store.get_bytes = get_bytes  # type: ignore[method-assign]
    elif phase in ("write-before", "write-after"):
        hit = counting(n, die)
        put = store.put_file

        def put_file(bucket: str, key: str, path: Any, **options: Any) -> None:
            if phase == "write-before" and bucket == pipeline.training_bucket:
                hit()
            put(bucket, key, path, **options)
            if phase == "write-after" and bucket == pipeline.training_bucket:
                hit()

        store.put_file = put_file  # type: ignore[method-assign]
    elif phase == "between":
        publish = pipeline.publish

        def dying_publish(staged: Any) -> Any:
            die()
            return publish(staged)

        pipeline.publish = dying_publish  # type: ignore[method-assign]
    elif phase == "publish":
        hit = counting(n, die)
        inside = {"open": False}
        publish_version = pipeline.db.publish_version

        def tracked(*args: Any, **kwargs: Any) -> Any:
            inside["open"] = True
            return publish_version(*args, **kwargs)

        def before_statement(*_args: Any) -> None:
            if inside["open"]:
                hit()

        pipeline.db.publish_version = tracked  # type: ignore[method-assign]
        sa.event.listen(pipeline.db.engine, "before_cursor_execute", before_statement)
    elif phase == "random":
        threading.Timer(n / 1000, die).start()
    else:
        raise SystemExit(f"unknown phase {phase!r}")


def main(argv: list[str]) -> None:
    database_url, storage_root, request_id, phase, n = argv
    pipeline = Pipeline(
        Database(database_url), LocalObjectStore(storage_root), fetch_concurrency=4,
        retry=RetrySettings(attempts=3, base_delay=0.0, max_delay=0.0),
        lifecycle=LifecycleSettings(heartbeat_seconds=HEARTBEAT_SECONDS,
                                    stale_after_seconds=STALE_AFTER_SECONDS))
    arm(pipeline, phase, int(n))
    request = pipeline.db.get_request(request_id)
    assert request is not None
    pipeline.run_request(request_id, f"crash-{request_id[:8]}-{request.attempts}",
                         request.attempts)


if __name__ == "__main__":
    main(sys.argv[1:])
