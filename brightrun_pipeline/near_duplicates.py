"""Near-duplicate conversations: a MinHash signature of each conversation's training text, and
the check that finds the conversations of a selection that are nearly identical to one already
in the target file or to one earlier in the same request (docs/near_duplicates.md).

A signature is computed from the bytes of the conversation's enriched file once and kept in
`conversation_signatures`, keyed by the conversation and the sha256 of those bytes; checks read
it from there. Candidates are found with LSH (banded signatures) and confirmed with the
signatures' estimate of the Jaccard similarity of the two shingle sets.
"""

from __future__ import annotations

import functools
import logging
import re
import threading
import unicodedata
from collections import OrderedDict
from collections.abc import Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import numpy as np
import orjson
from datasketch import MinHash
from sqlalchemy.exc import SQLAlchemyError

from brightrun_pipeline.config import DEFAULT_NEAR_DUPLICATE_THRESHOLD, RetrySettings
from brightrun_pipeline.db.repository import SignatureRecord
from brightrun_pipeline.errors import BrightRunError
from brightrun_pipeline.sources import fetch_sources

if TYPE_CHECKING:
    from brightrun_pipeline.db.repository import CatalogRow, Database
    from brightrun_pipeline.storage import ObjectStore

log = logging.getLogger(__name__)

# Everything that decides a signature's values: stored with each signature, so a change here
# makes the stored ones stale (they are computed again) rather than silently incomparable.
NUM_PERM = 128
SEED = 1
SHINGLE_WORDS = 5
MINHASH_SCHEME = "affine32"
SCHEME = f"minhash-{MINHASH_SCHEME}-p{NUM_PERM}-s{SEED}-w{SHINGLE_WORDS}-v1"
# A pair whose true Jaccard similarity is this far below the threshold still becomes an LSH
# candidate with probability LSH_RECALL: candidates are confirmed with the full estimate, so
# missing one costs recall while an extra one costs only a comparison.
LSH_MARGIN = 0.1
LSH_RECALL = 0.999
# At most this many matches are named per conversation (the strongest first).
MAX_NAMED = 3

_WORD = re.compile(r"\w+")
_DTYPE = np.dtype("<u4")


@functools.cache
def _permutations() -> Any:
    return MinHash(num_perm=NUM_PERM, seed=SEED, scheme=MINHASH_SCHEME).permutations


def training_texts(document: Any) -> list[str]:
    """The target responses of an enriched file's training pairs (what a model is trained to
    say), in pair order; pairs without one are left out."""
    pairs = document.get("training_pairs") if isinstance(document, dict) else None
    if not isinstance(pairs, list):
        raise ValueError("no training_pairs list")
    return [pair["target_response"] for pair in pairs
            if isinstance(pair, dict) and isinstance(pair.get("target_response"), str)
            and pair["target_response"]]


def words(text: str) -> list[str]:
    """The words of a text, compared without case, punctuation or Unicode form differences."""
    return _WORD.findall(unicodedata.normalize("NFKC", text).casefold())


def shingles(texts: Iterable[str]) -> set[bytes]:
    """Word 5-shingles (SHINGLE_WORDS) of each text (a text of fewer words is one shingle)."""
    found: set[bytes] = set()
    for text in texts:
        tokens = words(text)
        if not tokens:
            continue
        span = min(SHINGLE_WORDS, len(tokens))
        found.update(" ".join(tokens[i:i + span]).encode()
                     for i in range(len(tokens) - span + 1))
    return found


@dataclass(frozen=True, eq=False)
class Signature:
    """The MinHash values of a conversation's shingles; empty when it has no training text
    (such a conversation is nearly identical to nothing)."""

    values: np.ndarray

    @property
    def empty(self) -> bool:
        """Whether the conversation had no training text."""
        return self.values.size == 0

    def to_bytes(self) -> bytes:
        """The stored form: NUM_PERM little-endian uint32 values (nothing when empty)."""
        return self.values.astype(_DTYPE).tobytes()

    @classmethod
    def from_bytes(cls, data: bytes) -> Signature:
        """A signature read back from its stored form."""
        values = np.frombuffer(data, dtype=_DTYPE).astype(np.uint32)
        if values.size not in (0, NUM_PERM):
            raise ValueError(f"a stored signature has {values.size} values, not {NUM_PERM}")
        return cls(values)

    def jaccard(self, other: Signature) -> float:
        """The estimated Jaccard similarity of the two shingle sets (0 when either is empty)."""
        if self.empty or other.empty:
            return 0.0
        return float(np.count_nonzero(self.values == other.values)) / NUM_PERM


