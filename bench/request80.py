"""A request of 80 conversations on a fresh demo setup: seconds from claim to published.

`python bench/request80.py HOME dagster|direct` prints the seconds on its last line.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

home = Path(sys.argv[1])
os.environ.update(BRIGHTRUN_HOME=str(home), DAGSTER_HOME=str(home / "dagster"),
                  BRIGHTRUN_DATABASE_URL=f"sqlite:///{home / 'brightrun.db'}",
                  BRIGHTRUN_STORAGE_ROOT=str(home / "storage"))

from brightrun_pipeline.config import load_settings  # noqa: E402
from brightrun_pipeline.db.repository import Database  # noqa: E402
from brightrun_pipeline.demo_data import generate_demo_dataset  # noqa: E402
from brightrun_pipeline.launcher import ensure_dagster_home, run_request_in_process  # noqa: E402
from brightrun_pipeline.seeding import seed_dataset  # noqa: E402
from brightrun_pipeline.service import Pipeline  # noqa: E402
from brightrun_pipeline.storage import LocalObjectStore  # noqa: E402

settings = load_settings()
database = Database(settings.database_url)
database.upgrade()
store = LocalObjectStore(settings.storage_root)
store.ensure_bucket(settings.training_bucket)
ensure_dagster_home(settings)
dataset = generate_demo_dataset(3, batches=1, conversations_per_batch=80, unbatched=0,
                                ineligible_per_batch=0)
seed_dataset(database, store, settings.source_bucket, dataset)
pipeline = Pipeline.from_settings(settings, database, store)
request = pipeline.submit(conversation_ids=[c.conversation_id for c in dataset.conversations],
                          new_file_name="Bench request")
if sys.argv[2] == "dagster":
    import dagster  # noqa: F401  (imported before timing, as in a long-lived process)

    from brightrun_pipeline.definitions import build_definitions  # noqa: F401
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
