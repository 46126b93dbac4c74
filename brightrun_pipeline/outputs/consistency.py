"""The checks training.json, training.jsonl and the manifest are held to, run in one streamed
pass over both objects (a JSONL line is checked against its pair in the JSON): the outcomes of
`matches_v4_format`, `unique_conversations`, `header_matches_membership`,
`manifest_matches_objects`, `line_count_matches`, `lines_equal_pairs` and `unique_ids`.

When a version only appends, the blocks and lines it copied are compared byte for byte with the
previous version (checked when it was published) and only the new ones are parsed; if the copied
bytes differ, everything is parsed so that each problem is named by its check.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import orjson
from pydantic import ValidationError

from brightrun_pipeline.members import HeaderTotals
from brightrun_pipeline.models import (
    JSONL_FIELDS,
    ConsultantProfile,
    Manifest,
    TrainingConversation,
    TrainingFileMetadata,
)
from brightrun_pipeline.outputs.base import CheckOutcome
from brightrun_pipeline.storage import ObjectStore, read_exactly
from brightrun_pipeline.streams import (
    BLOCK_SEPARATOR,
    BODY_CLOSE,
    CHUNK,
    HashingReader,
    Limited,
    VerifyingReader,
    iter_blocks,
    iter_lines,
    skip,
)

if TYPE_CHECKING:
    from brightrun_pipeline.builder import BuiltVersion, PreviousVersion
    from brightrun_pipeline.verification import CheckContext

CARRIED = "carried_bytes_differ"
NAMES = ("matches_v4_format", "unique_conversations", "header_matches_membership",
         "manifest_matches_objects", "line_count_matches", "lines_equal_pairs", "unique_ids")


def outcome(name: str) -> Callable[[CheckContext], CheckOutcome]:
    """A check's `run`: its outcome from the context's one pass over both objects."""
    assert name in NAMES
    return lambda context: context.once("consistency", lambda: run(context))[name]


def run(context: CheckContext) -> dict[str, CheckOutcome]:
    """Every outcome of the pass; when both objects were carried over (an append), the copied
    bytes are compared, not re-parsed."""
    built, store, bucket = context.built, context.store, context.bucket
    members = context.previous_members()
    if {"training.json", "training.jsonl"} <= built.carried:
        report = _verify(store, bucket, built, members, carried=built.spec.previous)
        if CARRIED not in report:
            return report
    report = _verify(store, bucket, built, members, carried=None)
    report.pop(CARRIED, None)
    return report


def _verify(store: ObjectStore, bucket: str, built: BuiltVersion, previous_members: list[Any],
            carried: PreviousVersion | None) -> dict[str, CheckOutcome]:
    problems: dict[str, list[str]] = {name: [] for name in NAMES}
    expected_members = ([m.conversation_id for m in previous_members]
                        + [m.conversation_id for m in built.added_members])
    with store.open_read(bucket, built.json.key) as json_raw, \
            store.open_read(bucket, built.jsonl.key) as jsonl_raw:
        json_reader = HashingReader(json_raw)
        jsonl_reader = HashingReader(jsonl_raw)
        prefix = read_exactly(json_reader, built.body_start)
        header = _parse_header(prefix, problems)
        seen_conversations: set[str] = set()
        line_ids = _LineIds(problems["unique_ids"])
        totals = _Recount()
        line_count = 0
        body_length = built.body_end - built.body_start
        first_index = 0
        if carried is not None:
            carried_length = carried.body_end - carried.body_start
            same = _same_as_previous(store, bucket, carried, json_reader, carried_length)
            skip(jsonl_reader, carried.jsonl.size)
            if not same or jsonl_reader.hash.copy().hexdigest() != carried.jsonl.sha256:
                return {CARRIED: CheckOutcome(False, "copied bytes differ from the previous "
                                                     "version")}
            carried_totals = HeaderTotals()
            for member in previous_members:
                carried_totals.add(member)
                seen_conversations.add(member.conversation_id)
            totals.add_carried(carried_totals)
            line_count = carried_totals.trainable
            line_ids.carried_members = {m.conversation_id for m in previous_members}
            first_index = len(previous_members)
            body_length -= carried_length
            if built.added_members:
                separator = json_reader.read(len(BLOCK_SEPARATOR))
                body_length -= len(separator)
                if separator != BLOCK_SEPARATOR:
                    problems["matches_v4_format"].append("no separator after the copied blocks")
        verifier = VerifyingReader(json_reader, expected_sha256="", expected_size=-1, label="")
        lines = iter_lines(jsonl_reader)
        for offset, (cid, block_bytes) in enumerate(iter_blocks(verifier, body_length)):
            index = first_index + offset
            block = orjson.loads(block_bytes)
            try:
                TrainingConversation.model_validate(block)
            except ValidationError as exc:
                problems["matches_v4_format"].append(f"block {index} ({cid}): {exc.errors()[0]}")
            if cid in seen_conversations:
                problems["unique_conversations"].append(f"{cid} appears twice")
            seen_conversations.add(cid)
            if index >= len(expected_members) or expected_members[index] != cid:
                problems["header_matches_membership"].append(
                    f"block {index} is {cid}, membership says "
                    f"{expected_members[index] if index < len(expected_members) else 'nothing'}")
            totals.add(block)
            for pair in block["training_pairs"]:
                target = pair.get("target_response")
                if not (isinstance(target, str) and target):
                    continue
                line = next(lines, None)
                if line is None:
                    problems["line_count_matches"].append("JSONL ends before the JSON's last pair")
                    break
                line_count += 1
                expected = {"id": f"{cid}_turn{pair['turn_number']}", "conversation_id": cid}
                expected.update({name: pair.get(name) for name in JSONL_FIELDS[2:]})
                expected_line = orjson.dumps(expected) + b"\n"
                if line != expected_line:
                    problems["lines_equal_pairs"].append(f"line {line_count} differs from its pair")
                # A line equal to its pair carries the pair's id; any other line is parsed.
                line_ids.add(line_count, expected["id"] if line == expected_line else line)
        extra = 0
        for line in lines:
            extra += 1
            line_ids.add(line_count + extra, line)
        if extra:
            problems["line_count_matches"].append(f"{extra} JSONL line(s) beyond the JSON's pairs")
        tail = json_reader.read(len(BODY_CLOSE) + 1)
        if tail != BODY_CLOSE:
            problems["matches_v4_format"].append("training.json does not end with the array close")
        json_object = (json_reader.hash.hexdigest(), json_reader.size)
        jsonl_object = (jsonl_reader.hash.hexdigest(), jsonl_reader.size)
    if carried is not None:
        line_ids.check_against_copied(store, bucket, built.jsonl.key, carried.jsonl.size)
    if len(seen_conversations) != len(expected_members):
        problems["header_matches_membership"].append(
            f"{len(seen_conversations)} blocks for {len(expected_members)} members")
    if header is not None:
        _compare_header(header, totals, line_count, problems)
    _check_manifest(store.get_bytes(bucket, built.manifest.key), built, json_object,
                    jsonl_object, expected_members, problems)
    return {name: CheckOutcome(not found, "; ".join(found[:5]) or "ok")
            for name, found in problems.items()}


def _same_as_previous(store: ObjectStore, bucket: str, previous: PreviousVersion,
                      reader: HashingReader, length: int) -> bool:
    """Whether the next `length` bytes are the previous version's conversation blocks."""
    with store.open_read(bucket, previous.json.key) as old:
        read_exactly(HashingReader(old), previous.body_start)
        remaining = length
        while remaining > 0:
            size = min(CHUNK, remaining)
            ours, theirs = reader.read(size), old.read(size)
            if ours != theirs or not ours:
                return False
            remaining -= len(ours)
    return True


