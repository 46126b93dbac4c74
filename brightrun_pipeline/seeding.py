"""Load demo data into the source tables and the source bucket (idempotent)."""

from __future__ import annotations

from dataclasses import asdict

import sqlalchemy as sa

from brightrun_pipeline.db.repository import Database
from brightrun_pipeline.db.schema import batch_items, batch_jobs, conversations
from brightrun_pipeline.demo_data import DemoDataset
from brightrun_pipeline.storage import ObjectStore


def seed_dataset(db: Database, store: ObjectStore, bucket: str, dataset: DemoDataset) -> int:
    """Insert the dataset's rows and files not there yet; returns how many rows were new."""
    store.ensure_bucket(bucket)
    inserted = 0
    with db.engine.begin() as connection:
        known_batches = set(connection.execute(sa.select(batch_jobs.c.id)).scalars())
        known_items = set(connection.execute(sa.select(batch_items.c.id)).scalars())
        known_conversations = set(connection.execute(sa.select(conversations.c.id)).scalars())
        for batch in dataset.batches:
            if batch.id not in known_batches:
                connection.execute(sa.insert(batch_jobs).values(**asdict(batch)))
                inserted += 1
        for item in dataset.items:
            if item.id not in known_items:
                connection.execute(sa.insert(batch_items).values(**asdict(item)))
                inserted += 1
        for conversation in dataset.conversations:
            if conversation.row["id"] not in known_conversations:
                connection.execute(sa.insert(conversations).values(**conversation.row))
                inserted += 1
    for conversation in dataset.conversations:
        path = conversation.row.get("enriched_file_path")
        if path and conversation.file_bytes is not None and store.stat(bucket, str(path)) is None:
            store.put_bytes(bucket, str(path), conversation.file_bytes)
    return inserted