def signature_of_texts(texts: Iterable[str]) -> Signature:
    """The signature of some training texts."""
    found = shingles(texts)
    if not found:
        return Signature(np.empty(0, dtype=np.uint32))
    minhash = MinHash(num_perm=NUM_PERM, seed=SEED, scheme=MINHASH_SCHEME,
                      permutations=_permutations())
    minhash.update_batch(sorted(found))
    return Signature(np.asarray(minhash.hashvalues, dtype=np.uint32))


def signature_of_source(data: bytes) -> Signature:
    """The signature of an enriched conversation file's bytes (ValueError if they are not one)."""
    try:
        document = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise ValueError(f"not JSON: {exc}") from exc
    return signature_of_texts(training_texts(document))


@functools.cache
def lsh_bands(threshold: float) -> tuple[int, int]:
    """(bands, rows per band) of the LSH index for a threshold: the most rows per band (the
    fewest chance candidates) that still make a pair at `threshold - LSH_MARGIN` a candidate
    with probability LSH_RECALL."""
    target = min(max(threshold - LSH_MARGIN, 0.05), 1.0)
    best = (NUM_PERM, 1)
    for rows in range(1, NUM_PERM + 1):
        bands = NUM_PERM // rows
        if 1.0 - (1.0 - target ** rows) ** bands >= LSH_RECALL:
            best = (bands, rows)
    return best


_MIX = np.uint64(0x9E3779B97F4A7C15)


def _band_keys(values: np.ndarray, bands: int, rows: int) -> np.ndarray:
    """One 64-bit key per band of each row of `values` (n x NUM_PERM): equal bands give equal
    keys (unequal ones rarely do; such a chance candidate is dropped when confirmed)."""
    banded = values[:, :bands * rows].astype(np.uint64).reshape(len(values), bands, rows)
    keys = banded[:, :, 0].copy()
    for row in range(1, rows):
        keys = keys * _MIX + banded[:, :, row]  # wraps modulo 2**64, as intended
    return keys


class SignatureIndex:
    """Signatures of a set of conversations (a file's members), banded for LSH lookups."""

    def __init__(self, signatures: Mapping[str, Signature],
                 threshold: float = DEFAULT_NEAR_DUPLICATE_THRESHOLD) -> None:
        kept = [(cid, sig) for cid, sig in signatures.items() if not sig.empty]
        self._build([cid for cid, _ in kept],
                    np.stack([sig.values for _, sig in kept]) if kept
                    else np.empty((0, NUM_PERM), dtype=np.uint32), threshold)

    @classmethod
    def from_matrix(cls, ids: Sequence[str], values: np.ndarray,
                    threshold: float = DEFAULT_NEAR_DUPLICATE_THRESHOLD) -> SignatureIndex:
        """An index of non-empty signatures given as rows of a (len(ids) x NUM_PERM) matrix."""
        index = cls.__new__(cls)
        index._build(list(ids), values.reshape(len(ids), NUM_PERM), threshold)
        return index

    def _build(self, ids: list[str], values: np.ndarray, threshold: float) -> None:
        self.threshold = threshold
        self.bands, self.rows = lsh_bands(threshold)
        self.ids = ids
        self.values = values
        self._row = {cid: row for row, cid in enumerate(ids)}
        keys = _band_keys(values, self.bands, self.rows)
        self._order = np.argsort(keys, axis=0, kind="stable")
        self._sorted = np.take_along_axis(keys, self._order, axis=0)

    def __len__(self) -> int:
        return len(self.ids)

    def signature(self, conversation_id: str) -> Signature | None:
        """The signature indexed for a conversation, if any."""
        row = self._row.get(conversation_id)
        return None if row is None else Signature(self.values[row])

    def query(self, signatures: Sequence[Signature]) -> list[list[tuple[str, float]]]:
        """For each signature, the indexed conversations at or above the threshold with their
        estimated Jaccard similarity, the most similar first."""
        found: list[list[tuple[str, float]]] = [[] for _ in signatures]
        live = [i for i, sig in enumerate(signatures) if not sig.empty]
        if not live or not self.ids:
            return found
        queries = np.stack([signatures[i].values for i in live])
        keys = _band_keys(queries, self.bands, self.rows)
        candidates: list[set[int]] = [set() for _ in live]
        for band in range(self.bands):
            column = self._sorted[:, band]
            low = np.searchsorted(column, keys[:, band], side="left")
            high = np.searchsorted(column, keys[:, band], side="right")
            for q in np.nonzero(high > low)[0]:
                candidates[q].update(self._order[low[q]:high[q], band].tolist())
        for q, members in enumerate(candidates):
            if not members:
                continue
            index = np.fromiter(members, dtype=np.intp, count=len(members))
            scores = np.count_nonzero(self.values[index] == queries[q], axis=1) / NUM_PERM
            hits = [(self.ids[i], float(s)) for i, s in zip(index, scores, strict=True)
                    if s >= self.threshold]
            found[live[q]] = sorted(hits, key=lambda hit: (-hit[1], hit[0]))
        return found


