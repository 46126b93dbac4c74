"""Version diff: what changed in a training file between two of its versions.

Conversations added, rebuilt (same conversation, other source bytes) and removed; pairs,
trainable pairs and approximate tokens gained or lost; and the shift of the persona, arc, topic
and quality-tier mix. The CLI (`brightrun files diff`), the console and each version's
materialization in Dagster show the same `VersionDiff`.

Where each figure comes from (see docs/design.md, "Version diff"):

- the conversations and their source hashes: each version's manifest;
- pairs and trainable pairs: the version rows (exact totals of each version);
- persona, arc, topic and quality of a conversation in a version: its membership row when it has
  not been rebuilt since that version, otherwise the conversation's block header in that
  version's training.json (streamed, only the headers are parsed);
- approx_tokens: counted on the versions' training.jsonl, streamed line by line.
"""

from __future__ import annotations

import re
import threading
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import orjson
from pydantic import BaseModel

from brightrun_pipeline.db.repository import VersionRecord
from brightrun_pipeline.errors import NotFound
from brightrun_pipeline.models import Manifest
from brightrun_pipeline.rules import quality_tier

if TYPE_CHECKING:
    from brightrun_pipeline.service import Pipeline

# approx_tokens: a run of word characters (letters, digits, underscore) is one token, and so is
# every other character that is not white space. Close enough to a sub-word tokenizer's count
# to compare versions, and the same whatever model the file later trains.
TOKEN = re.compile(r"\w+|[^\w\s]")


def approx_tokens(text: str) -> int:
    """The approx_tokens of a text (`len(TOKEN.findall(text))`, counted without the list)."""
    return TOKEN.subn("", text)[1]


def line_tokens(line: Mapping[str, Any], seen: dict[str, int] | None = None) -> int:
    """The approx_tokens of one JSONL line: its system prompt, every turn of its history, the
    user's input and the target response. `seen` caches the count of texts met before (a
    conversation's history repeats its earlier turns on every later line)."""
    texts = [line["system_prompt"], *(turn["content"] for turn in line["conversation_history"]),
             line["current_user_input"], line["target_response"]]
    total = 0
    for text in texts:
        if seen is None:
            total += approx_tokens(text)
            continue
        count = seen.get(text)
        if count is None:
            count = seen[text] = approx_tokens(text)
        total += count
    return total


# A conversation's JSONL lines are made from its source alone, so its token count is one per
# source hash: kept for the life of the process (bounded), so that the second of two versions
# only costs a pass over the bytes of the conversations the first did not have.
_TOKENS_BY_SOURCE: dict[str, int] = {}
_TOKENS_BY_SOURCE_MAX = 200_000
_cache_lock = threading.Lock()
# Each JSONL line starts with its id, `{"id":"<conversation id>_turn<n>"` (the builder's layout).
_LINE_ID_START = len(b'{"id":"')
_UUID_LENGTH = 36


# --- The model -----------------------------------------------------------------------------


class CountChange(BaseModel):
    """A figure in version A, in version B, and B minus A."""

    a: int
    b: int
    delta: int


class TokenChange(BaseModel):
    """approx_tokens in A and B (None when only the change was counted) and B minus A."""

    a: int | None
    b: int | None
    delta: int


class MixRow(BaseModel):
    """How many conversations of A and of B have one key, as counts and shares (percent of the
    version's conversations), and the shift of the share in percentage points."""

    key: str | None
    count_a: int
    count_b: int
    share_a: float
    share_b: float
    shift_pp: float


class MixShift(BaseModel):
    """The mix of each scaffolding dimension and of the quality tiers, A against B."""

    persona: list[MixRow]
    arc: list[MixRow]
    topic: list[MixRow]
    quality_tier: list[MixRow]


class VersionDiff(BaseModel):
    """What changed in a training file from version A to version B (A None: from nothing, the
    diff of a first version). Conversation ids are in file order (removed: A's order)."""

    training_file_id: str
    file_name: str
    version_a: int | None
    version_b: int
    added: list[str]
    rebuilt: list[str]
    removed: list[str]
    conversations: CountChange
    pairs: CountChange
    trainable_pairs: CountChange
    approx_tokens: TokenChange
    mix: MixShift

    @property
    def unchanged(self) -> bool:
        """Whether A and B hold the same conversations built from the same sources."""
        return not (self.added or self.rebuilt or self.removed)


