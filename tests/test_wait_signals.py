"""What closing the terminal (SIGHUP) and Ctrl-C (SIGINT) do to `brightrun files add --wait`
when no daemon runs and the CLI processes the request itself."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from audit import audit_file
from seed import create_file, seed_dataset

from brightrun_pipeline.demo_data import generate_demo_dataset
from brightrun_pipeline.service import Pipeline

BRIGHTRUN = Path(sys.executable).parent / "brightrun"


@pytest.fixture
def curator(make_pipeline: Callable[..., Pipeline], database_url: str,
            tmp_path: Path) -> tuple[Pipeline, str, dict[str, str], list]:
    pipeline = make_pipeline()
    dataset = generate_demo_dataset(29, batches=1, conversations_per_batch=6, unbatched=0,
                                    ineligible_per_batch=0)
    seed_dataset(pipeline, dataset)
    file_id = create_file(pipeline, dataset.conversations[:2]).training_file_id
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("BRIGHTRUN_")},
           "BRIGHTRUN_DATABASE_URL": database_url,
           "BRIGHTRUN_STORAGE_ROOT": str(tmp_path / "storage"),
           "DAGSTER_HOME": str(tmp_path / "dagster"),
           "BRIGHTRUN_HEARTBEAT_SECONDS": "0.5", "BRIGHTRUN_STALE_AFTER_SECONDS": "3"}
    subprocess.run([str(BRIGHTRUN), "init"], env=env, cwd=tmp_path, check=True,
                   capture_output=True)
    return pipeline, file_id, env, dataset.conversations[2:]


def start_wait(file_id: str, conversation_id: str, env: dict[str, str],
               cwd: Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [str(BRIGHTRUN), "files", "add", file_id, "--conversation", conversation_id, "--wait"],
        env=env, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_until_claimed(pipeline: Pipeline, conversation_id: str) -> str:
    """The request's id once the CLI has claimed it (it runs it from then on)."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        for request in pipeline.db.list_requests():
            if conversation_id in request.conversation_ids and request.status in (
                    "queued", "running"):
                return request.id
        time.sleep(0.05)
    pytest.fail("the CLI never claimed its request")


def test_closing_the_terminal_does_not_stop_the_build(
        curator: tuple[Pipeline, str, dict[str, str], list], tmp_path: Path) -> None:
    pipeline, file_id, env, rows = curator
    cli = start_wait(file_id, rows[0].conversation_id, env, tmp_path)
    request_id = wait_until_claimed(pipeline, rows[0].conversation_id)

    cli.send_signal(signal.SIGHUP)
    cli.communicate(timeout=120)

    assert cli.returncode == 0
    request = pipeline.db.get_request(request_id)
    assert request is not None and request.status == "succeeded"
    assert audit_file(pipeline, file_id).versions == 2


def test_ctrl_c_leaves_nothing_claimed(
        curator: tuple[Pipeline, str, dict[str, str], list], tmp_path: Path) -> None:
    pipeline, file_id, env, rows = curator
    cli = start_wait(file_id, rows[1].conversation_id, env, tmp_path)
    request_id = wait_until_claimed(pipeline, rows[1].conversation_id)

    cli.send_signal(signal.SIGINT)
    out, err = cli.communicate(timeout=120)

    request = pipeline.db.get_request(request_id)
    assert request is not None
    # Either the run had got far enough to finish, or the request failed as stopped by the user:
    # never a request left queued or running by a process that is gone.
    assert request.status in ("succeeded", "failed"), (request, out, err)
    assert "Traceback" not in out + err
    print(f"Ctrl-C during --wait: request {request.status}, exit {cli.returncode}")
    if request.status == "succeeded":
        assert cli.returncode == 0
    else:
        assert cli.returncode in (4, 130) and request.id in err
        assert request.error is not None and "Ctrl-C" in request.error.message
    audit_file(pipeline, file_id)


def test_a_library_logging_the_ctrl_c_prints_no_stack_trace() -> None:
    """Ctrl-C can land while SQLAlchemy closes a pooled connection (SQLAlchemy logs it with its
    stack trace and passes it on) or inside a finalizer (the interpreter reports it). The CLI's
    terminal shows its own message only, and other errors still reach it."""
    script = (
        "import logging\n"
        "from brightrun_pipeline.cli import quiet_interrupts\n"
        "quiet_interrupts()\n"
        "pool = logging.getLogger('sqlalchemy.pool.impl.QueuePool')\n"
        "try:\n"
        "    raise KeyboardInterrupt\n"
        "except KeyboardInterrupt:\n"
        "    pool.error('Exception closing connection', exc_info=True)\n"
        "try:\n"
        "    raise OSError('disk full')\n"
        "except OSError:\n"
        "    pool.error('Exception writing', exc_info=True)\n"
        "class Finalized:\n"
        "    def __init__(self, error):\n"
        "        self.error = error\n"
        "    def __del__(self):\n"
        "        raise self.error\n"
        "Finalized(KeyboardInterrupt())\n"
        "Finalized(OSError('finalizer failed'))\n")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          check=True)
    assert "Exception closing connection" not in done.stderr
    assert "KeyboardInterrupt" not in done.stderr
    assert "Exception writing" in done.stderr and "disk full" in done.stderr
    assert "finalizer failed" in done.stderr
