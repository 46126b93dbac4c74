"""Latency from a selection-request INSERT to `succeeded`, with the real daemon running.

`python -m bench.request_latency [SAMPLES]` sets up a fresh embedded default (SQLite database,
local storage, DAGSTER_HOME from the repository's dagster.yaml) in a temporary directory, starts
`dagster-daemon run -w workspace.yaml`, inserts requests one at a time with plain SQL and prints
the seconds each took (JSON list) on its last line.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import orjson
import sqlalchemy as sa

from bench.demo_home import demo_home

REPO = Path(__file__).resolve().parent.parent


def main(samples: int) -> None:
    with tempfile.TemporaryDirectory(prefix="brightrun-latency-") as scratch:
        home = Path(scratch)
        setup = demo_home(home, seed=5)
        env = {**os.environ, **setup.env}
        database, dataset = setup.database, setup.dataset
        ids = [c.conversation_id for c in dataset.conversations]
        daemon = subprocess.Popen(
            [str(Path(sys.executable).parent / "dagster-daemon"), "run", "-w", "workspace.yaml"],
            cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            start_new_session=True)
        latencies = []
        try:
            warm_up = True
            while len(latencies) < samples:
                request_id = str(uuid.uuid4())
                started = time.perf_counter()
                with database.engine.begin() as connection:
                    connection.execute(sa.text(
                        "INSERT INTO selection_requests (id, new_file_name, conversation_ids) "
                        "VALUES (:id, :name, :ids)"),
                        {"id": request_id, "name": f"Latency {request_id[:8]}",
                         "ids": orjson.dumps(ids).decode()})
                deadline = time.monotonic() + 300
                while time.monotonic() < deadline:
                    request = database.get_request(request_id)
                    if request is not None and request.status in ("succeeded", "failed",
                                                                  "rejected"):
                        break
                    time.sleep(0.1)
                assert request is not None and request.status == "succeeded", request
                # The first request also pays for the daemon's start-up; it is not counted.
                if not warm_up:
                    latencies.append(time.perf_counter() - started)
                warm_up = False
        finally:
            os.killpg(daemon.pid, signal.SIGINT)
            daemon.wait(timeout=60)
            subprocess.run(["pkill", "-f", str(home)], check=False)
            database.dispose()
        print(orjson.dumps(latencies).decode())


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 5)
