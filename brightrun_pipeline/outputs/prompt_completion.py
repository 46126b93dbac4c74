"""`training.prompt_completion.jsonl`: TRL's conversational prompt/completion form.

Each row is `{"prompt": [system, history…, user], "completion": [{"role": "assistant", …}]}`;
trainers that read this form compute the loss on the completion only.
"""

from __future__ import annotations

from typing import Any

from brightrun_pipeline.outputs.base import LineExport, context_messages, message_problems


def derive(pair: dict[str, Any]) -> dict[str, Any]:
    """The prompt and completion of one pair."""
    return {"prompt": context_messages(pair),
            "completion": [{"role": "assistant", "content": pair.get("target_response")}]}


def problems(row: Any, pair: dict[str, Any]) -> list[str]:
    """What is wrong with a prompt/completion row, given the pair it comes from."""
    if not isinstance(row, dict):
        return ["the row is not an object"]
    found = [f"unknown key {key!r}" for key in row if key not in ("prompt", "completion")]
    prompt, completion = row.get("prompt"), row.get("completion")
    found += message_problems(prompt, "prompt")
    if not found and prompt[-1].get("role") != "user":
        found.append("the prompt does not end with the user's message")
    if not (isinstance(completion, list) and len(completion) == 1
            and isinstance(completion[0], dict)):
        return [*found, "the completion is not exactly one message"]
    message = completion[0]
    if set(message) != {"role", "content"} or message.get("role") != "assistant":
        found.append("the completion is not one assistant message")
    if message.get("content") != pair.get("target_response") or not message.get("content"):
        found.append("the completion is not the pair's target response")
    if not found and row != derive(pair):
        found.append("the row is not the one its pair gives")
    return found


EXPORT = LineExport(
    name="training.prompt_completion.jsonl", format="prompt-completion",
    title="Prompt/completion (TRL, loss on the completion)",
    check_name="prompt_completion_export_valid",
    check_description="Every row's prompt passes the OpenAI format checks and alternates roles; "
                      "its completion is exactly its pair's target.",
    derive=derive, problems=problems)
