"""Self-tests of the contract oracle on the vendored worked example.

The oracle must accept the example's expected outputs (and consistent variants of them)
and reject every mutation that breaks the contract.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from contract_oracle import EXAMPLE_DIR, SourceConversation, check_version, load_example

EXPECTED_DIR = EXAMPLE_DIR / "expected"
LAST_UPDATED = "2025-12-01T09:30:00+00:00"


@dataclasses.dataclass
class Outputs:
    json_bytes: bytes
    jsonl_bytes: bytes
    manifest_bytes: bytes


def _expected() -> Outputs:
    return Outputs(
        (EXPECTED_DIR / "training.json").read_bytes(),
        (EXPECTED_DIR / "training.jsonl").read_bytes(),
        (EXPECTED_DIR / "manifest.json").read_bytes(),
    )


def _dump_json(doc: Any) -> bytes:
    return json.dumps(doc, indent=2, ensure_ascii=False).encode("utf-8")


def _dump_line(obj: Any) -> bytes:
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


def _lines(out: Outputs) -> list[dict[str, Any]]:
    return [json.loads(line) for line in out.jsonl_bytes.splitlines()]


def _with_lines(out: Outputs, lines: list[bytes]) -> Outputs:
    return dataclasses.replace(out, jsonl_bytes=b"".join(line + b"\n" for line in lines))


def _rehash(out: Outputs) -> Outputs:
    """Make the manifest's file hashes and sizes match the (mutated) objects."""
    manifest = json.loads(out.manifest_bytes)
    for name, data in (("training.json", out.json_bytes), ("training.jsonl", out.jsonl_bytes)):
        manifest["files"][name]["sha256"] = hashlib.sha256(data).hexdigest()
        manifest["files"][name]["size"] = len(data)
    return dataclasses.replace(out, manifest_bytes=_dump_json(manifest))


def _edit_json(out: Outputs, edit: Callable[[dict[str, Any]], None]) -> Outputs:
    doc = json.loads(out.json_bytes)
    edit(doc)
    return _rehash(dataclasses.replace(out, json_bytes=_dump_json(doc)))


def _edit_line(out: Outputs, index: int, edit: Callable[[dict[str, Any]], None]) -> Outputs:
    raw = out.jsonl_bytes.splitlines()
    obj = json.loads(raw[index])
    edit(obj)
    raw[index] = _dump_line(obj)
    return _rehash(_with_lines(out, raw))


def _edit_manifest(out: Outputs, edit: Callable[[dict[str, Any]], None]) -> Outputs:
    manifest = json.loads(out.manifest_bytes)
    edit(manifest)
    return dataclasses.replace(out, manifest_bytes=_dump_json(manifest))


def _check(out: Outputs, conversations: list[SourceConversation] | None = None, **overrides):
    metadata, example_conversations = load_example()
    metadata.update(overrides)
    check_version(
        out.json_bytes,
        out.jsonl_bytes,
        out.manifest_bytes,
        **metadata,
        conversations=example_conversations if conversations is None else conversations,
    )


# ------------------------------------------------------------------ acceptance


def test_load_example_reads_the_vendored_fixture():
    metadata, conversations = load_example()
    manifest = json.loads((EXPECTED_DIR / "manifest.json").read_bytes())
    assert metadata == {
        "training_file_id": manifest["training_file_id"],
        "file_name": "Example training file",
        "description": "Three conversations from two batches",
        "file_version": 1,
    }
    assert [c.conversation_id for c in conversations] == [
        "563cee60-853e-4362-9224-3bcceba4d29f",
        "20df9970-8e9f-4c1c-87dd-8de0965fc090",
        "b91a2a87-ead8-4f50-b3e9-ffd30ee8456b",
    ]
    assert [c.quality_score for c in conversations] == [3.9, 4.03, 3.92]
    assert [c.batch_id for c in conversations] == [
        "dc207dcc-8e0b-4f4a-af9c-f861ec9cb658",
        "dc207dcc-8e0b-4f4a-af9c-f861ec9cb658",
        "46289696-c202-4b27-8819-ea1008fdb727",
    ]
    assert conversations[0].created_at == "2025-11-01T00:00:35.000000+00:00"
    assert all(c.added_in_version == 1 for c in conversations)
    fixture_dir = Path(__file__).resolve().parent / "fixtures" / "example"
    assert fixture_dir == EXAMPLE_DIR


