"""A request of 80 conversations on a fresh demo setup: seconds from claim to published.

`python -m bench.request80 HOME dagster|direct` prints the seconds on its last line.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from bench.demo_home import demo_home
from brightrun_pipeline.launcher import run_request_in_process
from brightrun_pipeline.service import Pipeline

setup = demo_home(Path(sys.argv[1]), seed=3)
settings, dataset = setup.settings, setup.dataset
pipeline = Pipeline.from_settings(settings, setup.database, setup.store)
request = pipeline.submit(conversation_ids=[c.conversation_id for c in dataset.conversations],
                          new_file_name="Bench request")
if sys.argv[2] == "dagster":
    import dagster  # noqa: F401  (imported before timing, as in a long-lived process)

    from brightrun_pipeline.definitions import build_definitions  # noqa: F401

    # An existing setup: the instance's storage is created once, not by the timed run.
    dagster.DagsterInstance.get().dispose()
started = time.perf_counter()
claimed = pipeline.claim(request.id)
assert claimed is not None
if sys.argv[2] == "dagster":
    outcome = run_request_in_process(settings, request.id, claimed.target_file_id)
    assert outcome.success
else:
    pipeline.run_request(request.id)
elapsed = time.perf_counter() - started
stored = pipeline.db.get_request(request.id)
assert stored is not None and stored.status == "succeeded", stored
print(f"{elapsed:.3f}")
