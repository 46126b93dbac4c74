"""The console's catalog at scale: a fast seeder and the server-side timings of its pages.

`seed_catalog(url)` adds 100,000 conversations in 1,000 batches of 100 to a database whose
schema is upgraded (`Database(url).upgrade()`), with their batch jobs and batch items, and three
training files holding some of them. The rows are what the upstream application writes (most
conversations `completed` with an enriched file path, the rest failed, in progress, not started
or completed without a file; persona, arc, topic, tier, titles and scores), inserted in chunks
with executemany: seconds, not minutes. The enriched files themselves are not written: listing
never reads them, and a selection check reads their near-duplicate signatures, which are seeded
as the checks of a running system leave them (random values: no two conversations are
near-duplicates).

`measure_console(url)` times what the Conversations page and the selection check run on the
server, exactly as the console calls them (`queries.list_conversations`: count, page and
memberships; `queries.check_selection`), warmed once, median of `repeat` runs.

`python -m bench.catalog URL [--repeat 7] [--no-seed]` seeds (unless --no-seed) and prints the
medians; `make bench` runs it on a fresh SQLite file and a fresh PostgreSQL database
(bench/run.py, the console part).
"""

from __future__ import annotations

import argparse
import random
import statistics
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import sqlalchemy as sa

from brightrun_pipeline.db.repository import Database
from brightrun_pipeline.db.schema import (
    batch_items,
    batch_jobs,
    conversation_signatures,
    conversations,
    training_file_conversations,
    training_file_versions,
    training_files,
)
from brightrun_pipeline.demo_data import _ARCS, _PERSONAS, _TOPICS, TIERS
from brightrun_pipeline.near_duplicates import NUM_PERM, SCHEME
from brightrun_pipeline.rules import name_key

CONVERSATIONS = 100_000
BATCH_SIZE = 100
# Rows per executemany.
CHUNK = 5_000
START = datetime(2025, 12, 1, 8, 0, tzinfo=UTC)
# Enrichment statuses and their shares; "completed" conversations have an enriched file path
# except for the share in NO_FILE_SHARE.
STATUSES = (("completed", 0.88), ("failed", 0.04), ("enrichment_in_progress", 0.03),
            ("not_started", 0.05))
NO_FILE_SHARE = 0.02
# Conversations queued again in a later batch (a retry): their Batch ID stays the first one.
REQUEUED_SHARE = 0.01
# Training files of the bench (name, members), filled from the eligible conversations.
FILES = (("Console bench — wealth", 5_000), ("Console bench — retirement", 2_000),
         ("Console bench — onboarding", 1_000))
# Goals of the issue: server time of a page, and of a selection check.
PAGE_GOAL_MS = 300.0
CHECK_GOAL_MS = 100.0


@dataclass
class CatalogSeed:
    """What a seeding added: enough to aim the measurements at real rows."""

    conversations: int
    batch_ids: list[str]
    file_ids: list[str]
    # Eligible conversations that no training file holds, in seeding order.
    free_eligible: list[str] = field(default_factory=list)
    seconds: float = 0.0


def _uuid(rng: random.Random) -> str:
    return str(uuid.UUID(int=rng.getrandbits(128), version=4))


def _chunks(rows: list[dict[str, Any]], size: int = CHUNK) -> Iterator[list[dict[str, Any]]]:
    for start in range(0, len(rows), size):
        yield rows[start:start + size]


def _status(rng: random.Random) -> str:
    roll = rng.random()
    for status, share in STATUSES:
        if roll < share:
            return status
        roll -= share
    return STATUSES[0][0]