def test_quality_formulas_reproduce_the_example():
    doc = json.loads(_expected().json_bytes)
    summary = doc["training_file_metadata"]["quality_summary"]
    assert summary["avg_quality_score"] == 3.9499999999999997
    assert summary["human_reviewed_percentage"] == 11.76


def test_oracle_accepts_expected_outputs():
    _check(_expected())


def test_oracle_accepts_expected_outputs_with_pinned_values():
    metadata, conversations = load_example()
    out = _expected()
    check_version(
        out.json_bytes,
        out.jsonl_bytes,
        out.manifest_bytes,
        **metadata,
        conversations=conversations,
        last_updated=LAST_UPDATED,
        created_date="2025-12-01",
        request_ids=[],
    )


def test_oracle_accepts_unscored_conversations():
    _, conversations = load_example()
    unscored = [dataclasses.replace(c, quality_score=None) for c in conversations]

    def edit(doc):
        summary = doc["training_file_metadata"]["quality_summary"]
        for key in ("avg_quality_score", "min_quality_score", "max_quality_score"):
            summary[key] = None
        for block in doc["conversations"]:
            block["conversation_metadata"]["quality_score"] = None
            block["conversation_metadata"]["quality_tier"] = "unscored"

    _check(_edit_json(_expected(), edit), unscored)
    with pytest.raises(AssertionError, match="avg_quality_score"):
        _check(_expected(), unscored)


def test_oracle_ignores_null_scores_and_keys():
    _, conversations = load_example()
    conversations[1] = dataclasses.replace(conversations[1], quality_score=None, persona_key=None)

    def edit(doc):
        meta = doc["training_file_metadata"]
        scores = [3.9, 3.92]
        meta["quality_summary"]["avg_quality_score"] = sum(scores) / 2
        meta["quality_summary"]["min_quality_score"] = 3.9
        meta["quality_summary"]["max_quality_score"] = 3.92
        meta["scaffolding_distribution"]["personas"] = {
            "anxious_planner": 1,
            "pragmatic_optimist": 1,
        }
        cm = doc["conversations"][1]["conversation_metadata"]
        cm["quality_score"] = None
        cm["quality_tier"] = "unscored"
        cm["scaffolding"]["persona_key"] = None

    _check(_edit_json(_expected(), edit), conversations)


def test_oracle_accepts_a_second_version():
    _, conversations = load_example()
    conversations[2] = dataclasses.replace(conversations[2], added_in_version=2)
    file_id = load_example()[0]["training_file_id"]

    def edit_json(doc):
        doc["training_file_metadata"]["file_version"] = 2
        doc["conversations"][2]["conversation_metadata"]["added_in_version"] = 2

    def edit_manifest(manifest):
        manifest["version"] = 2
        manifest["dagster_run_id"] = "0f6c0b2e-4a57-4bd5-9a52-2f3f1d5a8c11"
        manifest["request_ids"] = ["req-1", "req-2"]
        for name in ("training.json", "training.jsonl"):
            manifest["files"][name]["key"] = f"{file_id}/v2/{name}"
        manifest["conversations"][2]["added_in_version"] = 2

    out = _edit_manifest(_edit_json(_expected(), edit_json), edit_manifest)
    _check(out, conversations, file_version=2)
    with pytest.raises(AssertionError, match="request_ids"):
        metadata, _ = load_example()
        metadata["file_version"] = 2
        check_version(
            out.json_bytes,
            out.jsonl_bytes,
            out.manifest_bytes,
            **metadata,
            conversations=conversations,
            request_ids=["req-1"],
        )


