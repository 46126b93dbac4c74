"""The selection rules of contract §4 and the quality tiers of §6, without a database."""

from __future__ import annotations

import uuid

import pytest

from brightrun_pipeline.errors import RequestRejected
from brightrun_pipeline.rules import (
    ConversationFacts,
    check_selection,
    name_key,
    normalize_file_name,
    quality_tier,
)

LABEL = "training file 'Q4 coaching'"


def ids(count: int) -> list[str]:
    """`count` distinct conversation IDs."""
    return [str(uuid.UUID(int=n + 1)) for n in range(count)]


def ready(*conversation_ids: str) -> dict[str, ConversationFacts]:
    """Facts of conversations that are enriched and have a file."""
    return {cid: ConversationFacts(cid, "completed", f"user/{cid}/enriched.json")
            for cid in conversation_ids}


def rejection(raw_ids: list[object], facts: dict[str, ConversationFacts],
              members: dict[str, int] | None = None) -> RequestRejected:
    with pytest.raises(RequestRejected) as raised:
        check_selection(raw_ids, facts, members or {}, file_label=LABEL)
    return raised.value


def test_valid_selection_comes_back_normalized_in_request_order() -> None:
    first, second, third = ids(3)
    raw = [f"  {third.upper()} ", first, "{" + second + "}"]

    selected = check_selection(raw, ready(first, second, third), {}, file_label=LABEL)

    assert selected == [third, first, second]


@pytest.mark.parametrize("count", [1, 80])
def test_sizes_within_the_limit_are_accepted(count: int) -> None:
    chosen = ids(count)
    assert check_selection(chosen, ready(*chosen), {}, file_label=LABEL) == chosen


@pytest.mark.parametrize(("count", "message"), [
    (0, "at least one conversation"),
    (81, "at most 80 conversations; this one holds 81"),
])
def test_sizes_outside_the_limit_reject_the_whole_request(count: int, message: str) -> None:
    chosen = ids(count)
    rejected = rejection(list(chosen), ready(*chosen))
    assert message in rejected.message
    assert rejected.conversations == {}


@pytest.mark.parametrize(("facts", "reason"), [
    (ConversationFacts("x", "enrichment_in_progress", "u/x/enriched.json"),
     "enrichment_status is 'enrichment_in_progress', not 'completed'"),
    (ConversationFacts("x", "failed", "u/x/enriched.json"),
     "enrichment_status is 'failed', not 'completed'"),
    (ConversationFacts("x", "not_started", None),
     "enrichment_status is 'not_started', not 'completed'; enriched_file_path is null"),
    (ConversationFacts("x", "completed", None), "enriched_file_path is null"),
    (ConversationFacts("x", "completed", ""), "enriched_file_path is null"),
    (None, "unknown conversation ID"),
], ids=["in-progress", "failed", "not-started-without-file", "null-path", "empty-path", "unknown"])
def test_each_ineligible_conversation_gets_its_reason(facts: ConversationFacts | None,
                                                     reason: str) -> None:
    good, bad = ids(2)
    known = ready(good)
    if facts is not None:
        known[bad] = ConversationFacts(bad, facts.enrichment_status, facts.enriched_file_path)

    rejected = rejection([good, bad], known)

    assert rejected.conversations == {bad: reason}
    assert rejected.message \
        == "1 of 2 conversations cannot be added to training file 'Q4 coaching'"


@pytest.mark.parametrize("raw", ["not-a-uuid", "", "1234", 42, None, ["nested"]])
def test_values_that_are_not_uuids_are_named_as_given(raw: object) -> None:
    (good,) = ids(1)
    rejected = rejection([good, raw], ready(good))
    assert rejected.conversations == {str(raw): "not a conversation ID (expected a UUID)"}


def test_an_id_repeated_in_the_request_is_rejected_in_any_spelling() -> None:
    first, second = ids(2)
    rejected = rejection([first, second, first.upper()], ready(first, second))
    assert rejected.conversations == {first: "repeated in the request (2 times)"}


