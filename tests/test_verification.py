"""The checks a built version passes before publication, and what each catches when an object
is tampered with between build and verification."""

from __future__ import annotations

import re
from collections.abc import Callable

import orjson
import pytest
from seed import claimed_request, create_file, demo_dataset, eligible, seed_dataset
from test_builder import replace_object

from brightrun_pipeline.builder import BuiltVersion
from brightrun_pipeline.outputs import BY_NAME, EXPORTS
from brightrun_pipeline.service import Pipeline
from brightrun_pipeline.storage import LocalObjectStore
from brightrun_pipeline.verification import verify_built_version

# The exports are derived from the JSONL: a JSONL changed after the build breaks them too.
EXPORT_CHECKS = {export.check_name for export in EXPORTS}
CHECKS = {"matches_v4_format", "unique_conversations", "header_matches_membership",
          "manifest_matches_objects", "line_count_matches", "lines_equal_pairs",
          "unique_ids", "split_is_leak_free"} | EXPORT_CHECKS


@pytest.fixture(params=[1, 2], ids=["first-version", "added-version"])
def built(request: pytest.FixtureRequest, pipeline: Pipeline) -> BuiltVersion:
    """A built, unpublished version: the first of a file, or one added to a published file."""
    dataset = demo_dataset()
    seed_dataset(pipeline, dataset)
    rows = eligible(dataset)
    if request.param == 1:
        request_id = claimed_request(pipeline, rows[:3], new_file_name="Verified")
    else:
        tid = create_file(pipeline, rows[:3]).training_file_id
        request_id = claimed_request(pipeline, rows[3:6], training_file=tid)
    built = pipeline.build(pipeline.start(request_id, "run-verify"))
    assert built.spec.version == request.param
    return built


def failed_checks(pipeline: Pipeline, built: BuiltVersion) -> set[str]:
    report = verify_built_version(pipeline, built)
    assert set(report) == CHECKS
    return {name for name, outcome in report.items() if not outcome.passed}


def test_a_good_build_passes_every_check(pipeline: Pipeline, built: BuiltVersion) -> None:
    report = verify_built_version(pipeline, built)
    assert {name: (o.passed, o.detail) for name, o in report.items()} \
        == {name: (True, "ok") for name in CHECKS} | {
            "split_is_leak_free": (True, "no validation share configured: nothing is split")}


def _lines(data: bytes) -> list[bytes]:
    return data.splitlines(keepends=True)


def _change_line(data: bytes) -> bytes:
    lines = _lines(data)
    line = orjson.loads(lines[1])
    line["target_response"] += " (edited)"
    lines[1] = orjson.dumps(line) + b"\n"
    return b"".join(lines)


def _remove_line(data: bytes) -> bytes:
    lines = _lines(data)
    del lines[1]
    return b"".join(lines)


def _repeat_line(data: bytes) -> bytes:
    lines = _lines(data)
    return b"".join(lines + lines[-1:])


def _set_id(data: bytes, index: int, new_id: str) -> bytes:
    lines = _lines(data)
    line = orjson.loads(lines[index])
    line["id"] = new_id
    lines[index] = orjson.dumps(line) + b"\n"
    return b"".join(lines)


def _repeat_first_id(data: bytes) -> bytes:
    return _set_id(data, 1, orjson.loads(_lines(data)[0])["id"])


def _last_repeats_first_id(data: bytes) -> bytes:
    return _set_id(data, -1, orjson.loads(_lines(data)[0])["id"])


def _swap_lines(data: bytes) -> bytes:
    lines = _lines(data)
    lines[0], lines[1] = lines[1], lines[0]
    return b"".join(lines)


def _same_length_digit_change(data: bytes, field: str) -> bytes:
    match = re.search(rb'"' + field.encode() + rb'": (\d+)', data)
    assert match is not None
    digits = match.group(1)
    changed = digits[:-1] + str((int(digits[-1:]) + 1) % 10).encode()
    return data[:match.start(1)] + changed + data[match.end(1):]


def _change_total(data: bytes) -> bytes:
    return _same_length_digit_change(data, "total_training_pairs")


def _change_pair_in_json(data: bytes) -> bytes:
    marker = b'"target_response": "'
    start = data.index(marker, data.index(b'"conversations": [')) + len(marker)
    return data[:start] + b"X" + data[start + 1:]


def _invalid_tier(data: bytes) -> bytes:
    match = re.search(rb'"quality_tier": "([a-z_]+)"', data)
    assert match is not None
    return data[:match.start(1)] + b"z" * len(match.group(1)) + data[match.end(1):]


def _append_newline(data: bytes) -> bytes:
    return data + b"\n"


def _change_manifest_hash(data: bytes) -> bytes:
    manifest = orjson.loads(data)
    manifest["files"]["training.json"]["sha256"] = "0" * 64
    return orjson.dumps(manifest, option=orjson.OPT_INDENT_2)


def _drop_manifest_conversation(data: bytes) -> bytes:
    manifest = orjson.loads(data)
    manifest["conversations"].pop()
    return orjson.dumps(manifest, option=orjson.OPT_INDENT_2)


