"""The chat and prompt/completion exports as a trainer reads them.

A file of two versions (created, then added to, so the second version's exports are the first's
rows carried over plus new ones) is built from the demo dataset by the real pipeline. Each export
of the latest version is loaded with Hugging Face `datasets` the way a training script loads it,
and every row is rendered through a chat template by a tokenizer trained here on the export's own
text (nothing comes from the Hub; the network is closed during these tests). The tokens that
`apply_chat_template(..., return_assistant_tokens_mask=True)` marks as trained are exactly the
pair's target and its end-of-turn token; a history whose assistant turns were trained would show
in the mask (the negative controls). Rebuilding either version reproduces every object's bytes.

Needs the `trainer` extra (`pip install -e '.[trainer]'`; `make test` installs it). Without it
the module is skipped, except under CI, where it fails.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import socket
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import pytest
from seed import add_to_file, create_file, demo_dataset, eligible, seed_dataset

from brightrun_pipeline.outputs import EXPORTS, chat, prompt_completion
from brightrun_pipeline.outputs.base import LineExport
from brightrun_pipeline.reproduce import reproduce_version
from brightrun_pipeline.service import Pipeline

TRAINER_MODULES = ("datasets", "transformers", "tokenizers")
_missing = [name for name in TRAINER_MODULES if importlib.util.find_spec(name) is None]
if _missing and not os.environ.get("CI"):
    pytest.skip(f"the trainer extra is not installed ({', '.join(_missing)}): "
                "pip install -e '.[trainer]'", allow_module_level=True)

START, END = "<|im_start|>", "<|im_end|>"
# ChatML, as most chat models' templates write it. An assistant message is trained (inside the
# generation block, its end-of-turn token included, as real templates do) when its weight is 1
# or absent (OpenAI's rule) and it is at or after `trained_from`, the first message of the
# completion when a prompt/completion row is rendered whole (0: every message may be trained).
CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{{- '" + START + "' + message['role'] + '\\n' -}}"
    "{%- if message['role'] == 'assistant' and message.get('weight', 1) == 1"
    " and loop.index0 >= (trained_from or 0) -%}"
    "{% generation %}{{- message['content'] + '" + END + "' -}}{% endgeneration %}"
    "{%- else -%}"
    "{{- message['content'] + '" + END + "' -}}"
    "{%- endif -%}"
    "{{- '\\n' -}}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '" + START + "assistant\\n' -}}{%- endif -%}"
)
COLUMNS = {chat.EXPORT.name: ["messages"],
           prompt_completion.EXPORT.name: ["prompt", "completion"]}


@pytest.fixture
def database_url(sqlite_url: str) -> str:
    """SQLite: what is read here comes from the object store; the database backends are covered
    by the builder's tests."""
    return sqlite_url