MIX_DIMENSIONS = ("persona", "arc", "topic", "quality_tier")


# --- Computing it --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Facts:
    """What the mix counts of one conversation in one version."""

    persona: str | None
    arc: str | None
    topic: str | None
    quality_tier: str


@dataclass
class _Side:
    """One version of the diff, as read."""

    record: VersionRecord | None
    sources: dict[str, str]  # conversation id → source sha256, in file order

    @property
    def version(self) -> int | None:
        return self.record.version if self.record else None


def diff_versions(pipeline: Pipeline, training_file_id: str, a: int, b: int, *,
                  token_totals: bool = True) -> VersionDiff:
    """What changed in a training file from version `a` to version `b` (any two of its versions,
    in either order; the same one twice gives a diff without changes). Raises NotFound for a
    version the file does not have.

    With `token_totals` False only the change of approx_tokens is counted, from the lines of the
    conversations added, rebuilt and removed; the totals of A and B are left out (None)."""
    first = _record(pipeline, training_file_id, a)
    second = _record(pipeline, training_file_id, b)
    return _diff(pipeline, first, second, token_totals=token_totals)


def diff_from_previous(pipeline: Pipeline, record: VersionRecord, *,
                       token_totals: bool = True) -> VersionDiff:
    """A version against the one before it (a first version: against nothing)."""
    previous = (_record(pipeline, record.training_file_id, record.version - 1)
                if record.version > 1 else None)
    return _diff(pipeline, previous, record, token_totals=token_totals)


def _record(pipeline: Pipeline, training_file_id: str, version: int) -> VersionRecord:
    record = pipeline.db.get_version(training_file_id, version) if version >= 1 else None
    if record is None:
        file = pipeline.db.get_file(training_file_id)
        name = repr(file.name) if file else training_file_id
        raise NotFound(f"training file {name} has no version {version}")
    return record


def _side(pipeline: Pipeline, record: VersionRecord | None) -> _Side:
    if record is None:
        return _Side(None, {})
    manifest = Manifest.model_validate_json(
        pipeline.store.get_bytes(pipeline.training_bucket, record.manifest_key))
    return _Side(record, {c.conversation_id: c.source_sha256 for c in manifest.conversations})


def _diff(pipeline: Pipeline, record_a: VersionRecord | None, record_b: VersionRecord, *,
          token_totals: bool) -> VersionDiff:
    side_a, side_b = _side(pipeline, record_a), _side(pipeline, record_b)
    in_a, in_b = side_a.sources, side_b.sources
    added = [cid for cid in in_b if cid not in in_a]
    rebuilt = [cid for cid, sha in in_b.items() if cid in in_a and in_a[cid] != sha]
    removed = [cid for cid in in_a if cid not in in_b]

    members = {m.conversation_id: m for m in pipeline.db.iter_members(record_b.training_file_id)}
    facts_a = _version_facts(pipeline, side_a, members)
    facts_b = _version_facts(pipeline, side_b, members)

    changed_a = {*rebuilt, *removed}
    changed_b = {*added, *rebuilt}
    tokens_a = _conversation_tokens(pipeline, side_a, None if token_totals else changed_a)
    tokens_b = _conversation_tokens(pipeline, side_b, None if token_totals else changed_b)
    delta = (sum(tokens_b[c] for c in changed_b) - sum(tokens_a[c] for c in changed_a))
    tokens = (TokenChange(a=sum(tokens_a.values()), b=sum(tokens_b.values()), delta=delta)
              if token_totals else TokenChange(a=None, b=None, delta=delta))

    def change(a: int, b: int) -> CountChange:
        return CountChange(a=a, b=b, delta=b - a)

    return VersionDiff(
        training_file_id=record_b.training_file_id,
        file_name=_file_name(pipeline, record_b),
        version_a=side_a.version, version_b=record_b.version,
        added=added, rebuilt=rebuilt, removed=removed,
        conversations=change(len(in_a), len(in_b)),
        pairs=change(record_a.training_pair_count if record_a else 0,
                     record_b.training_pair_count),
        trainable_pairs=change(record_a.trainable_pair_count if record_a else 0,
                               record_b.trainable_pair_count),
        approx_tokens=tokens,
        mix=MixShift(**{dimension: mix_rows([getattr(f, dimension) for f in facts_a.values()],
                                            [getattr(f, dimension) for f in facts_b.values()])
                        for dimension in MIX_DIMENSIONS}),
    )


