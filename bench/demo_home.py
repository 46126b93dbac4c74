"""A fresh embedded-default setup in a directory, seeded with one batch of 80 conversations."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from brightrun_pipeline.config import Settings, load_settings
from brightrun_pipeline.db.repository import Database
from brightrun_pipeline.demo_data import DemoDataset, generate_demo_dataset
from brightrun_pipeline.launcher import ensure_dagster_home
from brightrun_pipeline.seeding import seed_dataset
from brightrun_pipeline.storage import LocalObjectStore


@dataclass
class DemoHome:
    """What a benchmark needs of the setup."""

    env: dict[str, str]
    settings: Settings
    database: Database
    store: LocalObjectStore
    dataset: DemoDataset


def demo_home(home: Path, seed: int) -> DemoHome:
    """Point this process at `home` (SQLite, local storage, DAGSTER_HOME) and seed it."""
    env = {"BRIGHTRUN_HOME": str(home), "DAGSTER_HOME": str(home / "dagster"),
           "BRIGHTRUN_DATABASE_URL": f"sqlite:///{home / 'brightrun.db'}",
           "BRIGHTRUN_STORAGE_ROOT": str(home / "storage")}
    os.environ.update(env)
    settings = load_settings()
    database = Database(settings.database_url)
    database.upgrade()
    store = LocalObjectStore(settings.storage_root)
    store.ensure_bucket(settings.training_bucket)
    ensure_dagster_home(settings)
    dataset = generate_demo_dataset(seed, batches=1, conversations_per_batch=80, unbatched=0,
                                    ineligible_per_batch=0)
    seed_dataset(database, store, settings.source_bucket, dataset)
    return DemoHome(env, settings, database, store, dataset)