def _manifest_not_json(data: bytes) -> bytes:
    return data[: len(data) // 2]


TAMPERS: dict[str, tuple[str, Callable[[bytes], bytes], set[str]]] = {
    "jsonl-line-changed": ("training.jsonl", _change_line, {"lines_equal_pairs"}),
    "jsonl-line-removed": ("training.jsonl", _remove_line,
                           {"lines_equal_pairs", "line_count_matches"}),
    "jsonl-line-repeated": ("training.jsonl", _repeat_line,
                            {"line_count_matches", "unique_ids"}),
    "jsonl-id-repeated": ("training.jsonl", _repeat_first_id,
                          {"lines_equal_pairs", "unique_ids"}),
    "jsonl-last-id-repeats-first": ("training.jsonl", _last_repeats_first_id,
                                    {"lines_equal_pairs", "unique_ids"}),
    "jsonl-lines-swapped": ("training.jsonl", _swap_lines, {"lines_equal_pairs"}),
    "header-total-changed": ("training.json", _change_total, {"header_matches_membership"}),
    "json-pair-changed": ("training.json", _change_pair_in_json, {"lines_equal_pairs"}),
    "json-block-tier-invalid": ("training.json", _invalid_tier, {"matches_v4_format"}),
    "json-bytes-appended": ("training.json", _append_newline, {"matches_v4_format"}),
    "manifest-hash-changed": ("manifest.json", _change_manifest_hash, set()),
    "manifest-conversation-dropped": ("manifest.json", _drop_manifest_conversation, set()),
    "manifest-truncated": ("manifest.json", _manifest_not_json, set()),
}


# The checks read objects; the database only gives the membership, which the good build above
# covers on both backends.
@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
@pytest.mark.parametrize("case", list(TAMPERS))
def test_each_check_catches_its_tampering(pipeline: Pipeline, built: BuiltVersion,
                                          case: str) -> None:
    name, tamper, caught = TAMPERS[case]
    key = f"{built.spec.training_file_id}/v{built.spec.version}/{name}"
    store = pipeline.store
    assert isinstance(store, LocalObjectStore)
    original = store.get_bytes(pipeline.training_bucket, key)
    tampered = tamper(original)
    assert tampered != original
    replace_object(store, pipeline.training_bucket, key, tampered)

    # Any change to an object also breaks the manifest's record of it. The exports are checked
    # against the JSONL lines they came from (tests below): a changed JSONL may break them too.
    failed = failed_checks(pipeline, built)
    if name == "training.jsonl":
        failed -= EXPORT_CHECKS
    assert failed == caught | {"manifest_matches_objects"}


def _edit_rows(edit: Callable[[list[dict]], None]) -> Callable[[bytes], bytes]:
    def tamper(data: bytes) -> bytes:
        rows = [orjson.loads(line) for line in _lines(data)]
        edit(rows)
        return b"".join(orjson.dumps(row) + b"\n" for row in rows)
    return tamper


def _train_history(rows: list[dict]) -> None:
    row = next(r for r in reversed(rows) if any("weight" in m for m in r["messages"][:-1]))
    next(m for m in row["messages"][:-1] if "weight" in m)["weight"] = 1


def _target_changed(rows: list[dict]) -> None:
    rows[-1]["completion"][0]["content"] += " (edited)"


def _roles_swapped(rows: list[dict]) -> None:
    rows[-1]["prompt"][-1]["role"] = "assistant"


EXPORT_TAMPERS: dict[str, tuple[str, Callable[[bytes], bytes], str]] = {
    "chat-history-trained": ("training.chat.jsonl", _edit_rows(_train_history),
                             "earlier assistant message is trained"),
    "chat-row-removed": ("training.chat.jsonl", _remove_line, "fewer rows than JSONL lines"),
    "chat-row-repeated": ("training.chat.jsonl", _repeat_line, "more rows than JSONL lines"),
    "prompt-completion-target-changed": ("training.prompt_completion.jsonl",
                                         _edit_rows(_target_changed), "not the pair's target"),
    "prompt-completion-roles": ("training.prompt_completion.jsonl", _edit_rows(_roles_swapped),
                                "where 'user' was due"),
}


@pytest.mark.parametrize("case", list(EXPORT_TAMPERS))
def test_each_export_check_catches_its_tampering(pipeline: Pipeline, built: BuiltVersion,
                                                 case: str) -> None:
    name, tamper, reason = EXPORT_TAMPERS[case]
    key = built.exports[name].key
    store = pipeline.store
    assert isinstance(store, LocalObjectStore)
    original = store.get_bytes(pipeline.training_bucket, key)
    tampered = tamper(original)
    assert tampered != original
    replace_object(store, pipeline.training_bucket, key, tampered)

    report = verify_built_version(pipeline, built)

    check = BY_NAME[name].export.check_name
    assert {n for n, o in report.items() if not o.passed} == {check}
    assert reason in report[check].detail


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_unique_ids_reads_the_ids_of_the_lines(pipeline: Pipeline, built: BuiltVersion) -> None:
    key = built.jsonl.key
    store = pipeline.store
    assert isinstance(store, LocalObjectStore)
    original = store.get_bytes(pipeline.training_bucket, key)
    lines = _lines(original)
    first, last = orjson.loads(lines[0]), orjson.loads(lines[-1])
    # The JSON is untouched: only the last line's id repeats the first line's.
    replace_object(store, pipeline.training_bucket, key,
                   _set_id(original, -1, first["id"]))

    report = verify_built_version(pipeline, built)

    assert not report["unique_ids"].passed
    assert f"id {first['id']} appears twice" in report["unique_ids"].detail
    if built.spec.version == 2:
        # The first line was copied from version 1; the appended last line repeats its id.
        assert "copied from the previous version" in report["unique_ids"].detail
    # An id that names an earlier conversation without repeating any line's id is unique.
    replace_object(store, pipeline.training_bucket, key,
                   _set_id(original, -1, f"{first['conversation_id']}_turn999"))
    report = verify_built_version(pipeline, built)
    assert report["unique_ids"].passed, report["unique_ids"].detail
    assert not report["lines_equal_pairs"].passed
    assert last["id"] != first["id"]
