"""Adding an output is one module and one registration.

A copy of the package gets a new export module (`outputs/text.py`: one plain-text row per
trainable pair) and one line registering it; nothing else in the copy differs from the package.
A real pipeline run on that copy (in a subprocess, SQLite and a local store) must then write the
new object in every version — whole and as train/validation parts of a split file — carry it over
on an append, list it in the manifest and the version's objects, run its blocking check (and fail
the build when the object is wrong), serve it as a download format, declare its check on the
Dagster asset, and reproduce it byte for byte with `files verify`.
"""

from __future__ import annotations

import filecmp
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TESTS = Path(__file__).resolve().parent

NEW_MODULE = '''"""`training.text.jsonl`: one row per trainable pair, the exchange as plain text."""

from brightrun_pipeline.outputs.base import LineExport, context_messages


def derive(pair):
    turns = [f"{m['role']}: {m['content']}" for m in context_messages(pair)]
    return {"text": "\\n".join([*turns, f"assistant: {pair.get('target_response')}"])}


def problems(row, pair):
    return [] if row == derive(pair) else ["the row is not the text of its pair"]


EXPORT = LineExport(
    name="training.text.jsonl", format="text", title="Plain text", check_name="text_export_valid",
    check_description="Every row is the text of its pair.", derive=derive, problems=problems)
'''

SCRIPT = '''
import json, sys
from pathlib import Path

import orjson

from brightrun_pipeline import queries
from brightrun_pipeline.config import RetrySettings
from brightrun_pipeline.db.repository import Database
from brightrun_pipeline.outputs import FORMATS, text
from brightrun_pipeline.reproduce import reproduce_version
from brightrun_pipeline.rules import FileSettings
from brightrun_pipeline.service import Pipeline
from brightrun_pipeline.storage import LocalObjectStore
from seed import add_to_file, demo_dataset, eligible, seed_dataset

work = Path(sys.argv[1])
db = Database(f"sqlite:///{work / 'brightrun.db'}")
db.upgrade()
store = LocalObjectStore(work / "storage")
for bucket in ("conversation-files", "training-files"):
    store.ensure_bucket(bucket)
pipeline = Pipeline(db, store, source_bucket="conversation-files",
                    training_bucket="training-files", fetch_concurrency=4,
                    retry=RetrySettings(attempts=2, base_delay=0.0, max_delay=0.0))
dataset = demo_dataset()
seed_dataset(pipeline, dataset)
rows = eligible(dataset)
request = pipeline.submit(conversation_ids=[c.conversation_id for c in rows[:4]],
                          new_file_name="Text file", requested_by="test",
                          settings=FileSettings(validation_fraction=0.25))
assert pipeline.claim(request.id) is not None
v1 = pipeline.run_request(request.id, "run-1")
v2 = add_to_file(pipeline, v1.training_file_id, rows[4:])
file = db.get_file(v1.training_file_id)

def stored(record, name):
    found = {o.name: o for o in db.version_objects(record.training_file_id, record.version)}
    return store.get_bytes("training-files", found[name].key) if name in found else None

report = {"formats": list(FORMATS), "versions": {}}
for record in (v1, v2):
    manifest = orjson.loads(stored(record, "manifest.json"))
    lines = stored(record, "training.jsonl").splitlines()
    rows_ = stored(record, "training.text.jsonl").splitlines()
    output, found = queries.download_object(pipeline, file, record, "text", "validation")
    report["versions"][record.version] = {
        "objects": [o.name for o in db.version_objects(record.training_file_id, record.version)],
        "manifest_files": list(manifest["files"]),
        "rows_match_lines": [orjson.loads(r) for r in rows_] == [
            text.derive(orjson.loads(line)) for line in lines],
        "parts": [len((stored(record, f"training.text.{side}.jsonl") or b"").splitlines())
                  for side in ("train", "validation")],
        "rows": len(rows_),
        "download": found.name,
        "reproduced": {c.name: c.matches
                       for c in reproduce_version(pipeline, record.training_file_id,
                                                  record.version)},
    }
report["v2_starts_with_v1"] = stored(v2, "training.text.jsonl").startswith(
    stored(v1, "training.text.jsonl"))

# The new output's blocking check holds a version to it: a staged version whose text rows
# were changed after the build fails that check (and only it among the export checks).
from brightrun_pipeline.verification import verify_built_version
from seed import claimed_request
request_id = claimed_request(pipeline, rows[:1], new_file_name="Checked file")
staged = pipeline.stage(pipeline.start(request_id, "run-3"))
report["staged_checks"] = {n: o.passed for n, o in staged.checks.items()}
item = staged.built.objects["training.text.jsonl"]
store.put_bytes("training-files", item.key,
                b'{"text": "not this pair"}\\n' * staged.built.trainable_pair_count, replace=True)
report["tampered_checks"] = {n: o.passed for n, o in verify_built_version(
    pipeline, staged.built).items()}
report["checks"] = [c.name for c in __import__("brightrun_pipeline.outputs").outputs.CHECKS]
from assets.training_files import training_file_objects
report["asset_checks"] = sorted(key.name for key in training_file_objects.check_keys)
print(json.dumps(report))
'''


