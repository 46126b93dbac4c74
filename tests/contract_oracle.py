"""Independent oracle for published training-file versions.

Checks the three objects of one version (``training.json``, ``training.jsonl`` and
``manifest.json``) against the data contract (``contract.md`` sections 4, 6, 7 and 8),
computing every expected value from the source conversations (database rows plus the
enriched-file bytes). It deliberately shares no code with the pipeline.

``check_version`` raises ``AssertionError`` with a precise message on the first violation.
"""

from __future__ import annotations

import csv
import hashlib
import json
import math
import re
from dataclasses import dataclass
from datetime import date, datetime
from pathlib import Path
from typing import Any, NoReturn

EXAMPLE_DIR = Path(__file__).resolve().parent / "fixtures" / "example"

FORMAT_VERSION = "4.0.0"
FORMAT_SPEC = "brightrun-lora-v4"

TOP_LEVEL_KEYS = ["training_file_metadata", "consultant_profile", "conversations"]
METADATA_KEYS = [
    "training_file_id",
    "file_name",
    "description",
    "version",
    "file_version",
    "format_spec",
    "vertical",
    "created_date",
    "last_updated",
    "total_conversations",
    "total_training_pairs",
    "trainable_pairs",
    "quality_summary",
    "scaffolding_distribution",
]
QUALITY_SUMMARY_KEYS = [
    "avg_quality_score",
    "min_quality_score",
    "max_quality_score",
    "human_reviewed_count",
    "human_reviewed_percentage",
]
DISTRIBUTION_KEYS = ["personas", "emotional_arcs", "training_topics"]
BLOCK_KEYS = ["conversation_metadata", "training_pairs"]
BLOCK_METADATA_KEYS = [
    "conversation_id",
    "batch_id",
    "source_file",
    "source_sha256",
    "created_date",
    "total_turns",
    "quality_score",
    "quality_tier",
    "added_in_version",
    "scaffolding",
]
SCAFFOLDING_KEYS = [
    "persona_key",
    "persona_name",
    "emotional_arc_key",
    "emotional_arc",
    "training_topic_key",
    "training_topic",
]
JSONL_KEYS = [
    "id",
    "conversation_id",
    "turn_number",
    "conversation_metadata",
    "system_prompt",
    "conversation_history",
    "current_user_input",
    "emotional_context",
    "target_response",
    "training_metadata",
]
MANIFEST_REQUIRED_KEYS = [
    "training_file_id",
    "file_name",
    "version",
    "created_at",
    "dagster_run_id",
    "request_ids",
    "files",
    "conversations",
]
MANIFEST_FILE_NAMES = ["training.json", "training.jsonl"]
MANIFEST_CONVERSATION_KEYS = [
    "conversation_id",
    "batch_id",
    "source_key",
    "source_sha256",
    "pair_count",
    "added_in_version",
]

_DATE_RE = re.compile(r"^\d{4}-\d{2}-\d{2}$")
_DATETIME_TZ_RE = re.compile(
    r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}(:\d{2}(\.\d{1,6})?)?(Z|[+-]\d{2}:\d{2})$"
)
_SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
_MISSING = object()


@dataclass
class SourceConversation:
    """What the oracle knows about one conversation: its database rows plus storage."""

    conversation_id: str
    batch_id: str | None
    source_key: str
    source_bytes: bytes
    quality_score: float | None
    persona_key: str | None
    emotional_arc_key: str | None
    topic_key: str | None
    created_at: str
    added_in_version: int


# --------------------------------------------------------------------------- helpers


def _fail(message: str) -> NoReturn:
    raise AssertionError(message)


def _short(value: Any, limit: int = 160) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "float"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    if isinstance(value, dict):
        return "object"
    return type(value).__name__


def _reject_constant(name: str) -> Any:
    raise ValueError(f"non-standard JSON constant {name}")


