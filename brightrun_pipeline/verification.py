"""Checks every built version must pass before it is published (streamed, one block at a time)."""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from itertools import zip_longest
from typing import TYPE_CHECKING, Any

import orjson
from pydantic import ValidationError

from brightrun_pipeline.builder import (
    BLOCK_SEPARATOR,
    BODY_CLOSE,
    CHUNK,
    BuiltVersion,
    HeaderTotals,
    PreviousVersion,
    VerifyingReader,
    iter_blocks,
)
from brightrun_pipeline.models import (
    JSONL_FIELDS,
    ConsultantProfile,
    Manifest,
    TrainingConversation,
    TrainingFileMetadata,
)
from brightrun_pipeline.outputs import BY_NAME, SPLITS, split_name
from brightrun_pipeline.retry import RetryingStore
from brightrun_pipeline.storage import ObjectStore

if TYPE_CHECKING:
    from brightrun_pipeline.service import Pipeline


@dataclass(frozen=True)
class CheckOutcome:
    """Whether one check passed, and why not."""

    passed: bool
    detail: str


class _HashingReader:
    """A reader that hashes everything read through it."""

    def __init__(self, raw: Any) -> None:
        self.raw = raw
        self.hash = hashlib.sha256()
        self.size = 0

    def read(self, n: int = -1) -> bytes:
        data = self.raw.read(n)
        self.hash.update(data)
        self.size += len(data)
        return data


CARRIED = "carried_bytes_differ"


def verify_built_version(pipeline: Pipeline, built: BuiltVersion) -> dict[str, CheckOutcome]:
    """Run every pre-publication check on a built version's objects.

    When a version only appends, the blocks and lines it copied are compared byte for byte with
    the previous version (checked when it was published) and only the new ones are parsed; if the
    copied bytes differ, everything is parsed so that each problem is named by its check.
    """
    spec = built.spec
    appending = spec.previous is not None and not spec.rebuilds
    exports = {BY_NAME[name].export.check_name: _check_export(pipeline, built, name, appending)
               for name in built.exports if BY_NAME[name].split is None}
    exports[SPLIT_CHECK] = _check_split(pipeline, built)
    if appending:
        report = _verify(pipeline, built, carried=spec.previous)
        if CARRIED not in report:
            return {**report, **exports}
    report = _verify(pipeline, built, carried=None)
    report.pop(CARRIED, None)
    return {**report, **exports}


SPLIT_CHECK = "split_is_leak_free"


def _check_split(pipeline: Pipeline, built: BuiltVersion) -> CheckOutcome:
    """The train/validation parts of every export hold exactly the rows of their side's
    conversations, in order (so no conversation is on both sides), and no conversation changed
    side since it was placed."""
    splits = built.spec.splits
    if splits is None:
        return CheckOutcome(True, "no validation share configured: nothing is split")
    problems: list[str] = []
    moved = [m.conversation_id for m in pipeline.db.iter_members(built.spec.training_file_id)
             if m.split is not None and splits.get(m.conversation_id) != m.split]
    if moved:
        problems.append(f"{len(moved)} conversation(s) changed side, e.g. {moved[0]}")
    # Clusters of near-duplicates stay on one side (those of earlier versions were checked then).
    spec = built.spec
    neighbours = pipeline.split_neighbours(
        spec.training_file_id if spec.previous is not None else None,
        [m.conversation_id for m in built.added_members])
    for cid, others in neighbours.items():
        across = [other for other in others if splits.get(other) not in (None, splits.get(cid))]
        if across:
            problems.append(f"{cid} is on the {splits.get(cid)} side, its near-duplicate "
                            f"{across[0]} on the other")
    store, bucket = RetryingStore(pipeline.store, pipeline.retry), pipeline.training_bucket
    for name in built.exports:
        output = BY_NAME[name]
        if output.split is not None or output.export is None:
            continue
        with ExitStack() as stack:
            rows = _iter_lines(_HashingReader(stack.enter_context(
                store.open_read(bucket, built.exports[name].key))))
            lines = _iter_lines(_HashingReader(stack.enter_context(
                store.open_read(bucket, built.jsonl.key))))
            parts = {side: _iter_lines(_HashingReader(stack.enter_context(store.open_read(
                bucket, built.exports[split_name(output.export, side)].key))))
                for side in SPLITS}
            for number, (row, line) in enumerate(zip(rows, lines, strict=False), start=1):
                side = splits.get(orjson.loads(line).get("conversation_id"))
                if side not in parts:
                    problems.append(f"{name} row {number}: its conversation has no side")
                    break
                if next(parts[side], None) != row:
                    problems.append(f"{split_name(output.export, side)} differs from the "
                                    f"{side} rows of {name} at row {number}")
                    break
            for side, rest in parts.items():
                if next(rest, None) is not None:
                    problems.append(f"{split_name(output.export, side)} has rows of no "
                                    f"{side} conversation")
    return CheckOutcome(not problems, "; ".join(problems[:5]) or "ok")