def _with_extra_pair_field(conversations: list[SourceConversation]) -> list[SourceConversation]:
    source = json.loads(conversations[0].source_bytes)
    source["training_pairs"][0]["x_review_trail"] = {"by": "Zoë", "notes": ["ok"]}
    changed = list(conversations)
    changed[0] = dataclasses.replace(conversations[0], source_bytes=_dump_json(source))
    return changed


def test_oracle_requires_unknown_pair_fields_to_be_kept():
    _, conversations = load_example()
    changed = _with_extra_pair_field(conversations)
    new_sha = hashlib.sha256(changed[0].source_bytes).hexdigest()

    def edit_json(doc, keep: bool):
        doc["conversations"][0]["conversation_metadata"]["source_sha256"] = new_sha
        if keep:
            doc["conversations"][0]["training_pairs"][0]["x_review_trail"] = {
                "by": "Zoë",
                "notes": ["ok"],
            }

    def edit_manifest(manifest):
        manifest["conversations"][0]["source_sha256"] = new_sha

    kept = _edit_manifest(_edit_json(_expected(), lambda d: edit_json(d, True)), edit_manifest)
    _check(kept, changed)
    dropped = _edit_manifest(_edit_json(_expected(), lambda d: edit_json(d, False)), edit_manifest)
    with pytest.raises(AssertionError, match="x_review_trail"):
        _check(dropped, changed)


def test_oracle_rejects_conversations_listed_out_of_version_order():
    _, conversations = load_example()
    conversations[0] = dataclasses.replace(conversations[0], added_in_version=2)
    with pytest.raises(AssertionError, match="order they were added"):
        _check(_expected(), conversations, file_version=2)


# ------------------------------------------------------------------- mutations


def _json_ensure_ascii(out):
    doc = json.loads(out.json_bytes)
    data = json.dumps(doc, indent=2, ensure_ascii=True).encode("utf-8")
    return _rehash(dataclasses.replace(out, json_bytes=data))


def _json_replace(old: bytes, new: bytes):
    def mutate(out):
        assert old in out.json_bytes
        return _rehash(dataclasses.replace(out, json_bytes=out.json_bytes.replace(old, new, 1)))

    return mutate


def _json_trailing_newline(out):
    return _rehash(dataclasses.replace(out, json_bytes=out.json_bytes + b"\n"))


def _set_meta(key: str, value: Any):
    return lambda out: _edit_json(
        out, lambda doc: doc["training_file_metadata"].__setitem__(key, value)
    )


def _set_summary(key: str, compute: Callable[[Any], Any]):
    def edit(doc):
        summary = doc["training_file_metadata"]["quality_summary"]
        summary[key] = compute(summary[key])

    return lambda out: _edit_json(out, edit)


def _set_block_meta(index: int, key: str, value: Any):
    return lambda out: _edit_json(
        out,
        lambda doc: doc["conversations"][index]["conversation_metadata"].__setitem__(key, value),
    )


def _drop_extra_pair_field(out):
    def edit(doc):
        del doc["conversations"][0]["training_pairs"][0]["training_metadata"]["generation_model"]

    return _edit_json(out, edit)


def _change_pair_turn_type(out):
    def edit(doc):
        doc["conversations"][2]["training_pairs"][3]["turn_number"] = 4.0

    return _edit_json(out, edit)


def _swap_blocks(out):
    def edit(doc):
        blocks = doc["conversations"]
        blocks[0], blocks[1] = blocks[1], blocks[0]

    return _edit_json(out, edit)


def _reorder_block_meta(out):
    def edit(doc):
        cm = doc["conversations"][0]["conversation_metadata"]
        cm["batch_id"] = cm.pop("batch_id")

    return _edit_json(out, edit)


