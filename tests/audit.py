"""The invariants every reliability test ends on: the database, the stored objects and the
requests agree, whatever was killed or raced on the way."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass

import sqlalchemy as sa

from brightrun_pipeline.db.schema import run_heartbeats, training_file_builds
from brightrun_pipeline.outputs import OUTPUT_NAMES, OUTPUTS
from brightrun_pipeline.queries import read_manifest
from brightrun_pipeline.readiness import REPORT_NAME, report_key
from brightrun_pipeline.reproduce import reproduce_version
from brightrun_pipeline.service import Pipeline

TERMINAL = ("succeeded", "rejected", "failed")


@dataclass(frozen=True)
class AuditReport:
    """What the audit saw, for the suites' figures."""

    versions: int
    conversations: int
    requests_succeeded: int


def audit_file(pipeline: Pipeline, file_id: str, *, verify_every_version: bool = True,
               stray_objects_allowed: bool = False) -> AuditReport:
    """Assert that a training file is whole: consecutive versions whose stored objects have the
    recorded hashes (and rebuild byte for byte), membership equal to the current manifest (no
    conversation lost or twice), every succeeded request in the version it names, and no object
    stored beyond the current version."""
    db, store, bucket = pipeline.db, pipeline.store, pipeline.training_bucket
    file = db.get_file(file_id)
    assert file is not None and file.current_version is not None
    versions = db.list_versions(file_id)
    assert [v.version for v in versions] == list(range(1, file.current_version + 1))
    published: set[str] = set()
    for record in versions:
        objects = {o.name: o for o in db.version_objects(file_id, record.version)}
        # Every object the version lists, and the three its row names (the same objects).
        assert {(n, o.key, o.sha256) for n, o in objects.items() if n in ROW_OBJECTS} == {
            ("training.json", record.json_key, record.json_sha256),
            ("training.jsonl", record.jsonl_key, record.jsonl_sha256),
            ("manifest.json", record.manifest_key, record.manifest_sha256)}
        # Every unsplit output, and the split parts only when the file holds out a share.
        unsplit = {o.name for o in OUTPUTS if o.split is None}
        assert unsplit <= set(objects) <= set(OUTPUT_NAMES), \
            f"version {record.version}: {sorted(objects)}"
        for item in objects.values():
            data = store.get_bytes(bucket, item.key)
            assert hashlib.sha256(data).hexdigest() == item.sha256, \
                f"{item.key} differs from its record"
            assert item.size is None or len(data) == item.size
            published.add(item.key)
        if verify_every_version or record.version == file.current_version:
            mismatches = [c.name for c in reproduce_version(pipeline, file_id, record.version)
                          if not c.matches]
            assert not mismatches, f"version {record.version} does not rebuild: {mismatches}"

    manifest = read_manifest(pipeline, file_id, None)
    manifest_ids = [c.conversation_id for c in manifest.conversations]
    assert len(manifest_ids) == len(set(manifest_ids)), "a conversation is in the file twice"
    members = list(db.iter_members(file_id))
    assert [m.conversation_id for m in members] == manifest_ids
    assert [m.added_in_version for m in members] \
        == [c.added_in_version for c in manifest.conversations]

    succeeded = 0
    request_ids_by_version = {v.version: set(v.request_ids) for v in versions}
    for request in db.list_requests():
        if (request.target_file_id or request.training_file_id) != file_id:
            continue
        assert request.status in TERMINAL, f"request {request.id} is {request.status}"
        if request.status == "succeeded":
            succeeded += 1
            assert request.id in request_ids_by_version[request.result_version]
            assert set(request.conversation_ids) <= set(manifest_ids)
    if not stray_objects_allowed:
        stored = set(store.list_keys(bucket, f"{file_id}/"))
        # Readiness reports are derived data, stored for published versions only.
        reports = {key for key in stored if key.endswith(f"/{REPORT_NAME}")}
        assert reports <= {report_key(file_id, v.version) for v in versions}, reports
        stored -= reports
        assert stored == published, f"objects of unpublished builds: {stored - published}"
    with db.engine.connect() as connection:
        assert connection.execute(sa.select(sa.func.count()).select_from(
            training_file_builds).where(
                training_file_builds.c.training_file_id == file_id)).scalar() == 0
    return AuditReport(len(versions), len(manifest_ids), succeeded)


ROW_OBJECTS = ("training.json", "training.jsonl", "manifest.json")


def no_run_heartbeats_left(pipeline: Pipeline) -> bool:
    """Whether every run that beat has ended (or was recovered)."""
    with pipeline.db.engine.connect() as connection:
        return connection.execute(
            sa.select(sa.func.count()).select_from(run_heartbeats)).scalar() == 0


def statuses(pipeline: Pipeline, request_ids: Iterable[str]) -> dict[str, str]:
    """The status of each request."""
    found = {}
    for request_id in request_ids:
        request = pipeline.db.get_request(request_id)
        assert request is not None
        found[request_id] = request.status
    return found
