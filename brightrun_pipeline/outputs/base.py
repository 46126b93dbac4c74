"""What an output of a version declares: its object's name and how it is served, how it is
written from the version's conversations, how it is carried over from the previous version on an
append, and the blocking checks it is held to. Also what an export derived from the JSONL line by
line declares (a `LineExport`)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import orjson

if TYPE_CHECKING:
    from brightrun_pipeline.builder import BuildSpec, PreviousVersion, VersionBuild
    from brightrun_pipeline.streams import HashingWriter
    from brightrun_pipeline.verification import CheckContext


@dataclass(frozen=True)
class CheckOutcome:
    """Whether one check passed, and why not."""

    passed: bool
    detail: str


@dataclass(frozen=True)
class Check:
    """A blocking check of a version's objects, shown on one of the two Dagster assets
    ("json" or "jsonl"). `run` sees the built version through a CheckContext; a check declared by
    several outputs (by the same object) runs once."""

    name: str
    description: str
    asset: str
    run: Callable[[CheckContext], CheckOutcome]


class Output:
    """One object of a version.

    `write` produces the whole object from the version's conversations (reusing the previous
    version's bytes of conversations that did not change, where it can); `carry` produces it on an
    append, when only conversations were added: the previous version's object, checked against
    its recorded hash, followed by what the new conversations add. The builder calls `carry` when
    the version only appends and `can_carry` says the previous version has what it needs,
    otherwise `write`. An output is written once the objects named by `inputs` are finished (in
    the build's work directory, `build.path(name)`); outputs with no inputs are derived from the
    conversations themselves.
    """

    name: str
    format: str
    title: str
    media_type: str
    checks: tuple[Check, ...] = ()
    # The train/validation side an object holds (split parts of an export), else None.
    split: str | None = None
    # The export it is (or is a part of), for exports derived from the JSONL.
    export: LineExport | None = None

    def present(self, spec: BuildSpec) -> bool:
        """Whether a version built from `spec` has this object."""
        return True

    def inputs(self, present: tuple[str, ...]) -> tuple[str, ...]:
        """The objects (among those the version has) this one is derived from."""
        return ()

    def write(self, build: VersionBuild, out: HashingWriter) -> None:
        """Write the whole object."""
        raise NotImplementedError

    def can_carry(self, previous: PreviousVersion) -> bool:
        """Whether an append can start from the previous version's object."""
        return False

    def carry(self, build: VersionBuild, out: HashingWriter) -> None:
        """Write the object of an append: the previous version's, then the additions'."""
        raise NotImplementedError


# The roles a pair's history may use, and the chat role each becomes.
HISTORY_ROLES = {"user": "user", "client": "user", "assistant": "assistant",
                 "consultant": "assistant"}
MESSAGE_KEYS = frozenset({"role", "content", "weight"})
ROLES = frozenset({"system", "user", "assistant"})


@dataclass(frozen=True)
class LineExport:
    """An export with one row per JSONL line (per trainable pair), in the JSONL's order.

    `derive` turns a parsed JSONL line into the row; `problems` lists what is wrong with a row
    given the line it must come from (an empty list: the row is sound). The blocking check
    `check_name` runs `problems` on every row and compares the row count with the JSONL's.
    Rows carried over from the previous version are copied byte for byte.
    """

    name: str
    format: str
    title: str
    check_name: str
    check_description: str
    derive: Callable[[dict[str, Any]], dict[str, Any]]
    problems: Callable[[Any, dict[str, Any]], list[str]]

    def row(self, pair: dict[str, Any]) -> bytes:
        """The export's row for one parsed JSONL line, as a JSONL line."""
        return orjson.dumps(self.derive(pair)) + b"\n"


def context_messages(pair: dict[str, Any]) -> list[dict[str, Any]]:
    """The messages before the target: system prompt (when there is one), the history as user and
    assistant turns, and the current user input."""
    messages: list[dict[str, Any]] = []
    system = pair.get("system_prompt")
    if isinstance(system, str) and system:
        messages.append({"role": "system", "content": system})
    for turn in pair.get("conversation_history") or []:
        role = turn.get("role") if isinstance(turn, dict) else None
        content = turn.get("content") if isinstance(turn, dict) else None
        messages.append({"role": HISTORY_ROLES.get(role, role), "content": content})
    messages.append({"role": "user", "content": pair.get("current_user_input")})
    return messages


def message_problems(messages: Any, where: str) -> list[str]:
    """The OpenAI cookbook's checks of a message list, plus strict user/assistant alternation
    after an optional leading system message."""
    if not isinstance(messages, list) or not messages:
        return [f"{where} is not a non-empty list of messages"]
    problems = []
    expected = "user"
    for index, message in enumerate(messages):
        label = f"{where}[{index}]"
        if not isinstance(message, dict):
            problems.append(f"{label} is not an object")
            continue
        unknown = set(message) - MESSAGE_KEYS
        if unknown:
            problems.append(f"{label} has unknown keys {sorted(unknown)}")
        role = message.get("role")
        if role not in ROLES:
            problems.append(f"{label} has unknown role {role!r}")
        content = message.get("content")
        if not isinstance(content, str) or not content:
            problems.append(f"{label} has no text content")
        if "weight" in message and (role != "assistant" or message["weight"] not in (0, 1)):
            problems.append(f"{label} has a weight, which only assistant messages carry (0 or 1)")
        if role == "system":
            if index != 0:
                problems.append(f"{label} is a system message after the first message")
            continue
        if role != expected:
            problems.append(f"{label} is {role!r} where {expected!r} was due")
        expected = "assistant" if role == "user" else "user"
    return problems