def _copy_with_the_new_output(tmp_path: Path) -> Path:
    package = tmp_path / "src" / "brightrun_pipeline"
    shutil.copytree(ROOT / "brightrun_pipeline", package,
                    ignore=shutil.ignore_patterns("__pycache__"))
    (package / "outputs" / "text.py").write_text(NEW_MODULE)
    registry = package / "outputs" / "__init__.py"
    source = registry.read_text()
    source = source.replace("import chat, document, jsonl, manifest, prompt_completion",
                            "import chat, document, jsonl, manifest, prompt_completion, text")
    source = source.replace("(chat.EXPORT, prompt_completion.EXPORT)",
                            "(chat.EXPORT, prompt_completion.EXPORT, text.EXPORT)")
    assert source != registry.read_text()
    registry.write_text(source)
    return package


def _differences(left: Path, right: Path) -> list[str]:
    """Files added, removed or changed between two trees (relative paths)."""
    found: list[str] = []

    def walk(comparison: filecmp.dircmp, prefix: str) -> None:
        found.extend(prefix + name for name in comparison.left_only + comparison.right_only
                     if name != "__pycache__")
        found.extend(prefix + name for name in comparison.diff_files)
        for name, sub in comparison.subdirs.items():
            if name != "__pycache__":
                walk(sub, f"{prefix}{name}/")

    walk(filecmp.dircmp(left, right, ignore=["__pycache__"]), "")
    return sorted(found)


def test_a_new_export_is_one_module_and_one_registration(tmp_path: Path) -> None:
    package = _copy_with_the_new_output(tmp_path)
    assert _differences(ROOT / "brightrun_pipeline", package) == [
        "outputs/__init__.py", "outputs/text.py"]
    work = tmp_path / "work"
    work.mkdir()
    # The copy comes first on the path; the Dagster assets and the test seeds from the project.
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [str(package.parent), str(ROOT), str(TESTS)])}
    result = subprocess.run([sys.executable, "-c", SCRIPT, str(work)], env=env, cwd=work,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])

    assert "text" in report["formats"]
    parts = ["training.text.jsonl", "training.text.train.jsonl", "training.text.validation.jsonl"]
    for version in report["versions"].values():
        assert set(parts) <= set(version["objects"])
        assert version["manifest_files"] == [n for n in version["objects"]
                                             if n != "manifest.json"]
        assert version["rows_match_lines"] and version["rows"] > 0
        assert sum(version["parts"]) == version["rows"] and min(version["parts"]) > 0
        assert version["download"] == "training.text.validation.jsonl"
        assert set(parts) <= set(version["reproduced"])
        assert all(version["reproduced"].values()), version["reproduced"]
    assert report["v2_starts_with_v1"], "the append did not carry the first version's rows"
    assert "text_export_valid" in report["checks"]
    assert "text_export_valid" in report["asset_checks"]
    assert all(report["staged_checks"].values()), report["staged_checks"]
    tampered = report["tampered_checks"]
    assert tampered["text_export_valid"] is False
    assert tampered["chat_export_valid"] and tampered["prompt_completion_export_valid"]