def seed_catalog(url: str, n: int = CONVERSATIONS, *, batch_size: int = BATCH_SIZE,
                 seed: int = 2026) -> CatalogSeed:
    """Add `n` conversations in batches of `batch_size` (with their batch jobs and items) and
    the training files of FILES to the database at `url`, upgrading its schema first."""
    started = time.perf_counter()
    rng = random.Random(seed)
    database = Database(url)
    database.upgrade()
    batch_count = -(-n // batch_size)
    jobs: list[dict[str, Any]] = []
    for b in range(batch_count):
        created = START + timedelta(minutes=30 * b)
        size = min(batch_size, n - b * batch_size)
        jobs.append({"id": _uuid(rng), "name": f"Batch {b + 1:04d}", "status": "completed",
                     "tier": rng.choice(TIERS), "total_items": size, "created_at": created})
    rows: list[dict[str, Any]] = []
    items: list[dict[str, Any]] = []
    eligible: list[str] = []
    for i in range(n):
        job = jobs[i // batch_size]
        persona, arc, topic = rng.choice(_PERSONAS), rng.choice(_ARCS), rng.choice(_TOPICS)
        created = job["created_at"] + timedelta(seconds=10 * (i % batch_size) + rng.randint(0, 9))
        status = _status(rng)
        has_file = status == "completed" and rng.random() >= NO_FILE_SHARE
        cid, owner = _uuid(rng), _uuid(rng)
        scored = status == "completed"
        scores = {name: (round(rng.uniform(2.4, 4.9), 2) if scored else None) for name in (
            "quality_score", "empathy_score", "clarity_score", "appropriateness_score",
            "brand_voice_alignment")}
        rows.append({
            "id": _uuid(rng), "conversation_id": cid,
            "title": f"{persona.first_name} — {topic.name} ({arc.name})",
            "persona_key": persona.key, "emotional_arc_key": arc.key, "topic_key": topic.key,
            "tier": job["tier"], **scores, "enrichment_status": status,
            "enriched_file_path": f"{owner}/{cid}/enriched.json" if has_file else None,
            "created_by": owner, "created_at": created,
            "updated_at": created + timedelta(seconds=rng.randint(60, 900))})
        items.append({"id": _uuid(rng), "batch_job_id": job["id"], "conversation_id": cid,
                      "status": "completed" if status == "completed" else "failed",
                      "created_at": created})
        if rng.random() < REQUEUED_SHARE and i // batch_size + 1 < batch_count:
            later = jobs[rng.randrange(i // batch_size + 1, batch_count)]
            items.append({"id": _uuid(rng), "batch_job_id": later["id"], "conversation_id": cid,
                          "status": "completed", "created_at": later["created_at"]})
        if has_file:
            eligible.append(cid)
    by_id = {row["conversation_id"]: row for row in rows}
    job_of = {item["conversation_id"]: item["batch_job_id"] for item in reversed(items)}
    # Members: every 4th eligible conversation of the first ones, spread over the batches.
    taken = eligible[:4 * sum(count for _, count in FILES):4]
    files: list[dict[str, Any]] = []
    versions: list[dict[str, Any]] = []
    members: list[dict[str, Any]] = []
    published = START + timedelta(days=60)
    start = 0
    for name, count in FILES:
        file_id = _uuid(rng)
        files.append({"id": file_id, "name": name, "name_key": name_key(name),
                      "description": None, "created_by": "bench", "created_at": published,
                      "updated_at": published, "current_version": 1, "status": "ready",
                      "vertical": None, "consultant_profile": None})
        key = f"{file_id}/v1"
        versions.append({
            "training_file_id": file_id, "version": 1, "reason": "request",
            "json_key": f"{key}/training.json", "json_sha256": "0" * 64, "json_size": 1,
            "jsonl_key": f"{key}/training.jsonl", "jsonl_sha256": "0" * 64, "jsonl_size": 1,
            "manifest_key": f"{key}/manifest.json", "manifest_sha256": "0" * 64,
            "json_body_start": 0, "json_body_end": 1, "conversation_count": count,
            "training_pair_count": 0, "trainable_pair_count": 0, "jsonl_line_count": 0,
            "human_reviewed_count": 0, "avg_quality_score": None, "request_ids": [],
            "dagster_run_id": None, "created_at": published})
        for position, cid in enumerate(taken[start:start + count]):
            row = by_id[cid]
            members.append({
                "training_file_id": file_id, "conversation_id": cid, "position": position,
                "added_in_version": 1, "built_in_version": 1, "batch_id": job_of[cid],
                "source_key": row["enriched_file_path"], "source_sha256": "0" * 64,
                "source_updated_at": row["updated_at"], "pair_count": 6,
                "trainable_pair_count": 6, "human_reviewed_count": 0,
                "quality_score": row["quality_score"], "persona_key": row["persona_key"],
                "emotional_arc_key": row["emotional_arc_key"], "topic_key": row["topic_key"],
                "created_at": published})
        start += count
    # The signature of every enriched file (stored by the check that first met it), under the
    # sha256 the members record; an rng of its own leaves the rows above as they were.
    values = np.random.default_rng(seed).integers(0, 2**32, (len(eligible), NUM_PERM),
                                                  dtype=np.uint32).astype("<u4")
    signatures = [{"conversation_id": cid, "source_sha256": "0" * 64, "scheme": SCHEME,
                   "hashvalues": values[i].tobytes(),
                   "source_key": by_id[cid]["enriched_file_path"],
                   "source_updated_at": by_id[cid]["updated_at"], "created_at": published}
                  for i, cid in enumerate(eligible)]
    with database.engine.begin() as connection:
        for table, table_rows in ((batch_jobs, jobs), (conversations, rows),
                                  (batch_items, items), (training_files, files),
                                  (training_file_versions, versions),
                                  (training_file_conversations, members),
                                  (conversation_signatures, signatures)):
            for chunk in _chunks(table_rows):
                connection.execute(sa.insert(table), chunk)
    if database.engine.dialect.name == "postgresql":
        # What autovacuum does within a minute of such a load: fresh planner statistics.
        with database.engine.connect().execution_options(
                isolation_level="AUTOCOMMIT") as connection:
            for table in ("conversations", "batch_jobs", "batch_items", "training_files",
                          "training_file_conversations", "conversation_signatures"):
                connection.execute(sa.text(f"VACUUM ANALYZE {table}"))
    database.dispose()
    members_set = set(taken)
    return CatalogSeed(
        conversations=n, batch_ids=[job["id"] for job in jobs],
        file_ids=[file["id"] for file in files],
        free_eligible=[cid for cid in eligible if cid not in members_set],
        seconds=time.perf_counter() - started)


# --- Measurements ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    """One measured call: its label (a row of the report), its goal and how to run it."""

    label: str
    goal_ms: float
    run: Callable[[], Any]


def console_cases(pipeline: Any, seed: CatalogSeed) -> list[Case]:
    """The page requests and selection checks the console's goals are about."""
    from brightrun_pipeline import queries
    from brightrun_pipeline.queries import ConversationFilter

    def page(**view: Any) -> Callable[[], Any]:
        return lambda: queries.list_conversations(pipeline, ConversationFilter(**view))

    batch = seed.batch_ids[len(seed.batch_ids) // 2]
    selection = seed.free_eligible[-80:]
    existing = seed.file_ids[0]
    return [
        Case("first page (sort: created)", PAGE_GOAL_MS, page()),
        Case("first page, sorted by Batch ID", PAGE_GOAL_MS, page(sort="batch_id")),
        Case("first page, sorted by Batch ID descending", PAGE_GOAL_MS,
             page(sort="batch_id", desc=True)),
        Case("filtered by one batch (sort: created)", PAGE_GOAL_MS, page(batch_id=batch)),
        Case("filtered by one batch, sorted by Batch ID", PAGE_GOAL_MS,
             page(batch_id=batch, sort="batch_id")),
        Case("page 900 of 50, sorted by Batch ID", PAGE_GOAL_MS,
             page(sort="batch_id", page=900)),
        Case("page 900 of 50, sorted by created", PAGE_GOAL_MS, page(sort="created", page=900)),
        Case("page 900 of 50, sorted by title", PAGE_GOAL_MS, page(sort="title", page=900)),
        Case("check a selection of 80 for an existing file", CHECK_GOAL_MS,
             lambda: _checked(queries.check_selection(pipeline, selection,
                                                      training_file=existing))),
        Case("check a selection of 80 for a new file", CHECK_GOAL_MS,
             lambda: _checked(queries.check_selection(pipeline, selection,
                                                      new_file_name="Console bench — new"))),
    ]


def _checked(check: Any) -> Any:
    if not check.ok:
        raise RuntimeError(f"the bench selection was refused: {check.message}")
    return check


def _open_pipeline(url: str, home: str) -> Any:
    from brightrun_pipeline.config import load_settings
    from brightrun_pipeline.factory import open_services

    return open_services(load_settings({"BRIGHTRUN_DATABASE_URL": url, "BRIGHTRUN_HOME": home}))


def seed_of(url: str) -> CatalogSeed:
    """The CatalogSeed of a database seeded before (batches, bench files, free eligible ids)."""
    with Database(url).engine.connect() as connection:
        batch_ids = [str(r[0]).lower() for r in connection.execute(sa.text(
            "SELECT id FROM batch_jobs WHERE name LIKE 'Batch %' ORDER BY created_at"))]
        by_name = {r[0]: str(r[1]).lower() for r in connection.execute(sa.text(
            "SELECT name, id FROM training_files WHERE name LIKE 'Console bench%'"))}
        file_ids = [by_name[name] for name, _ in FILES]
        free = [str(r[0]).lower() for r in connection.execute(sa.text(
            "SELECT c.conversation_id FROM conversations c WHERE c.enrichment_status = "
            "'completed' AND c.enriched_file_path IS NOT NULL AND NOT EXISTS (SELECT 1 FROM "
            "training_file_conversations m WHERE m.conversation_id = c.conversation_id) "
            "ORDER BY c.created_at DESC LIMIT 80"))]
        total = connection.execute(sa.text("SELECT count(*) FROM conversations")).scalar_one()
    return CatalogSeed(conversations=int(total), batch_ids=batch_ids, file_ids=file_ids,
                       free_eligible=list(reversed(free)))


def measure_console(url: str, seed: CatalogSeed, repeat: int = 7) -> dict[str, list[float]]:
    """Milliseconds of each case, `repeat` runs after one warm-up; the cases interleaved round
    by round so that a change in the machine's load reaches them alike."""
    with tempfile.TemporaryDirectory(prefix="brightrun-console-bench-") as home:
        services = _open_pipeline(url, home)
        try:
            cases = console_cases(services.pipeline, seed)
            for case in cases:
                case.run()
            samples: dict[str, list[float]] = {case.label: [] for case in cases}
            for _ in range(repeat):
                for case in cases:
                    started = time.perf_counter()
                    case.run()
                    samples[case.label].append(1000 * (time.perf_counter() - started))
        finally:
            services.close()
    return samples


def goals() -> dict[str, float]:
    """The goal of each case's label, in milliseconds."""
    return {case.label: case.goal_ms
            for case in console_cases(None, CatalogSeed(0, ["-"], ["-"], ["-"]))}


def seeded_from_arguments(description: str | None, repeat_help: str | None = None
                          ) -> tuple[argparse.Namespace, CatalogSeed]:
    """A bench's command line (URL, --repeat, --no-seed, -n) and the catalog it measures:
    seeded now, or the one seeded before."""
    parser = argparse.ArgumentParser(description=description,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("url")
    parser.add_argument("--repeat", type=int, default=7, help=repeat_help)
    parser.add_argument("--no-seed", action="store_true",
                        help="measure a database seeded before")
    parser.add_argument("-n", type=int, default=CONVERSATIONS)
    args = parser.parse_args()
    if args.no_seed:
        return args, seed_of(args.url)
    seed = seed_catalog(args.url, args.n)
    print(f"seeded {seed.conversations:,} conversations in {seed.seconds:.1f} s")
    return args, seed


def main() -> None:
    args, seed = seeded_from_arguments(__doc__)
    samples = measure_console(args.url, seed, args.repeat)
    limits = goals()
    for label, values in samples.items():
        print(f"{statistics.median(values):9.1f} ms  (goal < {limits[label]:.0f})  {label}  "
              f"[{', '.join(f'{v:.0f}' for v in values)}]")


if __name__ == "__main__":
    main()
