"""`training.chat.jsonl`: one chat per trainable pair, only its target trained.

Each row is `{"messages": [system, history…, user, assistant]}`. Every assistant message of the
history carries `"weight": 0` and the last one (the pair's target) `"weight": 1`: the masking
contract OpenAI fine-tuning reads, so that only the target is learned. Provenance (conversation,
turn, version) is in the manifest, not in the messages.
"""

from __future__ import annotations

from typing import Any

from brightrun_pipeline.outputs.base import LineExport, context_messages, message_problems


def derive(pair: dict[str, Any]) -> dict[str, Any]:
    """The chat of one pair."""
    messages = context_messages(pair)
    for message in messages:
        if message["role"] == "assistant":
            message["weight"] = 0
    messages.append({"role": "assistant", "content": pair.get("target_response"), "weight": 1})
    return {"messages": messages}


def problems(row: Any, pair: dict[str, Any]) -> list[str]:
    """What is wrong with a chat row, given the pair it comes from."""
    if not isinstance(row, dict):
        return ["the row is not an object"]
    found = [f"unknown key {key!r}" for key in row if key != "messages"]
    messages = row.get("messages")
    found += message_problems(messages, "messages")
    if found:
        return found
    last = messages[-1]
    if last.get("role") != "assistant":
        found.append("the last message is not the assistant's")
    if last.get("content") != pair.get("target_response"):
        found.append("the last message is not the pair's target response")
    if last.get("weight", 1) != 1:
        found.append("the target is not trained (weight 0)")
    if any(m.get("weight", 1) != 0 for m in messages[:-1] if m.get("role") == "assistant"):
        found.append("an earlier assistant message is trained (missing weight 0)")
    if row != derive(pair):
        found.append("the row is not the one its pair gives")
    return found


EXPORT = LineExport(
    name="training.chat.jsonl", format="chat", title="Chat (messages, target-only weights)",
    check_name="chat_export_valid",
    check_description="Every chat row passes the OpenAI format checks, alternates roles and "
                      "ends with its pair's target, the only trained message.",
    derive=derive, problems=problems)
