"""The committed JSON Schemas are the ones the models produce, and the example validates."""

import json

import pytest
from contract_oracle import EXAMPLE_DIR

from brightrun_pipeline.models import JsonlLine, TrainingFileV4
from brightrun_pipeline.schema_export import SCHEMA_DIR, SCHEMAS, render_schema


@pytest.mark.parametrize("name", sorted(SCHEMAS))
def test_committed_schema_is_current(name: str) -> None:
    committed = (SCHEMA_DIR / name).read_bytes()
    assert committed == render_schema(SCHEMAS[name]), (
        f"{name} is stale: run `python -m brightrun_pipeline.schema_export`")


def test_example_outputs_validate_against_the_models() -> None:
    document = (EXAMPLE_DIR / "expected" / "training.json").read_bytes()
    TrainingFileV4.model_validate_json(document)
    lines = (EXAMPLE_DIR / "expected" / "training.jsonl").read_bytes().splitlines()
    assert lines
    for line in lines:
        JsonlLine.model_validate_json(line)


def test_v4_model_rejects_a_wrong_format_spec() -> None:
    document = json.loads((EXAMPLE_DIR / "expected" / "training.json").read_bytes())
    document["training_file_metadata"]["format_spec"] = "brightrun-lora-v3"
    with pytest.raises(ValueError, match="format_spec"):
        TrainingFileV4.model_validate(document)


def test_jsonl_model_rejects_an_untrainable_line() -> None:
    line = json.loads((EXAMPLE_DIR / "expected" / "training.jsonl").read_bytes().splitlines()[0])
    line["target_response"] = ""
    with pytest.raises(ValueError, match="target_response"):
        JsonlLine.model_validate(line)
