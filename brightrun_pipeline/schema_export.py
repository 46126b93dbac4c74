"""Export the JSON Schema of the v4 training file and of a JSONL line into the repository.

Run `python -m brightrun_pipeline.schema_export` after changing the models; a test fails while the
committed schemas are out of date.
"""

from __future__ import annotations

from pathlib import Path

import orjson
from pydantic import BaseModel

from brightrun_pipeline.models import JsonlLine, Manifest, TrainingFileV4

SCHEMA_DIR = Path(__file__).parent / "schemas"
SCHEMAS: dict[str, type[BaseModel]] = {
    "training_file_v4.schema.json": TrainingFileV4,
    "jsonl_line.schema.json": JsonlLine,
    "manifest.schema.json": Manifest,
}


def render_schema(model: type[BaseModel]) -> bytes:
    """The JSON Schema of a model as committed: 2-space indented, newline-terminated."""
    schema = {"$schema": "https://json-schema.org/draft/2020-12/schema",
              **model.model_json_schema()}
    return orjson.dumps(schema, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS) + b"\n"


def main() -> None:
    """Write every schema file."""
    SCHEMA_DIR.mkdir(exist_ok=True)
    for name, model in SCHEMAS.items():
        (SCHEMA_DIR / name).write_bytes(render_schema(model))
        print(f"wrote {SCHEMA_DIR / name}")


if __name__ == "__main__":
    main()