def _check_export(pipeline: Pipeline, built: BuiltVersion, name: str,
                  appending: bool) -> CheckOutcome:
    """An export's blocking check: one row per JSONL line, each sound for the line it comes from
    (the export's own rules), and the object is the one that was built. On an append the rows
    copied from the previous version are compared with its export's hash, not parsed again."""
    export = BY_NAME[name].export
    assert export is not None
    store, bucket = RetryingStore(pipeline.store, pipeline.retry), pipeline.training_bucket
    built_object, previous = built.exports[name], built.spec.previous
    carried = previous.exports.get(name) if appending and previous is not None else None
    problems: list[str] = []
    with store.open_read(bucket, built_object.key) as rows_raw, \
            store.open_read(bucket, built.jsonl.key) as lines_raw:
        rows, lines = _HashingReader(rows_raw), _HashingReader(lines_raw)
        if carried is not None:
            assert previous is not None
            _skip(rows, carried.size)
            _skip(lines, previous.jsonl_size)
            if rows.hash.copy().hexdigest() != carried.sha256:
                problems.append(f"the rows copied from version {previous.version} differ from "
                                "its export")
        rows_seen = lines_seen = 0
        for number, (row, line) in enumerate(
                zip_longest(_iter_lines(rows), _iter_lines(lines)), start=1):
            rows_seen += row is not None
            lines_seen += line is not None
            if row is None or line is None:
                continue
            try:
                parsed, pair = orjson.loads(row), orjson.loads(line)
            except orjson.JSONDecodeError:
                problems.append(f"new row {number} or its JSONL line is not JSON")
                continue
            problems += [f"new row {number}: {p}" for p in export.problems(parsed, pair)]
        if rows_seen != lines_seen:
            # Named first: one missing row puts every later row against the wrong line.
            problems.insert(0, f"{'fewer' if rows_seen < lines_seen else 'more'} rows than "
                               f"JSONL lines ({rows_seen} new rows, {lines_seen} new lines)")
        _skip(rows, 1 << 62)
        if (rows.hash.hexdigest(), rows.size) != (built_object.sha256, built_object.size):
            problems.append(f"{name} is not the object that was built")
    return CheckOutcome(not problems, "; ".join(problems[:5]) or "ok")


def _verify(pipeline: Pipeline, built: BuiltVersion,
            carried: PreviousVersion | None) -> dict[str, CheckOutcome]:
    # The objects are read back through the same retry layer that wrote them.
    store, bucket = RetryingStore(pipeline.store, pipeline.retry), pipeline.training_bucket
    problems: dict[str, list[str]] = {name: [] for name in (
        "matches_v4_format", "unique_conversations", "header_matches_membership",
        "manifest_matches_objects", "line_count_matches", "lines_equal_pairs", "unique_ids")}
    spec = built.spec
    previous_members = (list(pipeline.db.iter_members(spec.training_file_id))
                        if spec.previous is not None else [])
    expected_members = ([m.conversation_id for m in previous_members]
                        + [m.conversation_id for m in built.added_members])
    with store.open_read(bucket, built.json.key) as json_raw, \
            store.open_read(bucket, built.jsonl.key) as jsonl_raw:
        json_reader = _HashingReader(json_raw)
        jsonl_reader = _HashingReader(jsonl_raw)
        prefix = _read_exact(json_reader, built.body_start)
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
            _skip(jsonl_reader, carried.jsonl_size)
            if not same or jsonl_reader.hash.copy().hexdigest() != carried.jsonl_sha256:
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
        lines = _iter_lines(jsonl_reader)
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
        line_ids.check_against_copied(store, bucket, built.jsonl.key, carried.jsonl_size)
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
                      reader: _HashingReader, length: int) -> bool:
    """Whether the next `length` bytes are the previous version's conversation blocks."""
    with store.open_read(bucket, previous.json_key) as old:
        _read_exact(_HashingReader(old), previous.body_start)
        remaining = length
        while remaining > 0:
            size = min(CHUNK, remaining)
            ours, theirs = reader.read(size), old.read(size)
            if ours != theirs or not ours:
                return False
            remaining -= len(ours)
    return True


def _read_exact(reader: _HashingReader, length: int) -> bytes:
    parts = []
    remaining = length
    while remaining > 0:
        data = reader.read(min(CHUNK, remaining))
        if not data:
            break
        parts.append(data)
        remaining -= len(data)
    return b"".join(parts)


def _skip(reader: _HashingReader, length: int) -> None:
    """Read (and so hash) the next `length` bytes without keeping them."""
    remaining = length
    while remaining > 0:
        data = reader.read(min(CHUNK, remaining))
        if not data:
            break
        remaining -= len(data)


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
            reader = _HashingReader(_Limited(raw, copied_size))
            for number, line in enumerate(_iter_lines(reader), start=1):
                line_id = _line_id(line)
                if line_id in self.suspects:
                    self.problems.append(f"id {line_id} appears twice (line {number} copied "
                                         f"from the previous version, line "
                                         f"{self.suspects[line_id]})")


class _Limited:
    """The first `size` bytes of a reader."""

    def __init__(self, raw: Any, size: int) -> None:
        self.raw = raw
        self.remaining = size

    def read(self, n: int = -1) -> bytes:
        if self.remaining <= 0:
            return b""
        n = self.remaining if n < 0 else min(n, self.remaining)
        data = self.raw.read(n)
        self.remaining -= len(data)
        return data


def _parse_header(prefix: bytes, problems: dict[str, list[str]]) -> dict[str, Any] | None:
    try:
        head = orjson.loads(prefix.rstrip()[:-1] + b"[]}")
        TrainingFileMetadata.model_validate(head["training_file_metadata"])
        ConsultantProfile.model_validate(head["consultant_profile"])
    except (orjson.JSONDecodeError, KeyError, ValidationError, IndexError) as exc:
        problems["matches_v4_format"].append(f"header: {exc}")
        return None
    return head["training_file_metadata"]


def _iter_lines(reader: _HashingReader) -> Iterator[bytes]:
    pending = b""
    while chunk := reader.read(CHUNK):
        pending += chunk
        *complete, pending = pending.split(b"\n")
        for line in complete:
            yield line + b"\n"
    if pending:
        yield pending


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
    expected_names = ["training.json", "training.jsonl", *built.exports]
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