def _sorted_arcs(out):
    def edit(doc):
        dist = doc["training_file_metadata"]["scaffolding_distribution"]
        arcs = dist["emotional_arcs"]
        assert list(arcs) != sorted(arcs)
        dist["emotional_arcs"] = dict(sorted(arcs.items()))

    return _edit_json(out, edit)


def _distribution_from_pairs(out):
    def edit(doc):
        dist = doc["training_file_metadata"]["scaffolding_distribution"]
        dist["personas"] = {"anxious_planner": 11, "pragmatic_optimist": 6}

    return _edit_json(out, edit)


def _change_profile(out):
    return _edit_json(
        out, lambda doc: doc["consultant_profile"].__setitem__("years_experience", 16)
    )


def _wrong_persona_name(out):
    def edit(doc):
        doc["conversations"][0]["conversation_metadata"]["scaffolding"]["persona_name"] = (
            "anxious_planner"
        )

    return _edit_json(out, edit)


def _jsonl_no_last_newline(out):
    return _rehash(dataclasses.replace(out, jsonl_bytes=out.jsonl_bytes[:-1]))


def _jsonl_crlf(out):
    return _rehash(dataclasses.replace(out, jsonl_bytes=out.jsonl_bytes.replace(b"\n", b"\r\n")))


def _jsonl_blank_line(out):
    return _rehash(dataclasses.replace(out, jsonl_bytes=out.jsonl_bytes + b"\n"))


def _jsonl_header(out):
    header = _dump_line({"format_spec": "brightrun-lora-v4"})
    return _rehash(_with_lines(out, [header, *out.jsonl_bytes.splitlines()]))


def _jsonl_spaced_separators(out):
    raw = out.jsonl_bytes.splitlines()
    raw[3] = json.dumps(json.loads(raw[3]), ensure_ascii=False).encode("utf-8")
    return _rehash(_with_lines(out, raw))


def _jsonl_ascii_escaped(out):
    raw = out.jsonl_bytes.splitlines()
    raw[0] = json.dumps(json.loads(raw[0]), separators=(",", ":")).encode("utf-8")
    return _rehash(_with_lines(out, raw))


def _jsonl_label_id(out):
    def edit(obj):
        assert obj["id"] == "563cee60-853e-4362-9224-3bcceba4d29f_turn1"
        obj["id"] = "overwhelm_to_empowerment_turn1"

    return _edit_line(out, 0, edit)


def _jsonl_label_conversation_id(out):
    return _edit_line(
        out, 0, lambda obj: obj.__setitem__("conversation_id", "overwhelm_to_empowerment")
    )


def _jsonl_includes_untrainable_pair(out):
    doc = json.loads(out.json_bytes)
    block = doc["conversations"][1]
    pair = block["training_pairs"][0]
    assert pair["target_response"] is None
    cid = block["conversation_metadata"]["conversation_id"]
    obj = {"id": f"{cid}_turn{pair['turn_number']}", "conversation_id": cid}
    for key in list(pair)[2:]:
        obj[key] = pair[key]
    raw = out.jsonl_bytes.splitlines()
    raw.insert(5, _dump_line(obj))
    return _rehash(_with_lines(out, raw))


def _jsonl_swapped_lines(out):
    raw = out.jsonl_bytes.splitlines()
    raw[0], raw[1] = raw[1], raw[0]
    return _rehash(_with_lines(out, raw))


def _jsonl_duplicate_line(out):
    raw = out.jsonl_bytes.splitlines()
    raw[1] = raw[0]
    return _rehash(_with_lines(out, raw))


def _jsonl_extra_key(out):
    return _edit_line(out, 2, lambda obj: obj.__setitem__("quality_tier", "production"))


def _manifest_set(path: list[Any], value: Any):
    def edit(manifest):
        target = manifest
        for part in path[:-1]:
            target = target[part]
        target[path[-1]] = value

    return lambda out: _edit_manifest(out, edit)


