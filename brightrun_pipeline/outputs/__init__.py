"""The named outputs of a version, as data.

A version is the set of objects registered in `OUTPUTS`: the full JSON, the JSONL derived from it,
the exports derived from the JSONL line by line (each followed by its train/validation parts when
the file is split), and the manifest. Each output declares how it is written, how it is carried
over on an append, and its blocking checks (`base.Output`); the builder, the checks, the manifest,
`files verify`, downloads, the CLI and the console only iterate this registry.

Adding an export derived from the JSONL is one module declaring a `LineExport` and one line in
`EXPORTS`; any other output is one module declaring an `Output` and one line in `OUTPUTS`
(docs/design.md, "Adding an output").
"""

from __future__ import annotations

from brightrun_pipeline.outputs import chat, document, jsonl, manifest, prompt_completion
from brightrun_pipeline.outputs.base import Check, LineExport, Output
from brightrun_pipeline.outputs.exports import ExportOutput
from brightrun_pipeline.outputs.split import SPLITS, SplitPart, split_name

# Exports derived from the JSONL, each with its blocking check. Register a new one here.
EXPORTS: tuple[LineExport, ...] = (chat.EXPORT, prompt_completion.EXPORT)

OUTPUTS: tuple[Output, ...] = (
    document.OUTPUT,
    jsonl.OUTPUT,
    *(output for export in EXPORTS
      for output in (ExportOutput(export), *(SplitPart(export, side) for side in SPLITS))),
    manifest.OUTPUT,
)

JSON, JSONL, MANIFEST = document.OUTPUT, jsonl.OUTPUT, manifest.OUTPUT
OUTPUT_NAMES: tuple[str, ...] = tuple(o.name for o in OUTPUTS)
BY_FORMAT: dict[tuple[str, str | None], Output] = {(o.format, o.split): o for o in OUTPUTS}
BY_NAME: dict[str, Output] = {o.name: o for o in OUTPUTS}
FORMATS: tuple[str, ...] = tuple(dict.fromkeys(o.format for o in OUTPUTS))
# Every blocking check of a version, once each (a check several outputs declare runs once).
CHECKS: tuple[Check, ...] = tuple(dict.fromkeys(c for o in OUTPUTS for c in o.checks))
assert len({c.name for c in CHECKS}) == len(CHECKS), "two different checks share a name"
assert len(BY_NAME) == len(OUTPUTS), "two outputs share a name"


def output_for_format(fmt: str, split: str | None = None) -> Output | None:
    """The output a download format (and split side) names, or None."""
    return BY_FORMAT.get((fmt, split))


__all__ = ["CHECKS", "EXPORTS", "OUTPUTS", "SPLITS", "Output", "split_name"]