@dataclass(frozen=True)
class Match:
    """A conversation of a selection that is nearly identical to another one."""

    conversation_id: str
    other_id: str
    jaccard: float
    # The version of the target file that added `other_id`; None: it is earlier in the request.
    other_added_in: int | None


def find_near_duplicates(
    selection: Sequence[tuple[str, Signature | None]],
    members: SignatureIndex,
    member_versions: Mapping[str, int],
) -> dict[str, list[Match]]:
    """The conversations of a selection (in request order; None: no signature could be had)
    that are nearly identical to a member of the target file (`members`, by its threshold;
    `member_versions`: the version that added each) or to a conversation earlier in the
    request, each with its matches, the most similar first."""
    index, threshold = members, members.threshold
    new = [(cid, sig) for cid, sig in selection if sig is not None and not sig.empty]
    found: dict[str, list[Match]] = {}
    for (cid, _), hits in zip(new, index.query([sig for _, sig in new]), strict=True):
        found[cid] = [Match(cid, other, score, member_versions.get(other, 0))
                      for other, score in hits if other != cid]
    # Within the request: every pair, the later conversation named (removing it resolves it).
    if len(new) > 1:
        values = np.stack([sig.values for _, sig in new])
        for later in range(1, len(new)):
            scores = np.count_nonzero(values[:later] == values[later], axis=1) / NUM_PERM
            cid = new[later][0]
            for earlier in np.nonzero(scores >= threshold)[0]:
                found.setdefault(cid, []).append(
                    Match(cid, new[earlier][0], float(scores[earlier]), None))
    return {cid: sorted(matches, key=lambda m: (-m.jaccard, m.other_id))
            for cid, matches in found.items() if matches}


def describe(matches: Sequence[Match], file_label: str) -> str:
    """Why a conversation is a near-duplicate, naming the conversations it matches."""
    parts = []
    for match in matches[:MAX_NAMED]:
        where = ("earlier in this request" if match.other_added_in is None else
                 f"already in {file_label} (added in version {match.other_added_in})")
        parts.append(f"nearly identical to {match.other_id} (Jaccard ≈ {match.jaccard:.2f}), "
                     f"{where}")
    if len(matches) > MAX_NAMED:
        parts.append(f"and to {len(matches) - MAX_NAMED} more")
    return "; ".join(parts)


# --- Stored signatures ----------------------------------------------------------------------


class IndexCache:
    """The member indexes of the files checked last, by (file, version, method, threshold),
    holding at most `max_members` members in all (about 1.2 kB each): a long-lived process
    (console, sensor) checks a file's selections without reading its members again."""

    def __init__(self, max_members: int = 50_000) -> None:
        self.max_members = max_members
        self._entries: OrderedDict[Hashable, tuple[Any, int]] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: Hashable) -> Any:
        """The value stored under `key` (now the most recent), or None."""
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                return None
            self._entries.move_to_end(key)
            return entry[0]

    def put(self, key: Hashable, value: Any, members: int) -> None:
        """Keep a value, forgetting the least recent ones beyond the size (never the newest)."""
        with self._lock:
            self._entries[key] = (value, members)
            self._entries.move_to_end(key)
            while (len(self._entries) > 1
                   and sum(size for _, size in self._entries.values()) > self.max_members):
                self._entries.popitem(last=False)