def _file_name(pipeline: Pipeline, record: VersionRecord) -> str:
    file = pipeline.db.get_file(record.training_file_id)
    return file.name if file else record.training_file_id


def mix_rows(keys_a: Iterable[str | None], keys_b: Iterable[str | None]) -> list[MixRow]:
    """Counts, shares and share shifts of each key (one key per conversation), the largest
    count in B first."""
    count_a, count_b = Counter(keys_a), Counter(keys_b)
    total_a, total_b = sum(count_a.values()), sum(count_b.values())

    def share(count: int, total: int) -> float:
        return round(100 * count / total, 2) if total else 0.0

    rows = []
    for key in {*count_a, *count_b}:
        share_a, share_b = share(count_a[key], total_a), share(count_b[key], total_b)
        rows.append(MixRow(key=key, count_a=count_a[key], count_b=count_b[key],
                           share_a=share_a, share_b=share_b,
                           shift_pp=round(share_b - share_a, 2)))
    rows.sort(key=lambda r: (-r.count_b, -r.count_a, r.key is None, r.key or ""))
    return rows


def _version_facts(pipeline: Pipeline, side: _Side, members: Mapping[str, Any]
                   ) -> dict[str, _Facts]:
    """Each conversation's mix facts in one version: from its membership row when that row was
    built at or before the version from the same source, else from the version's JSON."""
    record = side.record
    if record is None:
        return {}
    facts: dict[str, _Facts] = {}
    missing: set[str] = set()
    for cid, sha in side.sources.items():
        member = members.get(cid)
        if (member is not None and member.built_in_version <= record.version
                and member.source_sha256 == sha):
            facts[cid] = _Facts(member.persona_key, member.emotional_arc_key, member.topic_key,
                                quality_tier(member.quality_score))
        else:
            missing.add(cid)
    if missing:
        facts.update(_block_facts(pipeline, record, side.sources, missing))
    return {cid: facts[cid] for cid in side.sources}


# training.json's layout (brightrun_pipeline.builder): each conversation's block starts with a
# line of four spaces and "{", then its "conversation_metadata" object, then "training_pairs".
def _block_facts(pipeline: Pipeline, record: VersionRecord, sources: Mapping[str, str],
                 wanted: set[str]) -> dict[str, _Facts]:
    """The mix facts of some conversations as a version's training.json recorded them."""
    from brightrun_pipeline.queries import recorded_metadata

    return {cid: _Facts(meta["scaffolding"]["persona_key"],
                        meta["scaffolding"]["emotional_arc_key"],
                        meta["scaffolding"]["training_topic_key"], meta["quality_tier"])
            for cid, meta in recorded_metadata(pipeline, record, sources, wanted).items()}


