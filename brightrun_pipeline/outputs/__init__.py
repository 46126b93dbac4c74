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
    """One object of a version: its file name, its download format and how it is served."""

    name: str
    format: str
    title: str
    media_type: str
    export: LineExport | None = None


JSON = Output("training.json", "json", "Full JSON (brightrun-lora-v4)", "application/json")
JSONL = Output("training.jsonl", "jsonl", "JSONL (one line per trainable pair)",
               "application/x-ndjson")
MANIFEST = Output("manifest.json", "manifest", "Manifest (lineage and hashes)",
                  "application/json")

# Exports derived from the JSONL, each with its blocking check. Register a new one here.
EXPORTS: tuple[LineExport, ...] = (chat.EXPORT, prompt_completion.EXPORT)

OUTPUTS: tuple[Output, ...] = (
    JSON, JSONL,
    *(Output(e.name, e.format, e.title, "application/x-ndjson", e) for e in EXPORTS),
    MANIFEST,
)
OUTPUT_NAMES: tuple[str, ...] = tuple(o.name for o in OUTPUTS)
BY_FORMAT: dict[str, Output] = {o.format: o for o in OUTPUTS}
BY_NAME: dict[str, Output] = {o.name: o for o in OUTPUTS}


def output_for_format(fmt: str) -> Output | None:
    """The output a download format names, or None."""
    return BY_FORMAT.get(fmt)