def test_a_conversation_already_in_the_file_is_rejected_with_its_version() -> None:
    old, new = ids(2)
    rejected = rejection([new, old], ready(old, new), members={old: 3})
    assert rejected.conversations == {old: "already in training file 'Q4 coaching' "
                                           "(added in version 3)"}


def test_every_problem_of_a_conversation_is_listed() -> None:
    (cid,) = ids(1)
    facts = {cid: ConversationFacts(cid, "failed", None)}
    rejected = rejection([cid, cid], facts, members={cid: 1})
    assert rejected.conversations == {cid: (
        "repeated in the request (2 times); enrichment_status is 'failed', not 'completed'; "
        "enriched_file_path is null; already in training file 'Q4 coaching' (added in version 1)")}


def test_rejection_lists_every_offender_and_no_valid_conversation() -> None:
    good, unknown, pending, member = ids(4)
    facts = ready(good, member)
    facts[pending] = ConversationFacts(pending, "enrichment_in_progress", None)

    rejected = rejection([good, unknown, pending, member, "junk"], facts, members={member: 2})

    assert set(rejected.conversations) == {unknown, pending, member, "junk"}
    assert rejected.message.startswith("4 of 5 conversations")
    assert rejected.as_error() == {"message": rejected.message,
                                   "conversations": rejected.conversations}


@pytest.mark.parametrize(("raw", "name"), [
    ("Q4 coaching", "Q4 coaching"),
    ("  padded name\t", "padded name"),
    ("x" * 120, "x" * 120),
    ("  " + "y" * 120 + "  ", "y" * 120),
    ("Été 2025 — café ✓ 日本", "Été 2025 — café ✓ 日本"),
    ("a", "a"),
])
def test_valid_file_names_are_trimmed(raw: str, name: str) -> None:
    assert normalize_file_name(raw) == name


@pytest.mark.parametrize(("raw", "message"), [
    ("", "is empty"),
    ("   ", "is empty"),
    ("\t\n ", "is empty"),
    ("z" * 121, "has 121 characters; at most 120 are allowed"),
    ("bad\x00name", "non-printable"),
    ("tab\tinside", "non-printable"),
    ("two\nlines", "non-printable"),
    ("delete\x7f", "non-printable"),
    ("c1\x85control", "non-printable"),
    ("bidi\u202eoverride", "non-printable"),
    (None, "must be text"),
    (17, "must be text"),
    (b"bytes", "must be text"),
    (["list"], "must be text"),
])
def test_invalid_file_names_are_rejected(raw: object, message: str) -> None:
    with pytest.raises(RequestRejected) as raised:
        normalize_file_name(raw)
    assert message in raised.value.message


@pytest.mark.parametrize(("score", "tier"), [
    (5.0, "seed_dataset"),
    (4.5, "seed_dataset"),
    (4.49, "production"),
    (4.499999, "production"),
    (3.5, "production"),
    (3.49, "experimental"),
    (2.5, "experimental"),
    (2.4999, "rejected"),
    (0.0, "rejected"),
    (4, "production"),
    (None, "unscored"),
])
def test_quality_tier_boundaries(score: float | None, tier: str) -> None:
    assert quality_tier(score) == tier


@pytest.mark.parametrize(("first", "second"), [
    ("Q4 Coaching", "q4 coaching"),
    ("Q4 COACHING", "q4 coaching"),
    ("  Q4 coaching ", "Q4 Coaching"),
    ("STRASSE", "straße"),
    ("ÉTÉ", "été"),
])
def test_name_key_ignores_case_and_surrounding_space(first: str, second: str) -> None:
    assert name_key(first) == name_key(second)


@pytest.mark.parametrize(("first", "second"), [
    ("Q4 coaching", "Q4  coaching"),
    ("Q4 coaching", "Q5 coaching"),
    ("ete", "été"),
])
def test_name_key_keeps_names_that_differ_apart(first: str, second: str) -> None:
    assert name_key(first) != name_key(second)