def _conversation_tokens(pipeline: Pipeline, side: _Side, wanted: set[str] | None
                         ) -> dict[str, int]:
    """approx_tokens of each wanted conversation of a version (None: every one), from its
    training.jsonl: streamed line by line, and only the lines of conversations whose source has
    not been counted before in this process are parsed."""
    record = side.record
    if record is None:
        return {}
    sources = side.sources
    wanted_ids = set(sources) if wanted is None else wanted
    counts: dict[str, int] = {}
    needed: set[str] = set()
    for cid in wanted_ids:
        cached = _TOKENS_BY_SOURCE.get(sources[cid])
        if cached is None:
            needed.add(cid)
        else:
            counts[cid] = cached
    if not needed:
        return counts
    fresh = dict.fromkeys(needed, 0)  # a conversation without a trainable pair has no line
    seen: dict[str, int] = {}
    with pipeline.store.open_read(pipeline.training_bucket, record.jsonl_key) as stream:
        for line in stream:
            cid = line[_LINE_ID_START:_LINE_ID_START + _UUID_LENGTH].decode("ascii", "replace")
            if cid not in sources:  # not the builder's layout: read the line's own field
                cid = orjson.loads(line)["conversation_id"]
            if cid not in needed:
                continue
            if len(seen) > 4096:
                seen.clear()
            fresh[cid] += line_tokens(orjson.loads(line), seen)
    with _cache_lock:
        if len(_TOKENS_BY_SOURCE) + len(fresh) > _TOKENS_BY_SOURCE_MAX:
            _TOKENS_BY_SOURCE.clear()
        _TOKENS_BY_SOURCE.update({sources[cid]: count for cid, count in fresh.items()})
    counts.update(fresh)
    return counts


# --- Showing it ----------------------------------------------------------------------------


def signed(value: int | float) -> str:
    """A change with its sign: +3, -2, 0 (thousands separated)."""
    text = f"{abs(value):,.2f}" if isinstance(value, float) else f"{abs(value):,}"
    return ("+" if value > 0 else "-" if value < 0 else "") + text


def _figure(change: CountChange | TokenChange) -> str:
    if change.a is None or change.b is None:
        return f"{signed(change.delta)}"
    return f"{change.a:,} → {change.b:,} ({signed(change.delta)})"


def _ids(label: str, ids: list[str], limit: int) -> str:
    shown = ", ".join(ids[:limit])
    more = f" … and {len(ids) - limit} more" if len(ids) > limit else ""
    return f"  {label}: {shown}{more}"


def summary_lines(diff: VersionDiff, *, ids: int = 5) -> list[str]:
    """The diff's counts and totals as plain lines (the CLI's text, the first lines of the
    markdown shown in Dagster), naming the first `ids` conversations of each kind."""
    before = f"version {diff.version_a}" if diff.version_a else "nothing"
    lines = [f"{diff.file_name}: {before} → version {diff.version_b}",
             f"conversations: {_figure(diff.conversations)}: {len(diff.added)} added, "
             f"{len(diff.rebuilt)} rebuilt, {len(diff.removed)} removed"]
    for label, changed in (("added", diff.added), ("rebuilt", diff.rebuilt),
                           ("removed", diff.removed)):
        if changed:
            lines.append(_ids(label, changed, ids))
    lines += [f"pairs: {_figure(diff.pairs)}",
              f"trainable pairs: {_figure(diff.trainable_pairs)}",
              f"approx_tokens: {_figure(diff.approx_tokens)} (words and punctuation; "
              "`files report` counts cl100k_base tokens)"]
    return lines


MIX_TITLES = {"persona": "persona", "arc": "emotional arc", "topic": "topic",
              "quality_tier": "quality tier"}


def shifted(rows: list[MixRow]) -> list[MixRow]:
    """The rows of a mix whose count changed."""
    return [r for r in rows if r.count_a != r.count_b or r.shift_pp]


def markdown(diff: VersionDiff) -> str:
    """The diff as the short markdown a version's materialization shows: counts, totals and the
    keys whose share moved."""
    out = [f"**{line}**" if i == 0 else f"- {line.strip()}"
           for i, line in enumerate(summary_lines(diff))]
    for dimension in MIX_DIMENSIONS:
        moved = shifted(getattr(diff.mix, dimension))
        if not moved:
            continue
        out.append(f"\n**{MIX_TITLES[dimension].capitalize()} mix**\n")
        out.append("| key | A | B | share A % | share B % | shift (pp) |")
        out.append("| --- | ---: | ---: | ---: | ---: | ---: |")
        out += [f"| {r.key or '(none)'} | {r.count_a} | {r.count_b} | {r.share_a:.2f} | "
                f"{r.share_b:.2f} | {signed(r.shift_pp)} |" for r in moved]
    return "\n".join(out)