def _line_id(line: bytes) -> str | None:
    """The `id` a JSONL line declares, or None when it declares no string id."""
    try:
        value = orjson.loads(line)
    except orjson.JSONDecodeError:
        return None
    line_id = value.get("id") if isinstance(value, dict) else None
    return line_id if isinstance(line_id, str) else None


class _LineIds:
    """The check `unique_ids`: the `id` of every JSONL line read, and the lines that repeat one.

    On an append, the copied lines are not re-read: they are the previous version's, whose ids
    were unique when it was published and each is `<conversation id>_turn<k>` of a previous member
    (its lines were then equal to its pairs). So a new line can only repeat a copied id if its own
    id names a previous member; only such ids are looked up among the copied lines, at the end.
    """

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        self.seen: set[str] = set()
        self.carried_members: set[str] = set()
        self.suspects: dict[str, int] = {}

    def add(self, number: int, line_or_id: bytes | str) -> None:
        """Record line `number`, given its id when already known, else its bytes."""
        line_id = line_or_id if isinstance(line_or_id, str) else _line_id(line_or_id)
        if line_id is None:
            self.problems.append(f"line {number} has no string id")
            return
        if line_id in self.seen:
            self.problems.append(f"id {line_id} appears twice (line {number})")
        self.seen.add(line_id)
        if line_id.rpartition("_turn")[0] in self.carried_members:
            self.suspects.setdefault(line_id, number)

    def check_against_copied(self, store: ObjectStore, bucket: str, key: str,
                             copied_size: int) -> None:
        """Look the new ids that name a previous member up among the copied lines."""
        if not self.suspects:
            return
        with store.open_read(bucket, key) as raw:
            reader = HashingReader(Limited(raw, copied_size))
            for number, line in enumerate(iter_lines(reader), start=1):
                line_id = _line_id(line)
                if line_id in self.suspects:
                    self.problems.append(f"id {line_id} appears twice (line {number} copied "
                                         f"from the previous version, line "
                                         f"{self.suspects[line_id]})")