def _no_duplicates(where: str):
    def hook(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        result: dict[str, Any] = {}
        for key, value in pairs:
            if key in result:
                _fail(f"{where}: duplicate object key {key!r}")
            result[key] = value
        return result

    return hook


def _decode_utf8(data: bytes, where: str) -> str:
    if not isinstance(data, bytes | bytearray):
        _fail(f"{where}: expected bytes, got {type(data).__name__}")
    if data.startswith(b"\xef\xbb\xbf"):
        _fail(f"{where}: starts with a UTF-8 byte-order mark")
    try:
        return bytes(data).decode("utf-8")
    except UnicodeDecodeError as exc:
        raise AssertionError(f"{where}: not valid UTF-8 ({exc})") from exc


def _parse_json(text: str, where: str) -> Any:
    try:
        return json.loads(
            text,
            object_pairs_hook=_no_duplicates(where),
            parse_constant=_reject_constant,
        )
    except ValueError as exc:
        raise AssertionError(f"{where}: not valid JSON ({exc})") from exc


def _byte_diff(got: bytes, expected: bytes, where: str, what: str) -> str:
    limit = min(len(got), len(expected))
    offset = next((i for i in range(limit) if got[i] != expected[i]), limit)
    line = got[:offset].count(b"\n") + 1
    column = offset - (got.rfind(b"\n", 0, offset) + 1) + 1
    lo = max(0, offset - 30)
    got_ctx = got[lo : offset + 30].decode("utf-8", "replace")
    exp_ctx = expected[lo : offset + 30].decode("utf-8", "replace")
    return (
        f"{where}: bytes are not {what}: first difference at byte {offset} "
        f"(line {line}, column {column}; sizes got {len(got)}, expected {len(expected)}): "
        f"got {got_ctx!r}, expected {exp_ctx!r}"
    )


def _diff(got: Any, expected: Any, path: str) -> str | None:
    """First difference between two JSON values; dict key order and value types matter."""
    if isinstance(expected, dict):
        if not isinstance(got, dict):
            return f"{path}: expected an object, got {_kind(got)} {_short(got)}"
        if list(got) != list(expected):
            missing = [k for k in expected if k not in got]
            extra = [k for k in got if k not in expected]
            if missing or extra:
                return f"{path}: keys differ: missing {missing}, unexpected {extra}"
            return f"{path}: key order differs: got {list(got)}, expected {list(expected)}"
        for key, value in expected.items():
            found = _diff(got[key], value, f"{path}.{key}")
            if found:
                return found
        return None
    if isinstance(expected, list):
        if not isinstance(got, list):
            return f"{path}: expected an array, got {_kind(got)} {_short(got)}"
        if len(got) != len(expected):
            return f"{path}: array length {len(got)}, expected {len(expected)}"
        for index, (g, e) in enumerate(zip(got, expected, strict=True)):
            found = _diff(g, e, f"{path}[{index}]")
            if found:
                return found
        return None
    if type(got) is not type(expected) or got != expected:
        return (
            f"{path}: expected {_short(expected)} ({_kind(expected)}), "
            f"got {_short(got)} ({_kind(got)})"
        )
    return None


def _expect_equal(got: Any, expected: Any, path: str) -> None:
    found = _diff(got, expected, path)
    if found:
        _fail(found)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _expect_number(got: Any, expected: float | int | None, path: str) -> None:
    """Exact numeric equality; an integer-valued float may be written either way."""
    if expected is None:
        if got is not None:
            _fail(f"{path}: expected null, got {_short(got)}")
        return
    if not _is_number(got):
        _fail(f"{path}: expected the number {expected!r}, got {_short(got)} ({_kind(got)})")
    if got != expected:
        _fail(f"{path}: expected exactly {expected!r}, got {got!r}")


def _expect_int(got: Any, expected: int, path: str) -> None:
    if not isinstance(got, int) or isinstance(got, bool):
        _fail(f"{path}: expected the integer {expected}, got {_short(got)} ({_kind(got)})")
    if got != expected:
        _fail(f"{path}: expected {expected}, got {got}")


def _expect_keys(obj: Any, keys: list[str], path: str) -> None:
    if not isinstance(obj, dict):
        _fail(f"{path}: expected an object, got {_kind(obj)} {_short(obj)}")
    if list(obj) != keys:
        missing = [k for k in keys if k not in obj]
        extra = [k for k in obj if k not in keys]
        if missing or extra:
            _fail(f"{path}: keys differ: missing {missing}, unexpected {extra}")
        _fail(f"{path}: key order differs: got {list(obj)}, expected {keys}")


def _expect_required_keys(obj: Any, keys: list[str], path: str) -> None:
    if not isinstance(obj, dict):
        _fail(f"{path}: expected an object, got {_kind(obj)} {_short(obj)}")
    missing = [k for k in keys if k not in obj]
    if missing:
        _fail(f"{path}: missing keys {missing}")


def _expect_datetime_tz(value: Any, path: str) -> None:
    if not isinstance(value, str) or not _DATETIME_TZ_RE.match(value):
        _fail(f"{path}: expected an ISO-8601 date-time with a timezone, got {_short(value)}")
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError as exc:
        raise AssertionError(f"{path}: not a valid ISO-8601 date-time: {value!r}") from exc
    if parsed.tzinfo is None or parsed.utcoffset() is None:
        _fail(f"{path}: date-time has no timezone: {value!r}")


def _expect_date(value: Any, path: str) -> None:
    if not isinstance(value, str) or not _DATE_RE.match(value):
        _fail(f"{path}: expected a YYYY-MM-DD date, got {_short(value)}")
    try:
        date.fromisoformat(value)
    except ValueError as exc:
        raise AssertionError(f"{path}: not a valid calendar date: {value!r}") from exc


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# ------------------------------------------------------------------ expectations


def quality_tier(score: float | None) -> str:
    if score is None:
        return "unscored"
    if score >= 4.5:
        return "seed_dataset"
    if score >= 3.5:
        return "production"
    if score >= 2.5:
        return "experimental"
    return "rejected"


def is_trainable(pair: dict[str, Any]) -> bool:
    target = pair.get("target_response")
    return isinstance(target, str) and target != ""


def _load_source(conv: SourceConversation) -> dict[str, Any]:
    where = f"source of conversation {conv.conversation_id} ({conv.source_key})"
    source = _parse_json(_decode_utf8(conv.source_bytes, where), where)
    if not isinstance(source, dict):
        _fail(f"{where}: expected an object")
    pairs = source.get("training_pairs")
    if not isinstance(pairs, list) or not all(isinstance(p, dict) for p in pairs):
        _fail(f"{where}: training_pairs must be an array of objects")
    return source


def _first_pair_meta(pairs: list[dict[str, Any]], key: str) -> Any:
    if not pairs:
        return None
    meta = pairs[0].get("conversation_metadata")
    return meta.get(key) if isinstance(meta, dict) else None


def _distribution(keys: list[str | None]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for key in keys:
        if key is not None:
            counts[key] = counts.get(key, 0) + 1
    return counts


def _check_inputs(conversations: list[SourceConversation], file_version: int) -> None:
    seen: set[str] = set()
    previous = 0
    for conv in conversations:
        if conv.conversation_id in seen:
            _fail(f"inputs: conversation {conv.conversation_id} listed twice")
        seen.add(conv.conversation_id)
        if not 1 <= conv.added_in_version <= file_version:
            _fail(
                f"inputs: conversation {conv.conversation_id} added_in_version "
                f"{conv.added_in_version} is outside 1..{file_version}"
            )
        if conv.added_in_version < previous:
            _fail(
                f"inputs: conversation {conv.conversation_id} (added in version "
                f"{conv.added_in_version}) listed after one added in version {previous}; "
                "conversations appear in the order they were added"
            )
        previous = conv.added_in_version


# ------------------------------------------------------------------------ checks


def _check_training_json(
    json_bytes: bytes,
    *,
    training_file_id: str,
    file_name: str,
    description: str | None,
    file_version: int,
    conversations: list[SourceConversation],
    sources: list[dict[str, Any]],
    last_updated: str | None,
    created_date: str | None,
) -> dict[str, Any]:
    where = "training.json"
    doc = _parse_json(_decode_utf8(json_bytes, where), where)
    canonical = json.dumps(doc, indent=2, ensure_ascii=False).encode("utf-8")
    if bytes(json_bytes) != canonical:
        _fail(
            _byte_diff(
                bytes(json_bytes),
                canonical,
                where,
                "UTF-8 JSON with 2-space indentation, no ASCII escaping and no trailing newline",
            )
        )
    _expect_keys(doc, TOP_LEVEL_KEYS, "training.json")

    all_pairs = [p for s in sources for p in s["training_pairs"]]
    total_pairs = len(all_pairs)
    trainable = sum(1 for p in all_pairs if is_trainable(p))

    # ---- training_file_metadata
    meta = doc["training_file_metadata"]
    mpath = "training.json training_file_metadata"
    _expect_keys(meta, METADATA_KEYS, mpath)
    _expect_equal(meta["training_file_id"], training_file_id, f"{mpath}.training_file_id")
    _expect_equal(meta["file_name"], file_name, f"{mpath}.file_name")
    _expect_equal(meta["description"], description, f"{mpath}.description")
    _expect_equal(meta["version"], FORMAT_VERSION, f"{mpath}.version")
    _expect_int(meta["file_version"], file_version, f"{mpath}.file_version")
    _expect_equal(meta["format_spec"], FORMAT_SPEC, f"{mpath}.format_spec")

    verticals: list[Any] = []
    for s in sources:
        dm = s.get("dataset_metadata")
        v = dm.get("vertical") if isinstance(dm, dict) else None
        if v not in verticals:
            verticals.append(v)
    if len(verticals) == 1:
        _expect_equal(meta["vertical"], verticals[0], f"{mpath}.vertical")
    elif verticals and meta["vertical"] not in verticals:
        _fail(f"{mpath}.vertical: {meta['vertical']!r} is none of the sources' {verticals}")

    _expect_date(meta["created_date"], f"{mpath}.created_date")
    if created_date is not None:
        _expect_equal(meta["created_date"], created_date, f"{mpath}.created_date")
    _expect_datetime_tz(meta["last_updated"], f"{mpath}.last_updated")
    if last_updated is not None:
        _expect_equal(meta["last_updated"], last_updated, f"{mpath}.last_updated")
    _expect_int(meta["total_conversations"], len(conversations), f"{mpath}.total_conversations")
    _expect_int(meta["total_training_pairs"], total_pairs, f"{mpath}.total_training_pairs")
    _expect_int(meta["trainable_pairs"], trainable, f"{mpath}.trainable_pairs")

    qpath = f"{mpath}.quality_summary"
    qs = meta["quality_summary"]
    _expect_keys(qs, QUALITY_SUMMARY_KEYS, qpath)
    scores = [c.quality_score for c in conversations if c.quality_score is not None]
    if scores:
        _expect_number(
            qs["avg_quality_score"], math.fsum(scores) / len(scores), f"{qpath}.avg_quality_score"
        )
        _expect_number(qs["min_quality_score"], min(scores), f"{qpath}.min_quality_score")
        _expect_number(qs["max_quality_score"], max(scores), f"{qpath}.max_quality_score")
    else:
        for key in ("avg_quality_score", "min_quality_score", "max_quality_score"):
            _expect_number(qs[key], None, f"{qpath}.{key}")
    reviewed = sum(
        1
        for p in all_pairs
        if isinstance(p.get("training_metadata"), dict)
        and p["training_metadata"].get("human_reviewed") is True
    )
    _expect_int(qs["human_reviewed_count"], reviewed, f"{qpath}.human_reviewed_count")
    if total_pairs:
        _expect_number(
            qs["human_reviewed_percentage"],
            round(100 * reviewed / total_pairs, 2),
            f"{qpath}.human_reviewed_percentage",
        )
    elif qs["human_reviewed_percentage"] not in (None, 0):
        _fail(f"{qpath}.human_reviewed_percentage: no pairs, got {qs['human_reviewed_percentage']}")

    dpath = f"{mpath}.scaffolding_distribution"
    dist = meta["scaffolding_distribution"]
    _expect_keys(dist, DISTRIBUTION_KEYS, dpath)
    _expect_equal(
        dist["personas"],
        _distribution([c.persona_key for c in conversations]),
        f"{dpath}.personas",
    )
    _expect_equal(
        dist["emotional_arcs"],
        _distribution([c.emotional_arc_key for c in conversations]),
        f"{dpath}.emotional_arcs",
    )
    _expect_equal(
        dist["training_topics"],
        _distribution([c.topic_key for c in conversations]),
        f"{dpath}.training_topics",
    )

    # ---- consultant_profile
    if sources:
        profile = sources[0].get("consultant_profile", _MISSING)
        for conv, s in zip(conversations, sources, strict=True):
            if s.get("consultant_profile", _MISSING) != profile:
                _fail(
                    f"inputs: consultant_profile of {conv.conversation_id} differs from that of "
                    f"{conversations[0].conversation_id}; such a conversation is ineligible"
                )
        if profile is _MISSING:
            _fail("inputs: sources have no consultant_profile")
        _expect_equal(doc["consultant_profile"], profile, "training.json consultant_profile")

    # ---- conversations
    blocks = doc["conversations"]
    if not isinstance(blocks, list):
        _fail(f"training.json conversations: expected an array, got {_kind(blocks)}")
    got_ids = [
        b.get("conversation_metadata", {}).get("conversation_id")
        if isinstance(b, dict) and isinstance(b.get("conversation_metadata"), dict)
        else None
        for b in blocks
    ]
    expected_ids = [c.conversation_id for c in conversations]
    if got_ids != expected_ids:
        _fail(
            "training.json conversations: conversation ids/order differ: "
            f"got {got_ids}, expected {expected_ids}"
        )
    for index, (block, conv, source) in enumerate(zip(blocks, conversations, sources, strict=True)):
        bpath = f"training.json conversations[{index}] ({conv.conversation_id})"
        _expect_keys(block, BLOCK_KEYS, bpath)
        cm = block["conversation_metadata"]
        cpath = f"{bpath}.conversation_metadata"
        _expect_keys(cm, BLOCK_METADATA_KEYS, cpath)
        pairs = source["training_pairs"]
        _expect_equal(cm["conversation_id"], conv.conversation_id, f"{cpath}.conversation_id")
        _expect_equal(cm["batch_id"], conv.batch_id, f"{cpath}.batch_id")
        _expect_equal(cm["source_file"], conv.source_key, f"{cpath}.source_file")
        _expect_equal(cm["source_sha256"], _sha256(conv.source_bytes), f"{cpath}.source_sha256")
        _expect_equal(cm["created_date"], conv.created_at, f"{cpath}.created_date")
        _expect_int(cm["total_turns"], len(pairs), f"{cpath}.total_turns")
        _expect_number(cm["quality_score"], conv.quality_score, f"{cpath}.quality_score")
        _expect_equal(cm["quality_tier"], quality_tier(conv.quality_score), f"{cpath}.quality_tier")
        _expect_int(cm["added_in_version"], conv.added_in_version, f"{cpath}.added_in_version")
        scaffolding = {
            "persona_key": conv.persona_key,
            "persona_name": _first_pair_meta(pairs, "client_persona"),
            "emotional_arc_key": conv.emotional_arc_key,
            "emotional_arc": _first_pair_meta(pairs, "emotional_arc"),
            "training_topic_key": conv.topic_key,
            "training_topic": _first_pair_meta(pairs, "training_topic"),
        }
        _expect_keys(cm["scaffolding"], SCAFFOLDING_KEYS, f"{cpath}.scaffolding")
        _expect_equal(cm["scaffolding"], scaffolding, f"{cpath}.scaffolding")
        _expect_equal(block["training_pairs"], pairs, f"{bpath}.training_pairs")

    return doc


def _check_training_jsonl(
    jsonl_bytes: bytes,
    *,
    conversations: list[SourceConversation],
    sources: list[dict[str, Any]],
    trainable_pairs: int,
) -> None:
    where = "training.jsonl"
    data = bytes(jsonl_bytes)
    _decode_utf8(data, where)
    expected_objects: list[dict[str, Any]] = []
    for conv, source in zip(conversations, sources, strict=True):
        for pair in source["training_pairs"]:
            if not is_trainable(pair):
                continue
            obj: dict[str, Any] = {
                "id": f"{conv.conversation_id}_turn{pair.get('turn_number')}",
                "conversation_id": conv.conversation_id,
            }
            for key in JSONL_KEYS[2:]:
                obj[key] = pair.get(key)
            expected_objects.append(obj)
    if len(expected_objects) != trainable_pairs:  # internal consistency of the oracle
        _fail(
            f"{where}: oracle found {len(expected_objects)} trainable pairs, not {trainable_pairs}"
        )

    if not expected_objects:
        if data:
            _fail(f"{where}: expected an empty file (no trainable pairs), got {len(data)} bytes")
        return
    if not data.endswith(b"\n"):
        _fail(f"{where}: the last line does not end with '\\n'")
    lines = data[:-1].split(b"\n")
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            _fail(f"{where}: line {number} is blank")
        if line.endswith(b"\r"):
            _fail(f"{where}: line {number} ends with '\\r\\n' instead of '\\n'")
    if len(lines) != len(expected_objects):
        _fail(
            f"{where}: {len(lines)} lines, expected {len(expected_objects)} "
            "(one per trainable pair; trainable_pairs in training.json)"
        )

    ids: set[str] = set()
    for number, (line, expected) in enumerate(zip(lines, expected_objects, strict=True), start=1):
        lpath = f"{where} line {number}"
        obj = _parse_json(line.decode("utf-8"), lpath)
        _expect_keys(obj, JSONL_KEYS, lpath)
        if obj["id"] in ids:
            _fail(f"{lpath}: duplicate id {obj['id']!r}")
        ids.add(obj["id"])
        _expect_equal(obj["id"], expected["id"], f"{lpath}.id")
        _expect_equal(
            obj["conversation_id"], expected["conversation_id"], f"{lpath}.conversation_id"
        )
        _expect_equal(obj, expected, lpath)
        compact = json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
        if line != compact:
            _fail(_byte_diff(line, compact, lpath, "compact UTF-8 JSON without ASCII escaping"))


def _check_manifest(
    manifest_bytes: bytes,
    json_bytes: bytes,
    jsonl_bytes: bytes,
    *,
    training_file_id: str,
    file_name: str,
    file_version: int,
    conversations: list[SourceConversation],
    sources: list[dict[str, Any]],
    request_ids: list[str] | None,
) -> None:
    where = "manifest.json"
    manifest = _parse_json(_decode_utf8(manifest_bytes, where), where)
    _expect_required_keys(manifest, MANIFEST_REQUIRED_KEYS, where)
    _expect_equal(manifest["training_file_id"], training_file_id, f"{where}.training_file_id")
    _expect_equal(manifest["file_name"], file_name, f"{where}.file_name")
    _expect_int(manifest["version"], file_version, f"{where}.version")
    _expect_datetime_tz(manifest["created_at"], f"{where}.created_at")
    run_id = manifest["dagster_run_id"]
    if run_id is not None and not isinstance(run_id, str):
        _fail(f"{where}.dagster_run_id: expected a string or null, got {_short(run_id)}")
    rids = manifest["request_ids"]
    if not isinstance(rids, list) or not all(isinstance(r, str) for r in rids):
        _fail(f"{where}.request_ids: expected an array of strings, got {_short(rids)}")
    if len(set(rids)) != len(rids):
        _fail(f"{where}.request_ids: duplicate request ids {rids}")
    if request_ids is not None:
        _expect_equal(rids, list(request_ids), f"{where}.request_ids")

    files = manifest["files"]
    _expect_required_keys(files, MANIFEST_FILE_NAMES, f"{where}.files")
    for name, content in zip(MANIFEST_FILE_NAMES, (json_bytes, jsonl_bytes), strict=True):
        fpath = f"{where}.files[{name!r}]"
        entry = files[name]
        _expect_required_keys(entry, ["key", "sha256", "size"], fpath)
        _expect_equal(entry["key"], f"{training_file_id}/v{file_version}/{name}", f"{fpath}.key")
        if not isinstance(entry["sha256"], str) or not _SHA256_RE.match(entry["sha256"]):
            _fail(
                f"{fpath}.sha256: expected 64 lowercase hex digits, got {_short(entry['sha256'])}"
            )
        _expect_equal(entry["sha256"], _sha256(bytes(content)), f"{fpath}.sha256")
        _expect_int(entry["size"], len(content), f"{fpath}.size")

    entries = manifest["conversations"]
    if not isinstance(entries, list):
        _fail(f"{where}.conversations: expected an array, got {_kind(entries)}")
    got_ids = [e.get("conversation_id") if isinstance(e, dict) else None for e in entries]
    expected_ids = [c.conversation_id for c in conversations]
    if got_ids != expected_ids:
        _fail(
            f"{where}.conversations: conversation ids/order differ: "
            f"got {got_ids}, expected {expected_ids}"
        )
    for index, (entry, conv, source) in enumerate(
        zip(entries, conversations, sources, strict=True)
    ):
        epath = f"{where}.conversations[{index}] ({conv.conversation_id})"
        _expect_required_keys(entry, MANIFEST_CONVERSATION_KEYS, epath)
        _expect_equal(entry["batch_id"], conv.batch_id, f"{epath}.batch_id")
        _expect_equal(entry["source_key"], conv.source_key, f"{epath}.source_key")
        _expect_equal(entry["source_sha256"], _sha256(conv.source_bytes), f"{epath}.source_sha256")
        _expect_int(entry["pair_count"], len(source["training_pairs"]), f"{epath}.pair_count")
        _expect_int(entry["added_in_version"], conv.added_in_version, f"{epath}.added_in_version")


def check_version(
    json_bytes: bytes,
    jsonl_bytes: bytes,
    manifest_bytes: bytes,
    *,
    training_file_id: str,
    file_name: str,
    description: str | None,
    file_version: int,
    conversations: list[SourceConversation],
    last_updated: str | None = None,
    created_date: str | None = None,
    request_ids: list[str] | None = None,
) -> None:
    """Check one published version against the contract.

    ``conversations`` is the expected content of the version in expected file order.
    The optional ``last_updated``, ``created_date`` and ``request_ids`` pin values the
    caller knows; without them only their format is checked.
    Raises ``AssertionError`` on the first violation.
    """
    if not isinstance(file_version, int) or isinstance(file_version, bool) or file_version < 1:
        _fail(f"inputs: file_version must be a positive integer, got {file_version!r}")
    _check_inputs(conversations, file_version)
    sources = [_load_source(c) for c in conversations]
    doc = _check_training_json(
        json_bytes,
        training_file_id=training_file_id,
        file_name=file_name,
        description=description,
        file_version=file_version,
        conversations=conversations,
        sources=sources,
        last_updated=last_updated,
        created_date=created_date,
    )
    _check_training_jsonl(
        jsonl_bytes,
        conversations=conversations,
        sources=sources,
        trainable_pairs=doc["training_file_metadata"]["trainable_pairs"],
    )
    _check_manifest(
        manifest_bytes,
        json_bytes,
        jsonl_bytes,
        training_file_id=training_file_id,
        file_name=file_name,
        file_version=file_version,
        conversations=conversations,
        sources=sources,
        request_ids=request_ids,
    )


# ----------------------------------------------------------------------- example


def _nullable(value: str) -> str | None:
    return value if value != "" else None


def load_example(root: Path | None = None) -> tuple[dict[str, Any], list[SourceConversation]]:
    """Sources and metadata of the worked example (version 1, conversations in CSV order).

    The metadata dict holds ``training_file_id``, ``file_name``, ``description`` and
    ``file_version``, so it can be passed to ``check_version`` as keyword arguments.
    """
    base = Path(root) if root is not None else EXAMPLE_DIR
    manifest = json.loads((base / "expected" / "manifest.json").read_bytes())
    conversations: list[SourceConversation] = []
    with (base / "conversations.csv").open(encoding="utf-8", newline="") as handle:
        for row in csv.DictReader(handle):
            key = row["enriched_file_path"]
            score = _nullable(row["quality_score"])
            conversations.append(
                SourceConversation(
                    conversation_id=row["conversation_id"],
                    batch_id=_nullable(row["batch_job_id"]),
                    source_key=key,
                    source_bytes=(base / "conversation-files" / key).read_bytes(),
                    quality_score=float(score) if score is not None else None,
                    persona_key=_nullable(row["persona_key"]),
                    emotional_arc_key=_nullable(row["emotional_arc_key"]),
                    topic_key=_nullable(row["topic_key"]),
                    created_at=row["created_at"],
                    added_in_version=1,
                )
            )
    metadata = {
        "training_file_id": manifest["training_file_id"],
        "file_name": "Example training file",
        "description": "Three conversations from two batches",
        "file_version": 1,
    }
    return metadata, conversations
