"""The named outputs of a version.

A version is the set of objects listed here: the full JSON, the JSONL derived from it, the
manifest, and the exports derived from the JSONL line by line. The builder writes, the checks
check, the manifest, `files verify`, downloads, the CLI and the console list what is registered
here. Adding an export is one module (a `LineExport`) and one line in `EXPORTS`.
"""

from __future__ import annotations

from dataclasses import dataclass

from brightrun_pipeline.outputs import chat, prompt_completion
from brightrun_pipeline.outputs.base import LineExport


@dataclass(frozen=True)
class Output:
    """One object of a version: its file name, its download format (and split side, for the
    train/validation parts of an export) and how it is served."""

    name: str
    format: str
    title: str
    media_type: str
    export: LineExport | None = None
    split: str | None = None


JSON = Output("training.json", "json", "Full JSON (brightrun-lora-v4)", "application/json")
JSONL = Output("training.jsonl", "jsonl", "JSONL (one line per trainable pair)",
               "application/x-ndjson")
MANIFEST = Output("manifest.json", "manifest", "Manifest (lineage and hashes)",
                  "application/json")

# Exports derived from the JSONL, each with its blocking check. Register a new one here.
EXPORTS: tuple[LineExport, ...] = (chat.EXPORT, prompt_completion.EXPORT)

SPLITS = ("train", "validation")


def split_name(export: LineExport, side: str) -> str:
    """The object holding one side of an export: "training.chat.jsonl" →
    "training.chat.train.jsonl"."""
    return export.name.removesuffix(".jsonl") + f".{side}.jsonl"


OUTPUTS: tuple[Output, ...] = (
    JSON, JSONL,
    *(Output(e.name, e.format, e.title, "application/x-ndjson", e) for e in EXPORTS),
    *(Output(split_name(e, side), e.format, f"{e.title}, {side} split", "application/x-ndjson",
             e, side) for e in EXPORTS for side in SPLITS),
    MANIFEST,
)
OUTPUT_NAMES: tuple[str, ...] = tuple(o.name for o in OUTPUTS)
# Every object derived from the JSONL (whole exports and their split parts).
EXPORT_OBJECT_NAMES: frozenset[str] = frozenset(o.name for o in OUTPUTS if o.export)
BY_FORMAT: dict[tuple[str, str | None], Output] = {(o.format, o.split): o for o in OUTPUTS}
BY_NAME: dict[str, Output] = {o.name: o for o in OUTPUTS}
FORMATS: tuple[str, ...] = tuple(dict.fromkeys(o.format for o in OUTPUTS))


def output_for_format(fmt: str, split: str | None = None) -> Output | None:
    """The output a download format (and split side) names, or None."""
    return BY_FORMAT.get((fmt, split))