def _manifest_delete(key: str):
    return lambda out: _edit_manifest(out, lambda manifest: manifest.pop(key))


def _manifest_swap_conversations(out):
    def edit(manifest):
        entries = manifest["conversations"]
        entries[1], entries[2] = entries[2], entries[1]

    return _edit_manifest(out, edit)


MUTATIONS = [
    # training.json bytes
    ("json-ensure-ascii", _json_ensure_ascii, "training.json: bytes are not"),
    ("json-trailing-space", _json_replace(b"{\n", b"{ \n"), "training.json: bytes are not"),
    (
        "json-3-space-indent",
        _json_replace(b'\n  "training_file_metadata"', b'\n   "training_file_metadata"'),
        "training.json: bytes are not",
    ),
    (
        "json-4-space-indent",
        lambda out: _rehash(
            dataclasses.replace(
                out,
                json_bytes=json.dumps(
                    json.loads(out.json_bytes), indent=4, ensure_ascii=False
                ).encode("utf-8"),
            )
        ),
        "training.json: bytes are not",
    ),
    ("json-trailing-newline", _json_trailing_newline, "training.json: bytes are not"),
    # training_file_metadata
    ("wrong-trainable-pairs", _set_meta("trainable_pairs", 17), "trainable_pairs"),
    ("wrong-total-pairs", _set_meta("total_training_pairs", 16), "total_training_pairs"),
    ("wrong-total-conversations", _set_meta("total_conversations", 2), "total_conversations"),
    ("wrong-format-version", _set_meta("version", "4.0"), r"\.version"),
    ("wrong-file-version", _set_meta("file_version", 2), "file_version"),
    ("wrong-description", _set_meta("description", None), "description"),
    ("created-date-is-datetime", _set_meta("created_date", LAST_UPDATED), "created_date"),
    ("last-updated-without-tz", _set_meta("last_updated", "2025-12-01T09:30:00"), "last_updated"),
    ("wrong-vertical", _set_meta("vertical", "financial_planning"), "vertical"),
    (
        "avg-from-rounded",
        _set_summary("avg_quality_score", lambda v: round(v, 1)),
        "avg_quality_score",
    ),
    ("avg-as-string", _set_summary("avg_quality_score", str), "avg_quality_score"),
    ("min-wrong", _set_summary("min_quality_score", lambda v: 3.92), "min_quality_score"),
    (
        "reviewed-count-wrong",
        _set_summary("human_reviewed_count", lambda v: v + 1),
        "human_reviewed_count",
    ),
    (
        "reviewed-pct-of-trainable",
        _set_summary("human_reviewed_percentage", lambda v: 12.5),
        "human_reviewed_percentage",
    ),
    ("arcs-sorted", _sorted_arcs, r"emotional_arcs: key order differs"),
    ("personas-counted-per-pair", _distribution_from_pairs, "personas"),
    ("profile-changed", _change_profile, "consultant_profile"),
    # conversation blocks
    ("blocks-swapped", _swap_blocks, "order differ"),
    ("block-meta-key-order", _reorder_block_meta, "key order differs"),
    ("wrong-tier", _set_block_meta(0, "quality_tier", "seed_dataset"), "quality_tier"),
    ("wrong-block-score", _set_block_meta(1, "quality_score", 4.0), "quality_score"),
    ("missing-batch-id", _set_block_meta(2, "batch_id", None), "batch_id"),
    ("wrong-source-sha", _set_block_meta(0, "source_sha256", "0" * 64), "source_sha256"),
    (
        "created-date-reformatted",
        _set_block_meta(0, "created_date", "2025-11-01T00:00:35+00:00"),
        "created_date",
    ),
    ("wrong-total-turns", _set_block_meta(1, "total_turns", 5), "total_turns"),
    ("wrong-added-in-version", _set_block_meta(0, "added_in_version", 2), "added_in_version"),
    ("persona-name-is-key", _wrong_persona_name, "persona_name"),
    ("pair-extra-field-dropped", _drop_extra_pair_field, "generation_model"),
    ("pair-turn-number-type", _change_pair_turn_type, "turn_number"),
    # training.jsonl
    ("jsonl-no-last-newline", _jsonl_no_last_newline, "does not end"),
    ("jsonl-crlf", _jsonl_crlf, r"\\r"),
    ("jsonl-blank-line", _jsonl_blank_line, "blank"),
    ("jsonl-header", _jsonl_header, "lines, expected"),
    ("jsonl-spaced-separators", _jsonl_spaced_separators, "compact"),
    ("jsonl-ascii-escaped", _jsonl_ascii_escaped, "compact"),
    ("jsonl-label-id", _jsonl_label_id, r"line 1\.id"),
    ("jsonl-label-conversation-id", _jsonl_label_conversation_id, "conversation_id"),
    ("jsonl-untrainable-pair", _jsonl_includes_untrainable_pair, "lines, expected"),
    ("jsonl-lines-swapped", _jsonl_swapped_lines, r"line 1\.id"),
    ("jsonl-duplicate-id", _jsonl_duplicate_line, "duplicate id"),
    ("jsonl-extra-key", _jsonl_extra_key, "unexpected"),
    # manifest.json
    (
        "manifest-json-hash-wrong",
        _manifest_set(["files", "training.json", "sha256"], "0" * 64),
        "sha256",
    ),
    (
        "manifest-jsonl-size-wrong",
        _manifest_set(["files", "training.jsonl", "size"], 161535),
        "size",
    ),
    (
        "manifest-key-wrong",
        _manifest_set(
            ["files", "training.json", "key"], "39492960-0ef4-5748-8da6-403ed14c1b18/training.json"
        ),
        r"\.key",
    ),
    ("manifest-version-wrong", _manifest_set(["version"], 2), r"manifest.json\.version"),
    ("manifest-name-wrong", _manifest_set(["file_name"], "example training file"), "file_name"),
    ("manifest-no-run-id", _manifest_delete("dagster_run_id"), "dagster_run_id"),
    ("manifest-run-id-number", _manifest_set(["dagster_run_id"], 7), "dagster_run_id"),
    ("manifest-request-ids-string", _manifest_set(["request_ids"], "abc"), "request_ids"),
    ("manifest-created-at-no-tz", _manifest_set(["created_at"], "2025-12-01"), "created_at"),
    ("manifest-conversations-swapped", _manifest_swap_conversations, "order differ"),
    (
        "manifest-pair-count-trainable",
        _manifest_set(["conversations", 1, "pair_count"], 5),
        "pair_count",
    ),
    (
        "manifest-source-sha-wrong",
        _manifest_set(["conversations", 2, "source_sha256"], "f" * 64),
        "source_sha256",
    ),
    (
        "manifest-batch-id-wrong",
        _manifest_set(["conversations", 2, "batch_id"], "dc207dcc-8e0b-4f4a-af9c-f861ec9cb658"),
        "batch_id",
    ),
    (
        "manifest-added-in-version-missing",
        lambda out: _edit_manifest(out, lambda m: m["conversations"][0].pop("added_in_version")),
        "added_in_version",
    ),
    (
        "manifest-not-json",
        lambda out: dataclasses.replace(out, manifest_bytes=b"{"),
        "not valid JSON",
    ),
]


@pytest.mark.parametrize(
    ("mutate", "message"),
    [pytest.param(m, msg, id=name) for name, m, msg in MUTATIONS],
)
def test_oracle_rejects_mutation(mutate, message):
    original = _expected()
    mutated = mutate(copy.deepcopy(original))
    assert mutated != original
    with pytest.raises(AssertionError, match=message):
        _check(mutated)


def test_mutation_ids_are_unique():
    names = [name for name, _, _ in MUTATIONS]
    assert len(names) == len(set(names))
