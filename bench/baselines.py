"""Baselines and floors, one per process: `python -m bench.baselines TASK DATA_DIR N`.

This module loads only the standard library and orjson, so a floor is not charged for imports
our own tasks need (pydantic, the builder).
"""

from __future__ import annotations

import itertools
import json
import sys
from pathlib import Path

import orjson

# The pair fields a JSONL line carries after its id and conversation_id (contract §7).
PAIR_FIELDS = ("turn_number", "conversation_metadata", "system_prompt", "conversation_history",
               "current_user_input", "emotional_context", "target_response", "training_metadata")


def _rows(data: Path, count: int) -> list[dict]:
    with open(data / "rows.jsonl", "rb") as lines:
        return [orjson.loads(line) for line in itertools.islice(lines, count)]


def naive(data: Path, n: int) -> None:
    """The original algorithm: load every source, one dict, json.dump(indent=2), JSONL in memory."""
    root = data / "storage" / "conversation-files"
    conversations = []
    for row in _rows(data, n):
        with open(root / row["key"], encoding="utf-8") as handle:
            source = json.load(handle)
        conversations.append({"conversation_metadata": {"conversation_id": row["conversation_id"]},
                              "training_pairs": source["training_pairs"],
                              "profile": source["consultant_profile"]})
    document = {"training_file_metadata": {"total_conversations": len(conversations)},
                "conversations": conversations}
    with open(data / "naive.json", "w", encoding="utf-8") as handle:
        json.dump(document, handle, indent=2, ensure_ascii=False)
    lines = []
    for conversation in document["conversations"]:
        cid = conversation["conversation_metadata"]["conversation_id"]
        for pair in conversation["training_pairs"]:
            if pair.get("target_response"):
                line = {"id": f"{cid}_turn{pair['turn_number']}", "conversation_id": cid}
                line.update({k: pair[k] for k in PAIR_FIELDS})
                lines.append(json.dumps(line, ensure_ascii=False, separators=(",", ":")))
    (data / "naive.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    (data / "naive.json").unlink()
    (data / "naive.jsonl").unlink()


def orjson_floor(data: Path, n: int) -> None:
    """The floor: load each source with orjson and write its trainable pairs as JSONL."""
    root = data / "storage" / "conversation-files"
    with open(data / "floor.jsonl", "wb") as out:
        for row in _rows(data, n):
            source = orjson.loads((root / row["key"]).read_bytes())
            cid = row["conversation_id"]
            for pair in source["training_pairs"]:
                if pair.get("target_response"):
                    line = {"id": f"{cid}_turn{pair['turn_number']}", "conversation_id": cid}
                    line.update({k: pair[k] for k in PAIR_FIELDS})
                    out.write(orjson.dumps(line))
                    out.write(b"\n")
    (data / "floor.jsonl").unlink()


def copy_previous(data: Path, n: int) -> None:
    """The floor of an add: copy version 1's JSON and JSONL bytes (as written by build_new)."""
    built = orjson.loads((data / "v1.json").read_bytes())
    root = data / "storage" / "training-files"
    objects = built["objects"]
    for key in (objects["training.json"]["key"], objects["training.jsonl"]["key"]):
        with open(root / key, "rb") as src, open(data / "copy.tmp", "wb") as dst:
            while chunk := src.read(1 << 20):
                dst.write(chunk)
    (data / "copy.tmp").unlink()


def write_floor(data: Path, n: int) -> None:
    """What writing a build's output costs on this machine: as many bytes as version 1's JSON
    and JSONL, in 4 MiB writes, to new files (no parsing, no hashing, no fsync)."""
    built = orjson.loads((data / "v1.json").read_bytes())
    chunk = bytes(4 << 20)
    objects = built["objects"]
    sizes = {"write.json": objects["training.json"]["size"],
             "write.jsonl": objects["training.jsonl"]["size"]}
    for name, size in sizes.items():
        with open(data / name, "wb") as out:
            for _ in range(size // len(chunk)):
                out.write(chunk)
            out.write(chunk[: size % len(chunk)])
    for name in sizes:
        (data / name).unlink()


TASKS = {"naive": naive, "orjson_floor": orjson_floor, "copy_previous": copy_previous,
         "write_floor": write_floor}

if __name__ == "__main__":
    TASKS[sys.argv[1]](Path(sys.argv[2]), int(sys.argv[3]))
