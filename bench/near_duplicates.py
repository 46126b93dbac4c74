"""Near-duplicate check: precision and recall on planted near-duplicates, and its timing.

`python -m bench.near_duplicates quality` sweeps shingle sizes and thresholds over demo datasets
with planted near-duplicates (the edits of tests/test_near_duplicates.py) and prints, per
setting, the planted pairs caught and the distinct pairs flagged.

`python -m bench.near_duplicates timing [DATABASE_URL]` builds a file of 320 members (SQLite in a
temporary directory unless a URL is given) and times the check of a selection of 80: the first
one (sources read, signatures computed and stored), the next ones (signatures stored; in a
process that has not checked the file yet, and in one that has), and the first check of a file
none of whose signatures is stored. The figures are in
docs/near_duplicates.md.
"""

from __future__ import annotations

import itertools
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from seed import create_file, eligible, seed_dataset  # noqa: E402
from test_near_duplicates import planted  # noqa: E402

from brightrun_pipeline import near_duplicates as nd  # noqa: E402
from brightrun_pipeline.config import RetrySettings  # noqa: E402
from brightrun_pipeline.db.repository import Database  # noqa: E402
from brightrun_pipeline.db.schema import conversation_signatures  # noqa: E402
from brightrun_pipeline.demo_data import generate_demo_dataset  # noqa: E402
from brightrun_pipeline.models import SelectionRequest  # noqa: E402
from brightrun_pipeline.service import Pipeline  # noqa: E402
from brightrun_pipeline.storage import LocalObjectStore  # noqa: E402

SETS = (
    # (seed, batches, conversations per batch, edit intensities: words changed per response)
    (7, 3, 12, ((1, 3), (2, 4))),
    (3, 10, 40, ((1, 3),)),
    (3, 10, 40, ((2, 4),)),
    (11, 10, 40, ((1, 3),)),
)
SHINGLES = (3, 4, 5)
THRESHOLDS = (0.55, 0.6, 0.65, 0.7, 0.75, 0.8)


def quality() -> None:
    """Recall and false positives per shingle size and threshold."""
    for seed, batches, per_batch, intensities in SETS:
        dataset = generate_demo_dataset(seed, batches=batches, conversations_per_batch=per_batch,
                                        unbatched=2)
        originals = eligible(dataset)
        families: dict[str, int] = {}
        files: dict[str, bytes] = {}
        for number, original in enumerate(originals):
            members = [original] + [planted(original, f"{number}:{k}", words)
                                    for k, words in enumerate(intensities)]
            for member in members:
                families[member.conversation_id] = number
                files[member.conversation_id] = member.file_bytes or b""
        first = {c.conversation_id for c in originals}
        pairs = [tuple(sorted(pair)) for pair in itertools.combinations(files, 2)]
        planted_pairs = {p for p in pairs if families[p[0]] == families[p[1]]
                         and (p[0] in first or p[1] in first)}
        distinct = {p for p in pairs if families[p[0]] != families[p[1]]}
        print(f"seed {seed}: {len(originals)} conversations, {len(planted_pairs)} planted pairs "
              f"(words changed per response {intensities}), {len(distinct)} distinct pairs")
        for words in SHINGLES:
            nd.SHINGLE_WORDS = words
            signatures = {cid: nd.signature_of_source(data) for cid, data in files.items()}
            for threshold in THRESHOLDS:
                index = nd.SignatureIndex(signatures, threshold)
                flagged = {tuple(sorted((cid, other))) for cid, hits in zip(
                    signatures, index.query(list(signatures.values())), strict=True)
                    for other, _ in hits if other != cid}
                caught = len(flagged & planted_pairs)
                wrong = len(flagged & distinct)
                print(f"  {words}-shingles, threshold {threshold:.2f}: recall "
                      f"{caught / len(planted_pairs):.4f} ({caught}/{len(planted_pairs)}), "
                      f"distinct pairs flagged {wrong}, precision "
                      f"{caught / max(1, caught + wrong):.4f}")


def timing(url: str | None) -> None:
    """The check of 80 against a file of 320 members."""
    directory = Path(tempfile.mkdtemp(prefix="bench-near-duplicates-"))
    database = Database(url or f"sqlite:///{directory / 'brightrun.db'}")
    database.upgrade()
    store = LocalObjectStore(directory / "storage")
    for bucket in ("conversation-files", "training-files"):
        store.ensure_bucket(bucket)
    pipeline = Pipeline(database, store, fetch_concurrency=16,
                        retry=RetrySettings(attempts=3, base_delay=0.0, max_delay=0.0))
    dataset = generate_demo_dataset(13, batches=5, conversations_per_batch=81, unbatched=0)
    seed_dataset(pipeline, dataset)
    rows = eligible(dataset)
    file_id = create_file(pipeline, rows[:80]).training_file_id
    for start in range(80, 320, 80):
        request = pipeline.submit(conversation_ids=[c.conversation_id for c in
                                                    rows[start:start + 80]],
                                  training_file=file_id)
        assert pipeline.claim(request.id) is not None
        pipeline.run_request(request.id, f"bench-{start}")
    request = SelectionRequest(id="bench", training_file_id=file_id,
                               conversation_ids=[c.conversation_id for c in rows[320:400]])

    def fresh() -> Pipeline:
        """A pipeline that has not checked the file yet (a new process: no member index)."""
        return Pipeline(database, store, fetch_concurrency=16,
                        retry=RetrySettings(attempts=3, base_delay=0.0, max_delay=0.0))

    def timed(call: Callable[[], object], times: int) -> list[float]:
        seconds = []
        for _ in range(times):
            started = time.perf_counter()
            call()
            seconds.append(time.perf_counter() - started)
        return seconds

    [first] = timed(lambda: fresh().validate(request), 1)
    uncached = timed(lambda: fresh().validate(request), 15)
    cached = timed(lambda: pipeline.validate(request), 30)
    file = pipeline.db.get_file(file_id)
    catalog = list(pipeline.db.conversations_by_id(request.conversation_ids).values())
    check_uncached = timed(lambda: fresh().near_duplicates(file_id, catalog, file=file), 15)
    check_cached = timed(lambda: pipeline.near_duplicates(file_id, catalog, file=file), 30)
    with database.engine.begin() as connection:
        connection.execute(conversation_signatures.delete())
    [backfill] = timed(lambda: fresh().validate(request), 1)

    def ms(values: list[float]) -> str:
        return (f"median {statistics.median(values) * 1000:.1f} ms, "
                f"max {max(values) * 1000:.1f} ms")

    print(f"{database.engine.dialect.name}: 80 against 320 members")
    print(f"  first check (80 sources read and signed): {first * 1000:.0f} ms")
    print(f"  validate, signatures stored, first check of the file in the process: "
          f"{ms(uncached)}; the near-duplicate part {ms(check_uncached)}")
    print(f"  validate, signatures stored, the file checked before (member index cached): "
          f"{ms(cached)}; the near-duplicate part {ms(check_cached)}")
    print(f"  no signature stored at all (a file built before them: 400 sources read): "
          f"{backfill * 1000:.0f} ms")
    database.dispose()


if __name__ == "__main__":
    if sys.argv[1:2] == ["quality"]:
        quality()
    elif sys.argv[1:2] == ["timing"]:
        timing(sys.argv[2] if len(sys.argv) > 2 else None)
    else:
        sys.exit(__doc__)