@pytest.fixture
def offline(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """No Hub: offline switches, an empty HF_HOME of the test's own, and sockets that refuse any
    address but this machine's."""
    home = tmp_path / "hf-home"
    monkeypatch.setenv("HF_HOME", str(home))
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_DISABLE_TELEMETRY", "1")
    # The libraries read these when first imported; an earlier import in the session has its own.
    import datasets.config
    import huggingface_hub.constants

    monkeypatch.setattr(datasets.config, "HF_DATASETS_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)

    def local_only(connect: Any) -> Any:
        def guarded(self: socket.socket, address: Any) -> Any:
            if self.family in (socket.AF_INET, socket.AF_INET6):
                host = str(address[0])
                if host not in ("localhost", "::1") and not host.startswith("127."):
                    raise AssertionError(f"network access to {address!r} during the trainer test")
            return connect(self, address)
        return guarded

    monkeypatch.setattr(socket.socket, "connect", local_only(socket.socket.connect))
    monkeypatch.setattr(socket.socket, "connect_ex", local_only(socket.socket.connect_ex))
    yield
    assert not (home / "hub").exists(), "something was fetched from the Hub into HF_HOME"


@dataclass(frozen=True)
class Built:
    """A file of two versions: each version's objects by name, as bytes."""

    file_id: str
    objects: dict[int, dict[str, bytes]]


@pytest.fixture
def built(pipeline: Pipeline) -> Built:
    """Version 1 with four of the demo's eligible conversations, version 2 with the rest."""
    dataset = demo_dataset()
    seed_dataset(pipeline, dataset)
    rows = eligible(dataset)
    first = create_file(pipeline, rows[:4], name="Trainer file")
    second = add_to_file(pipeline, first.training_file_id, rows[4:])
    assert second.version == 2
    objects: dict[int, dict[str, bytes]] = {}
    for version in (1, 2):
        objects[version] = {}
        for item in pipeline.db.version_objects(first.training_file_id, version):
            data = pipeline.store.get_bytes(pipeline.training_bucket, item.key)
            assert hashlib.sha256(data).hexdigest() == item.sha256, item.name
            objects[version][item.name] = data
    return Built(first.training_file_id, objects)


# --- A tokenizer made here ---------------------------------------------------------------------


def train_tokenizer(texts: list[str]) -> Any:
    """A byte-level BPE trained on `texts` (any text encodes, and decoding gives back exactly the
    text encoded), with ChatML's two special tokens and the chat template above."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    core = Tokenizer(models.BPE())
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    core.train_from_iterator(texts, trainers.BpeTrainer(
        vocab_size=1500, show_progress=False, special_tokens=[START, END],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=core, eos_token=END, pad_token=END,
        additional_special_tokens=[START], clean_up_tokenization_spaces=False)
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def message_texts(messages: list[dict[str, Any]]) -> list[str]:
    return [f"{START}{m['role']}\n{m['content']}{END}\n" for m in messages]


# --- Rendering and the trained span ------------------------------------------------------------


@dataclass(frozen=True)
class Rendered:
    """A conversation rendered and tokenized, with the tokens the template marks as trained."""

    text: str
    ids: list[int]
    offsets: list[tuple[int, int]]
    mask: list[int]

    def trained_ids(self) -> list[int]:
        return [token for token, bit in zip(self.ids, self.mask, strict=True) if bit]

    def trained_chars(self) -> set[int]:
        """The characters of the rendered text that trained tokens cover."""
        return {char for (start, end), bit in zip(self.offsets, self.mask, strict=True) if bit
                for char in range(start, end)}


def render(tokenizer: Any, messages: list[dict[str, Any]], **kwargs: Any) -> Rendered:
    """Render through the chat template with the assistant-token mask (transformers' API)."""
    encoded = tokenizer.apply_chat_template(
        messages, tokenize=True, return_dict=True, return_assistant_tokens_mask=True, **kwargs)
    text = tokenizer.apply_chat_template(messages, tokenize=False, **kwargs)
    offsets = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids = list(encoded["input_ids"])
    assert list(offsets["input_ids"]) == ids
    mask = list(encoded["assistant_masks"])
    assert len(mask) == len(ids)
    return Rendered(text, ids, [tuple(o) for o in offsets["offset_mapping"]], mask)


def content_spans(text: str, messages: list[dict[str, Any]]) -> list[tuple[int, int]]:
    """Where each message's content lies in the rendered text (the template above, written out:
    the render must be exactly this)."""
    spans, cursor = [], 0
    for message, piece in zip(messages, message_texts(messages), strict=True):
        assert text.startswith(piece, cursor), "the render is not the template's ChatML"
        start = cursor + len(START) + len(message["role"]) + 1
        spans.append((start, start + len(message["content"])))
        cursor += len(piece)
    assert cursor == len(text)
    return spans


def assert_trains_only(tokenizer: Any, rendered: Rendered, messages: list[dict[str, Any]],
                       target_index: int, target: str) -> None:
    """The trained tokens decode to the target and its end-of-turn token, nothing else, and cover
    exactly the target's characters in the render (so no other message, whatever its text)."""
    bits = "".join(map(str, rendered.mask)).strip("0")
    assert bits and set(bits) == {"1"}, "the trained tokens are not one run"
    trained = rendered.trained_ids()
    assert tokenizer.decode(trained, skip_special_tokens=False) == target + END
    assert tokenizer.decode(trained, skip_special_tokens=True) == target
    start, end = content_spans(rendered.text, messages)[target_index]
    assert rendered.trained_chars() == set(range(start, end + len(END)))


def without_nulls(value: Any) -> Any:
    """A row as `datasets` gives it back, less the keys it filled with None (a struct column holds
    every key any row has: `weight` on system and user messages)."""
    if isinstance(value, dict):
        return {k: without_nulls(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [without_nulls(v) for v in value]
    return value


def load_export(tmp_path: Path, export: LineExport, data: bytes) -> Any:
    """The export loaded as a training script loads it: `load_dataset("json", data_files=…)`."""
    import datasets

    path = tmp_path / export.name
    path.write_bytes(data)
    return datasets.load_dataset("json", data_files=str(path), split="train",
                                 cache_dir=str(tmp_path / "hf-datasets"))


# --- Tests -------------------------------------------------------------------------------------


@pytest.mark.parametrize("export", EXPORTS, ids=[e.format for e in EXPORTS])
def test_export_loads_and_trains_only_the_targets(built: Built, offline: None, tmp_path: Path,
                                                  export: LineExport) -> None:
    v1, v2 = built.objects[1], built.objects[2]
    pairs = [orjson.loads(line) for line in v2["training.jsonl"].splitlines()]
    lines = v2[export.name].splitlines()
    # The second version carries the first's rows over and derives only the new ones, which
    # is what deriving every row afresh gives.
    assert v2[export.name].startswith(v1[export.name])
    assert len(v1[export.name].splitlines()) == len(v1["training.jsonl"].splitlines()) < len(lines)
    assert b"".join(export.row(orjson.loads(line)) for line in v2["training.jsonl"].splitlines()) \
        == v2[export.name]
    assert len(lines) == len(pairs)
    for index, (line, pair) in enumerate(zip(lines, pairs, strict=True)):
        assert export.problems(orjson.loads(line), pair) == [], index

    loaded = load_export(tmp_path, export, v2[export.name])
    assert loaded.num_rows == len(lines)
    assert loaded.column_names == COLUMNS[export.name]

    rows = [without_nulls(row) for row in loaded]
    assert rows == [orjson.loads(line) for line in lines]
    texts = [piece for row in rows for messages in row.values()
             for piece in message_texts(messages)]
    tokenizer = train_tokenizer(texts)

    history_turns = 0
    for index, (row, pair) in enumerate(zip(rows, pairs, strict=True)):
        target = pair["target_response"]
        if export.name == chat.EXPORT.name:
            messages = row["messages"]
            rendered = render(tokenizer, messages)
            assert_trains_only(tokenizer, rendered, messages, len(messages) - 1, target)
            history = [i for i, m in enumerate(messages[:-1]) if m["role"] == "assistant"]
            assert all(messages[i]["weight"] == 0 for i in history)
            spans = content_spans(rendered.text, messages)
            trained = rendered.trained_chars()
            for i in history:
                assert not trained & set(range(*spans[i])), (index, i)
            history_turns += len(history)
        else:
            prompt, completion = row["prompt"], row["completion"]
            messages = prompt + completion
            # TRL: the prompt rendered with the generation prompt is a prefix of the whole
            # conversation rendered, and the tokens after it are the completion's, the trained part.
            prompt_ids = tokenizer.apply_chat_template(prompt, tokenize=True, return_dict=False,
                                                       add_generation_prompt=True)
            whole = render(tokenizer, messages, trained_from=len(prompt))
            assert whole.ids[:len(prompt_ids)] == list(prompt_ids), index
            completion_mask = [0] * len(prompt_ids) + [1] * (len(whole.ids) - len(prompt_ids))
            # The completion's tokens, less the newline the template closes every turn with.
            newline = tokenizer.convert_tokens_to_ids(tokenizer.tokenize("\n"))
            assert whole.ids[-len(newline):] == newline
            completion_mask[-len(newline):] = [0] * len(newline)
            assert whole.mask == completion_mask, index
            assert_trains_only(tokenizer, whole, messages, len(messages) - 1, target)
            history_turns += sum(m["role"] == "assistant" for m in prompt)
    # The demo's pairs have history with assistant turns: the checks above were not vacuous.
    assert history_turns > len(rows)


def test_negative_controls_put_history_in_the_mask(built: Built, offline: None) -> None:
    """What the checks above would see if the exports trained the history."""
    chats = [orjson.loads(line) for line in built.objects[2][chat.EXPORT.name].splitlines()]
    completions = [orjson.loads(line)
                   for line in built.objects[2][prompt_completion.EXPORT.name].splitlines()]
    texts = [piece for row in chats for piece in message_texts(row["messages"])]
    tokenizer = train_tokenizer(texts)
    index = next(i for i, row in enumerate(chats)
                 if sum(m["role"] == "assistant" for m in row["messages"]) >= 3)

    # A chat row whose first history answer has weight 1: its text is trained too.
    messages = [dict(m) for m in chats[index]["messages"]]
    first = next(i for i, m in enumerate(messages) if m["role"] == "assistant")
    messages[first]["weight"] = 1
    rendered = render(tokenizer, messages)
    start, end = content_spans(rendered.text, messages)[first]
    assert set(range(start, end)) <= rendered.trained_chars()
    with pytest.raises(AssertionError):
        assert_trains_only(tokenizer, rendered, messages, len(messages) - 1,
                           messages[-1]["content"])
    assert chat.problems({"messages": messages}, _pair(built, index)) != []

    # The same row as it is: only the target.
    original = chats[index]["messages"]
    assert_trains_only(tokenizer, render(tokenizer, original), original, len(original) - 1,
                       original[-1]["content"])

    # A prompt/completion row rendered whole with every assistant turn trainable (an
    # assistant-only loss instead of a completion-only one): the history is trained.
    row = completions[index]
    messages = row["prompt"] + row["completion"]
    rendered = render(tokenizer, messages, trained_from=0)
    spans = content_spans(rendered.text, messages)
    history = [i for i, m in enumerate(row["prompt"]) if m["role"] == "assistant"]
    assert history and all(set(range(*spans[i])) <= rendered.trained_chars() for i in history)
    with pytest.raises(AssertionError):
        assert_trains_only(tokenizer, rendered, messages, len(messages) - 1,
                           row["completion"][0]["content"])

    # A chat row ending on another pair's target fails the decode check (and the export's).
    other = next(i for i, row in enumerate(chats)
                 if row["messages"][-1]["content"] != original[-1]["content"])
    swapped = [*original[:-1], chats[other]["messages"][-1]]
    with pytest.raises(AssertionError):
        assert_trains_only(tokenizer, render(tokenizer, swapped), swapped, len(swapped) - 1,
                           original[-1]["content"])
    assert chat.problems({"messages": swapped}, _pair(built, index)) != []


def _pair(built: Built, index: int) -> dict[str, Any]:
    return orjson.loads(built.objects[2]["training.jsonl"].splitlines()[index])


def test_rebuilding_either_version_gives_the_same_bytes(pipeline: Pipeline, built: Built) -> None:
    for version in (1, 2):
        comparisons = reproduce_version(pipeline, built.file_id, version)
        assert {c.name for c in comparisons} == set(built.objects[version])
        assert {e.name for e in EXPORTS} <= set(built.objects[version])
        for comparison in comparisons:
            assert comparison.matches, (version, comparison)
            assert comparison.published_sha256 == hashlib.sha256(
                built.objects[version][comparison.name]).hexdigest()