class Signatures:
    """Signatures read from the database, or computed from the sources and stored there."""

    def __init__(self, db: Database, store: ObjectStore, bucket: str, *, concurrency: int,
                 retry: RetrySettings, cache: IndexCache | None = None) -> None:
        self.db = db
        self.store = store
        self.bucket = bucket
        self.concurrency = concurrency
        self.retry = retry
        self.cache = cache

    def of_conversations(self, rows: Sequence[CatalogRow]) -> dict[str, Signature]:
        """Signatures of catalog rows as they stand: a stored one computed from the same
        enriched file (path and `updated_at`, the rule that tells a changed source), or one
        computed now. A conversation whose source cannot be read is left out, and one whose
        source is not an enriched file has an empty signature (the build reports both)."""
        stored = self.db.signatures_of(
            [row.conversation_id for row in rows if row.enriched_file_path], SCHEME)
        found: dict[str, Signature] = {}
        missing: list[tuple[str, str, datetime | None]] = []
        for row in rows:
            if not row.enriched_file_path:
                continue
            same = [r for r in stored.get(row.conversation_id, [])
                    if r.source_key == row.enriched_file_path
                    and r.source_updated_at == row.updated_at]
            if same:
                latest = max(same, key=lambda r: r.created_at)
                found[row.conversation_id] = Signature.from_bytes(latest.hashvalues)
            else:
                missing.append((row.conversation_id, row.enriched_file_path, row.updated_at))
        found.update(self._compute(missing))
        return found

    def of_members(self, file_id: str, version: int | None,
                   threshold: float) -> tuple[SignatureIndex, dict[str, int]]:
        """The index of a training file's members as built (by the sha256 of the source they
        were built from), computing the missing signatures; and the version that added each.
        Kept in the cache by file and version: a file's members change only with a version."""
        key = (file_id, version, SCHEME, threshold)
        cached = self.cache.get(key) if self.cache is not None else None
        if cached is not None:
            return cached
        members = self.db.member_signatures(file_id, SCHEME)
        versions = {m.conversation_id: m.added_in_version for m in members}
        stored = [m for m in members if m.hashvalues]
        missing = [(m.conversation_id, m.source_key or "", m.source_updated_at)
                   for m in members if m.hashvalues is None]
        computed = {cid: sig for cid, sig in self._compute(missing).items() if not sig.empty}
        ids = [m.conversation_id for m in stored] + list(computed)
        values = np.frombuffer(b"".join(
            [m.hashvalues for m in stored if m.hashvalues]
            + [sig.to_bytes() for sig in computed.values()]), dtype=_DTYPE).astype(np.uint32)
        found = (SignatureIndex.from_matrix(ids, values, threshold), versions)
        if self.cache is not None and len(computed) == len(missing):
            # Complete: nothing left to read (a member whose source could not be read is tried
            # again by the next check).
            self.cache.put(key, found, len(ids))
        return found

    def _compute(self, wanted: Sequence[tuple[str, str, datetime | None]]
                 ) -> dict[str, Signature]:
        """Fetch each source once, compute its signature and store it under the sha256 of the
        bytes read."""
        if not wanted:
            return {}
        facts = {cid: (key, updated_at) for cid, key, updated_at in wanted}
        found: dict[str, Signature] = {}
        records: list[SignatureRecord] = []
        now = datetime.now(UTC)
        try:
            for fetched in fetch_sources(self.store, self.bucket,
                                         [(cid, key) for cid, key, _ in wanted],
                                         concurrency=self.concurrency, retry=self.retry):
                cid = fetched.conversation_id
                if fetched.data is None or fetched.sha256 is None:
                    log.warning("near-duplicate check: the source of %s could not be read (%s); "
                                "it is not compared", cid, fetched.error)
                    continue
                try:
                    signature = signature_of_source(fetched.data)
                except ValueError as exc:
                    # Kept as a source without training text (compared with nothing), so that it is
                    # not read again; the build reports what is wrong with it.
                    log.warning("near-duplicate check: the source of %s is not an enriched file "
                                "(%s); it is not compared", cid, exc)
                    signature = Signature(np.empty(0, dtype=np.uint32))
                found[cid] = signature
                key, updated_at = facts[cid]
                records.append(SignatureRecord(cid, fetched.sha256, SCHEME, signature.to_bytes(),
                                               key, updated_at, now))
        except (BrightRunError, OSError) as exc:
            # The store itself failed (not one object): what was read is used, the rest is not
            # compared this time; the build reports the store's problem.
            log.warning("near-duplicate check: sources could not be read (%s); %d of %d "
                        "not compared", exc, len(wanted) - len(found), len(wanted))
        try:
            self.db.save_signatures(records)
        except SQLAlchemyError as exc:
            # A cache: the check goes on with what it computed, the next one computes it again.
            log.warning("near-duplicate check: %d signature(s) not stored: %s", len(records), exc)
        return found