def _parse_header(prefix: bytes, problems: dict[str, list[str]]) -> dict[str, Any] | None:
    try:
        head = orjson.loads(prefix.rstrip()[:-1] + b"[]}")
        TrainingFileMetadata.model_validate(head["training_file_metadata"])
        ConsultantProfile.model_validate(head["consultant_profile"])
    except (orjson.JSONDecodeError, KeyError, ValidationError, IndexError) as exc:
        problems["matches_v4_format"].append(f"header: {exc}")
        return None
    return head["training_file_metadata"]


class _Recount:
    """Header figures recomputed from the blocks actually written."""

    def __init__(self) -> None:
        self.conversations = 0
        self.pairs = 0
        self.trainable = 0
        self.reviewed = 0
        self.scores: list[float] = []
        self.distribution: dict[str, dict[str, int]] = {
            "personas": {}, "emotional_arcs": {}, "training_topics": {}}

    def add_carried(self, carried: HeaderTotals) -> None:
        """Start from the conversations carried over from the previous version."""
        self.conversations += carried.conversations
        self.pairs += carried.pairs
        self.trainable += carried.trainable
        self.reviewed += carried.human_reviewed
        self.scores.extend(carried.scores)
        for name, counts in (("personas", carried.personas), ("emotional_arcs", carried.arcs),
                             ("training_topics", carried.topics)):
            for key, count in counts.items():
                self.distribution[name][key] = self.distribution[name].get(key, 0) + count

    def add(self, block: dict[str, Any]) -> None:
        meta = block["conversation_metadata"]
        pairs = block["training_pairs"]
        self.conversations += 1
        self.pairs += len(pairs)
        for pair in pairs:
            target = pair.get("target_response")
            self.trainable += isinstance(target, str) and bool(target)
            self.reviewed += pair.get("training_metadata", {}).get("human_reviewed") is True
        if meta.get("quality_score") is not None:
            self.scores.append(float(meta["quality_score"]))
        scaffolding = meta.get("scaffolding", {})
        for name, key in (("personas", "persona_key"), ("emotional_arcs", "emotional_arc_key"),
                          ("training_topics", "training_topic_key")):
            value = scaffolding.get(key)
            if value is not None:
                counts = self.distribution[name]
                counts[value] = counts.get(value, 0) + 1


def _compare_header(header: dict[str, Any], totals: _Recount, lines: int,
                    problems: dict[str, list[str]]) -> None:
    scores = totals.scores
    expected = {
        "total_conversations": totals.conversations,
        "total_training_pairs": totals.pairs,
        "trainable_pairs": totals.trainable,
        "quality_summary": {
            "avg_quality_score": math.fsum(scores) / len(scores) if scores else None,
            "min_quality_score": min(scores) if scores else None,
            "max_quality_score": max(scores) if scores else None,
            "human_reviewed_count": totals.reviewed,
            "human_reviewed_percentage": (
                round(100 * totals.reviewed / totals.pairs, 2) if totals.pairs else 0.0),
        },
        "scaffolding_distribution": totals.distribution,
    }
    for name, value in expected.items():
        actual = header.get(name)
        # Byte comparison also catches a wrong key order in the distributions.
        if orjson.dumps(actual) != orjson.dumps(value):
            problems["header_matches_membership"].append(
                f"{name}: header {actual!r}, blocks give {value!r}")
    if lines != header.get("trainable_pairs"):
        problems["line_count_matches"].append(
            f"{lines} JSONL lines for trainable_pairs={header.get('trainable_pairs')}")


def _check_manifest(data: bytes, built: BuiltVersion, json_object: tuple[str, int],
                    jsonl_object: tuple[str, int], members: list[str],
                    problems: dict[str, list[str]]) -> None:
    found = problems["manifest_matches_objects"]
    try:
        manifest = Manifest.model_validate_json(data)
    except ValidationError as exc:
        found.append(f"manifest does not validate: {exc.errors()[0]}")
        return
    if hashlib.sha256(data).hexdigest() != built.manifest.sha256:
        found.append("manifest.json is not the manifest that was built")
    expected_names = [name for name in built.objects if name != "manifest.json"]
    if list(manifest.files) != expected_names:
        found.append(f"manifest lists {list(manifest.files)}, the version has {expected_names}")
        return
    for name, item in built.exports.items():
        if manifest.files[name] != item:
            found.append(f"{name}: manifest says {manifest.files[name].sha256}, built "
                         f"{item.sha256}")
    for name, (sha, size) in (("training.json", json_object), ("training.jsonl", jsonl_object)):
        entry = manifest.files[name]
        if (entry.sha256, entry.size) != (sha, size):
            found.append(
                f"{name}: manifest says {entry.sha256}/{entry.size}, object is {sha}/{size}"
            )
    if [c.conversation_id for c in manifest.conversations] != members:
        found.append("manifest conversations differ from the membership")
