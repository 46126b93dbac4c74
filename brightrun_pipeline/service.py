"""The request life cycle (contract §4): validate, claim, plan, build, publish — one core for the
CLI, the sensor and the assets."""

from __future__ import annotations

import contextlib
import functools
import random
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from pydantic import ValidationError

from brightrun_pipeline.builder import (
    BuildSpec,
    BuiltVersion,
    IncomingConversation,
    PreviousVersion,
    build_version,
    object_key,
)
from brightrun_pipeline.config import LifecycleSettings, ReadinessSettings, RetrySettings, Settings
from brightrun_pipeline.db.repository import (
    BuildClaim,
    CatalogRow,
    Database,
    NewFile,
    ObjectRecord,
    Publication,
    TrainingFileRecord,
    VersionRecord,
)
from brightrun_pipeline.errors import (
    AttemptLost,
    AttemptSuperseded,
    ChecksFailed,
    Conflict,
    NotFound,
    ProcessingFailed,
    RequestRejected,
    StaleVersion,
    is_retryable,
)
from brightrun_pipeline.liveness import Heartbeat
from brightrun_pipeline.models import ManifestObject, SelectionRequest
from brightrun_pipeline.near_duplicates import (
    DEFAULT_NEAR_DUPLICATE_THRESHOLD,
    IndexCache,
    Match,
    SignatureIndex,
    Signatures,
    describe,
    find_near_duplicates,
)
from brightrun_pipeline.outputs import OUTPUT_NAMES
from brightrun_pipeline.retry import RetryingStore
from brightrun_pipeline.rules import (
    ConversationFacts,
    FileSettings,
    check_request_size,
    check_selection,
    ineligibility_reason,
    normalize_file_name,
    normalize_uuid,
)
from brightrun_pipeline.splits import Placed, assign_sides
from brightrun_pipeline.storage import ObjectStore

if TYPE_CHECKING:
    from brightrun_pipeline.verification import CheckOutcome

TRAINING_FILE_NAMESPACE = uuid.UUID("6f1d7c52-3b8e-5d0a-9a44-1c2b7e9f0d35")
OPEN_STATUSES = ("pending", "queued", "running", "failed")
# Holders of a claimed request (selection_requests.claimed_by).
SENSOR_HOLDER = "sensor"
CLI_HOLDER = "cli"


def file_settings(raw: object) -> FileSettings:
    """The settings a request gives its new file, or a rejection naming what is wrong."""
    if raw is None:
        return FileSettings()
    try:
        return FileSettings.model_validate(raw)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'settings'}: {e['msg']}"
                             for e in exc.errors())
        raise RequestRejected(f"new_file_settings are not valid: {problems}") from exc


def utc_now() -> datetime:
    """The current time in UTC."""
    return datetime.now(UTC)


def new_file_id(request_id: str) -> str:
    """The id of the training file a new-file request creates (stable across retries)."""
    return str(uuid.uuid5(TRAINING_FILE_NAMESPACE, f"selection-request:{request_id}"))


@dataclass(frozen=True)
class ValidSelection:
    """A request that passed the rules: its target and its conversations, in request order."""

    request: SelectionRequest
    target_file_id: str
    existing_file: TrainingFileRecord | None
    new_file_name: str | None
    rows: list[CatalogRow]
    # The settings of the file (the existing file's, or those a new file starts with).
    settings: FileSettings = field(default_factory=FileSettings)
    # Conversations nearly identical to one already in the file or earlier in the request, with
    # the reason naming both (the file warns about near-duplicates rather than blocking them).
    warnings: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class VersionPlan:
    """Everything a run needs to build and publish one version."""

    spec: BuildSpec
    expected_current_version: int | None
    new_file: NewFile | None
    request_ids: list[str] = field(default_factory=list)
    # Changed conversations a rematerialization could not re-read, with the reason.
    skipped: dict[str, str] = field(default_factory=dict)
    # The attempt of the request this plan serves (fences its publication), if any.
    attempt: int | None = None
    # Split sides given now to conversations already in the file (recorded at publication).
    placed: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class StagedVersion:
    """A version written and checked under its build lease, waiting to be published."""

    plan: VersionPlan
    built: BuiltVersion
    checks: dict[str, CheckOutcome]
    # The build lease that owns the version's keys until publication.
    owner: str

    @property
    def passed(self) -> bool:
        """Whether every blocking check passed."""
        return all(outcome.passed for outcome in self.checks.values())

    def failed_checks(self) -> list[str]:
        """Names of the checks that failed."""
        return [name for name, outcome in self.checks.items() if not outcome.passed]


def incoming(row: CatalogRow) -> IncomingConversation:
    """The builder's view of a catalog row."""
    assert row.enriched_file_path is not None
    return IncomingConversation(
        conversation_id=row.conversation_id,
        batch_id=row.batch_id,
        source_key=row.enriched_file_path,
        quality_score=row.quality_score,
        persona_key=row.persona_key,
        emotional_arc_key=row.emotional_arc_key,
        topic_key=row.topic_key,
        created_at=row.created_at,
        updated_at=row.updated_at,
    )


class Pipeline:
    """The training-file service: database, source store and output store under one roof."""

    def __init__(self, db: Database, store: ObjectStore, *,
                 source_bucket: str = "conversation-files",
                 training_bucket: str = "training-files", fetch_concurrency: int = 16,
                 retry: RetrySettings | None = None,
                 near_duplicate_threshold: float = DEFAULT_NEAR_DUPLICATE_THRESHOLD,
                 lifecycle: LifecycleSettings | None = None,
                 readiness: ReadinessSettings | None = None) -> None:
        self.db = db
        self.store = store
        self.source_bucket = source_bucket
        self.training_bucket = training_bucket
        self.fetch_concurrency = fetch_concurrency
        self.retry = retry or RetrySettings()
        self.lifecycle = lifecycle or LifecycleSettings()
        self.near_duplicate_threshold = near_duplicate_threshold
        self._member_indexes = IndexCache()
        self.readiness = readiness or ReadinessSettings()

    @classmethod
    def from_settings(cls, settings: Settings, db: Database, store: ObjectStore) -> Pipeline:
        """A pipeline configured from environment settings."""
        return cls(db, store, source_bucket=settings.source_bucket,
                   training_bucket=settings.training_bucket,
                   fetch_concurrency=settings.fetch_concurrency, retry=settings.retry,
                   near_duplicate_threshold=settings.near_duplicate_threshold,
                   lifecycle=settings.lifecycle, readiness=settings.readiness)

    # --- Rules -----------------------------------------------------------------------------

    def validate(self, request: SelectionRequest) -> ValidSelection:
        """Check a request against contract §4 as the database stands now."""
        raw_ids = request.conversation_ids
        if not isinstance(raw_ids, list):
            raise RequestRejected(
                "conversation_ids must be a JSON array of conversation ID strings"
            )
        check_request_size(raw_ids)
        has_file = request.training_file_id is not None
        has_name = request.new_file_name is not None
        if has_file == has_name:
            raise RequestRejected(
                "a request names exactly one target: training_file_id or new_file_name")
        existing: TrainingFileRecord | None = None
        name: str | None = None
        if has_file:
            file_id = normalize_uuid(request.training_file_id)
            existing = self.db.get_file(file_id) if file_id else None
            if existing is None:
                raise RequestRejected(f"training file {request.training_file_id} does not exist")
            target = existing.id
            label = f"training file {existing.name!r}"
            if request.new_file_settings is not None:
                raise RequestRejected("settings go with a new training file; change an "
                                      "existing file's with `brightrun files configure`")
            settings = FileSettings(near_duplicates=existing.near_duplicates,  # type: ignore[arg-type]
                                    validation_fraction=existing.validation_fraction)
        else:
            name = normalize_file_name(request.new_file_name)
            if self.db.file_name_taken(name):
                raise RequestRejected(f"a training file named {name!r} already exists")
            target = new_file_id(request.id)
            label = f"new training file {name!r}"
            settings = file_settings(request.new_file_settings)
        normalized = [cid for cid in (normalize_uuid(raw) for raw in raw_ids) if cid]
        rows = self.db.conversations_by_id(normalized)
        facts = {cid: ConversationFacts(cid, row.enrichment_status, row.enriched_file_path)
                 for cid, row in rows.items()}
        members = self.db.member_versions(existing.id, normalized) if existing else {}
        ordered = check_selection(raw_ids, facts, members, file_label=label)
        chosen = [rows[cid] for cid in ordered]
        warnings = self._check_near_duplicates(existing, chosen, label, settings, len(raw_ids))
        return ValidSelection(request, target, existing, name, chosen, settings, warnings)

    # --- Near-duplicates -------------------------------------------------------------------

    def signatures(self) -> Signatures:
        """The near-duplicate signatures of conversations, stored or computed from sources."""
        return Signatures(self.db, self.store, self.source_bucket,
                          concurrency=self.fetch_concurrency, retry=self.retry,
                          cache=self._member_indexes)

    def _member_index(self, signatures: Signatures, file: TrainingFileRecord | None
                      ) -> tuple[SignatureIndex, dict[str, int]]:
        if file is None or file.current_version is None:
            return SignatureIndex({}, self.near_duplicate_threshold), {}
        return signatures.of_members(file.id, file.current_version,
                                     self.near_duplicate_threshold)

    def near_duplicates(self, file_id: str | None, rows: Sequence[CatalogRow], *,
                        file: TrainingFileRecord | None = None) -> dict[str, list[Match]]:
        """The conversations of a selection (catalog rows in request order) that are nearly
        identical to a member of training file `file_id` (its record, when the caller has it,
        in `file`) or to one earlier in the selection."""
        if file is None and file_id is not None:
            file = self.db.get_file(file_id)
        signatures = self.signatures()
        new = signatures.of_conversations(rows)
        members, versions = self._member_index(signatures, file)
        return find_near_duplicates([(row.conversation_id, new.get(row.conversation_id))
                                     for row in rows], members, versions)

    def near_duplicate_members(self, file_id: str, conversation_ids: Sequence[str]
                               ) -> dict[str, list[tuple[str, float]]]:
        """For each conversation (a member of the file or not), the members of training file
        `file_id` it is a near-duplicate of, with the estimated Jaccard similarity, the most
        similar first (itself left out): the clusters a split keeps on one side."""
        signatures = self.signatures()
        members, versions = self._member_index(signatures, self.db.get_file(file_id))
        others = [cid for cid in conversation_ids if cid not in versions]
        known = signatures.of_conversations(
            list(self.db.conversations_by_id(others).values())) if others else {}
        for cid in conversation_ids:
            own = members.signature(cid)
            if own is not None:
                known[cid] = own
        asked = [cid for cid in conversation_ids if cid in known]
        found: dict[str, list[tuple[str, float]]] = {cid: [] for cid in conversation_ids}
        for cid, hits in zip(asked, members.query([known[cid] for cid in asked]), strict=True):
            found[cid] = [(other, score) for other, score in hits if other != cid]
        return found

    def _check_near_duplicates(self, existing: TrainingFileRecord | None,
                               rows: Sequence[CatalogRow], label: str, settings: FileSettings,
                               total: int) -> dict[str, str]:
        """The near-duplicates of a selection that passed the other rules: warnings, or a
        rejection naming both conversations of each pair when the file blocks them."""
        found = self.near_duplicates(existing.id if existing else None, rows, file=existing)
        reasons = {cid: describe(found[cid], label) for cid in
                   (row.conversation_id for row in rows) if cid in found}
        if reasons and settings.near_duplicates == "block":
            raise RequestRejected(
                f"{len(reasons)} of {total} conversations cannot be added to {label}", reasons)
        return reasons

    # --- Submission ------------------------------------------------------------------------

    def submit(
        self,
        *,
        conversation_ids: Sequence[str],
        training_file: str | None = None,
        new_file_name: str | None = None,
        description: str | None = None,
        requested_by: str | None = None,
        request_id: str | None = None,
        settings: FileSettings | None = None,
    ) -> SelectionRequest:
        """Validate a selection and store it as a pending request (nothing is stored if invalid);
        the request returned carries the check's warnings."""
        file_id = None
        if training_file is not None:
            existing = self.db.find_file(training_file)
            if existing is None:
                raise NotFound(f"no training file named or with id {training_file!r}")
            file_id = existing.id
        request = SelectionRequest(
            id=request_id or str(uuid.uuid4()),
            training_file_id=file_id,
            new_file_name=new_file_name,
            new_file_description=description,
            conversation_ids=list(conversation_ids),
            requested_by=requested_by,
            new_file_settings=settings.model_dump() if settings is not None else None,
        )
        valid = self.validate(request)
        self.db.insert_request(request, utc_now())
        stored = self.db.get_request(request.id)
        assert stored is not None
        return stored.model_copy(update={"warnings": valid.warnings})

    def claim(self, request_id: str, holder: str = SENSOR_HOLDER) -> ValidSelection | None:
        """Move a pending request to `queued` exactly once, or reject it with reasons.

        Returns the valid selection when this call claimed it, None when it was not pending
        (another tick or process got there first) or was rejected.
        """
        request = self.db.get_request(request_id)
        if request is None or request.status != "pending":
            return None
        try:
            valid = self.validate(request)
        except RequestRejected as rejection:
            self.db.transition_request(request_id, from_statuses=["pending"], to="rejected",
                                       now=utc_now(), error=rejection.as_error())
            return None
        claimed = self.db.claim_request(request_id, valid.target_file_id, utc_now(), holder)
        return valid if claimed else None

    # --- Building --------------------------------------------------------------------------

    def start(self, request_id: str, run_id: str | None,
              attempt: int | None = None) -> VersionPlan:
        """Validate a claimed request again at run start and plan the version it builds.

        `attempt` is the claim the run was launched for: a run of an attempt the request has
        since left behind (it was retried) does nothing. A failed request may be started again
        (a re-execution from the Dagster UI) under its latest attempt.
        """
        request = self.db.get_request(request_id)
        if request is None:
            raise ProcessingFailed(f"selection request {request_id} does not exist")
        if request.status in ("succeeded", "rejected", "pending"):
            raise AttemptSuperseded(
                f"selection request {request_id} is {request.status}; this run has nothing "
                "to build")
        if (attempt is not None and attempt != request.attempts
                and request.status in ("queued", "running")):
            raise AttemptSuperseded(
                f"this run is attempt {attempt} of request {request_id}, which is now on "
                f"attempt {request.attempts}")
        try:
            valid = self.validate(request)
        except RequestRejected as rejection:
            self.db.transition_request(request_id, from_statuses=OPEN_STATUSES, to="rejected",
                                       now=utc_now(), error=rejection.as_error(),
                                       dagster_run_id=run_id)
            raise
        if not self.db.transition_request(
                request_id, from_statuses=("queued", "running", "failed"), to="running",
                now=utc_now(), dagster_run_id=run_id, target_file_id=valid.target_file_id,
                heartbeat_at=utc_now()):
            raise AttemptSuperseded(f"selection request {request_id} changed while starting")
        return self.plan(valid, run_id, request.attempts)

    def plan(self, valid: ValidSelection, run_id: str | None,
             attempt: int | None = None) -> VersionPlan:
        """The version a valid selection produces on top of the file's current version."""
        now = utc_now().replace(microsecond=0)
        request = valid.request
        file = valid.existing_file
        previous = None
        if file is not None and file.current_version is not None:
            previous = self.previous_version(file.id, file.current_version)
        version = 1 if previous is None else previous.version + 1
        new_file = None
        if file is None:
            assert valid.new_file_name is not None
            new_file = NewFile(id=valid.target_file_id, name=valid.new_file_name,
                               description=request.new_file_description,
                               created_by=request.requested_by, created_at=now,
                               near_duplicates=valid.settings.near_duplicates,
                               validation_fraction=valid.settings.validation_fraction)
        spec = BuildSpec(
            training_file_id=valid.target_file_id,
            file_name=file.name if file else new_file.name,  # type: ignore[union-attr]
            description=file.description if file else new_file.description,  # type: ignore[union-attr]
            file_created_at=file.created_at if file else now,
            version=version,
            published_at=now,
            reason="request",
            dagster_run_id=run_id,
            request_ids=[request.id],
            vertical=file.vertical if file else None,
            consultant_profile=file.consultant_profile if file else None,
            previous=previous,
            additions=[incoming(row) for row in valid.rows],
        )
        spec, placed = self._split(spec, valid.settings.validation_fraction)
        return VersionPlan(spec, expected_current_version=file.current_version if file else None,
                           new_file=new_file, request_ids=[request.id], attempt=attempt,
                           placed=placed)

    def plan_rematerialization(self, file_id: str, run_id: str | None) -> VersionPlan | None:
        """A new version that re-reads the sources changed since they were built into the file,
        or None when nothing changed."""
        file = self.db.get_file(file_id)
        if file is None or file.current_version is None:
            raise ProcessingFailed(f"training file {file_id} has no published version to rebuild")
        rebuilds = []
        skipped: dict[str, str] = {}
        for member, row in self.db.stale_members(file_id):
            reason = ineligibility_reason(ConversationFacts(
                row.conversation_id, row.enrichment_status, row.enriched_file_path))
            if reason is not None:
                # Keep the bytes already published rather than drop a conversation silently.
                skipped[member.conversation_id] = reason
                continue
            rebuilds.append(incoming(row))
        if not rebuilds:
            return None
        now = utc_now().replace(microsecond=0)
        spec = BuildSpec(
            training_file_id=file.id, file_name=file.name, description=file.description,
            file_created_at=file.created_at, version=file.current_version + 1,
            published_at=now, reason="rematerialize", dagster_run_id=run_id, request_ids=[],
            vertical=file.vertical, consultant_profile=file.consultant_profile,
            previous=self.previous_version(file.id, file.current_version), additions=[],
            rebuilds=rebuilds)
        spec, placed = self._split(spec, file.validation_fraction)
        return VersionPlan(spec, expected_current_version=file.current_version, new_file=None,
                           request_ids=[], skipped=skipped, placed=placed)

    def _split(self, spec: BuildSpec, fraction: float | None
               ) -> tuple[BuildSpec, dict[str, str]]:
        """The spec with the side of every conversation when the file holds out a validation
        share, and the sides given now to conversations already in the file (a share configured
        since they joined)."""
        if fraction is None:
            return spec, {}
        members = (list(self.db.iter_members(spec.training_file_id))
                   if spec.previous is not None else [])
        known = {m.conversation_id for m in members}
        conversations = [Placed(m.conversation_id,
                                (m.persona_key, m.emotional_arc_key, m.topic_key), m.split)
                         for m in members]
        new = [c for c in spec.additions if c.conversation_id not in known]
        conversations += [Placed(c.conversation_id,
                                 (c.persona_key, c.emotional_arc_key, c.topic_key), None)
                          for c in new]
        # A near-duplicate goes where the conversation it repeats is: a member's side first, and
        # within the request the side its earlier twin was given.
        matches = self.split_neighbours(spec.training_file_id if members else None,
                                        [c.conversation_id for c in new])
        member_sides = {m.conversation_id: m.split for m in members if m.split}
        forced = {cid: member_sides[hits[0]] for cid, hits in matches.items()
                  if hits and hits[0] in member_sides}
        follows = {cid: twins[0] for cid, hits in matches.items() if cid not in forced
                   for twins in [[other for other in hits if other not in known]] if twins}
        chosen = assign_sides(fraction, conversations, forced, follows)
        sides = {c.conversation_id: c.side or chosen[c.conversation_id] for c in conversations}
        placed = {cid: side for cid, side in chosen.items() if cid in known}
        return replace(spec, splits=sides), placed

    def split_neighbours(self, file_id: str | None, conversation_ids: Sequence[str]
                         ) -> dict[str, list[str]]:
        """For conversations joining a file (in request order), the conversations each one
        nearly repeats: members of the file, or conversations earlier in the list; the most
        similar first."""
        if not conversation_ids:
            return {}
        rows = self.db.conversations_by_id(conversation_ids)
        found = self.near_duplicates(file_id, [rows[cid] for cid in conversation_ids
                                               if cid in rows])
        return {cid: [m.other_id for m in matches] for cid, matches in found.items()}

    def stale_files(self) -> dict[str, int]:
        """Training files with changed sources, and how many of their conversations changed."""
        counts: dict[str, int] = {}
        for member, _row in self.db.stale_members():
            counts[member.training_file_id] = counts.get(member.training_file_id, 0) + 1
        return counts

    def previous_version(self, file_id: str, version: int) -> PreviousVersion:
        record = self.db.get_version(file_id, version)
        if record is None:
            raise ProcessingFailed(f"version {version} of training file {file_id} is not recorded")
        objects = {o.name: ManifestObject(key=o.key, sha256=o.sha256, size=o.size)
                   for o in self.db.version_objects(file_id, version) if o.size is not None}
        # training.json and training.jsonl as the version row records them (also for versions
        # published before objects were listed by name).
        objects["training.json"] = ManifestObject(
            key=record.json_key, sha256=record.json_sha256, size=record.json_size)
        objects["training.jsonl"] = ManifestObject(
            key=record.jsonl_key, sha256=record.jsonl_sha256, size=record.jsonl_size)
        return PreviousVersion(version=record.version, objects=objects,
                               body_start=record.json_body_start, body_end=record.json_body_end)

    def stage(self, plan: VersionPlan) -> StagedVersion | None:
        """Reserve the plan's version, write its objects and run the blocking checks.

        Only the build holding a file's lease writes at its next version's keys. A build that
        finds another live build on the file waits for it; one that finds the file moved on
        plans again on top of the new version (None: a rematerialization with nothing left to
        rebuild). If the checks fail, or anything goes wrong, the objects are removed and the
        lease is given up; on success the lease is kept for `publish`.
        """
        owner = uuid.uuid4().hex
        plan = self._reserve(plan, owner)
        if plan is None:
            return None
        file_id = plan.spec.training_file_id
        lifecycle = self.lifecycle
        lease = Heartbeat(
            lambda: self.db.renew_build(file_id, owner=owner, now=utc_now(),
                                        ttl=lifecycle.stale_after_seconds),
            lifecycle.heartbeat_seconds, name=f"build-lease-{file_id}")
        try:
            with lease:
                built = self.build(plan)
                from brightrun_pipeline.verification import verify_built_version

                staged = StagedVersion(plan, built, verify_built_version(self, built), owner)
        except BaseException:
            self.abandon(plan, owner)
            raise
        if not staged.passed:
            self.abandon(plan, owner)
        elif lease.lost:
            raise StaleVersion(f"training file {file_id}: another build took version "
                               f"{plan.spec.version} over while this one was building it")
        return staged

    def _reserve(self, plan: VersionPlan, owner: str) -> VersionPlan | None:
        """Take the build lease of the plan's version, waiting for a live build of the same
        file and planning again when the file moved on."""
        deadline = time.monotonic() + self.lifecycle.build_wait_seconds
        delay = 0.05
        while True:
            spec = plan.spec
            claim = self.db.acquire_build(
                spec.training_file_id, spec.version, owner=owner, now=utc_now(),
                ttl=self.lifecycle.stale_after_seconds, dagster_run_id=spec.dagster_run_id,
                on_acquired=functools.partial(self._discard_objects, spec.training_file_id,
                                              spec.version))
            if claim is BuildClaim.ACQUIRED:
                return plan
            if claim is BuildClaim.MOVED:
                replanned = self._replan(plan)
                if replanned is None:
                    return None
                plan = replanned
                continue
            if time.monotonic() >= deadline:
                raise AttemptLost(
                    f"training file {spec.training_file_id} was being built by another run for "
                    f"more than {self.lifecycle.build_wait_seconds:.0f} s")
            # Another build holds the file: wait for it (it beats its lease while alive).
            time.sleep(delay * (0.5 + random.random()))
            delay = min(delay * 2, 1.0)

    def _replan(self, plan: VersionPlan) -> VersionPlan | None:
        """The same work planned on top of the file's current version."""
        run_id = plan.spec.dagster_run_id
        if not plan.request_ids:
            return self.plan_rematerialization(plan.spec.training_file_id, run_id)
        request = self.db.get_request(plan.request_ids[0])
        if request is None:
            raise ProcessingFailed(f"selection request {plan.request_ids[0]} does not exist")
        return self.plan(self.validate(request), run_id, plan.attempt)

    def _discard_objects(self, file_id: str, version: int) -> None:
        """Remove what an unpublished build left at a version's keys (only ever called while
        holding that version's lease, so nothing published is touched)."""
        for name in OUTPUT_NAMES:
            self.store.delete(self.training_bucket, object_key(file_id, version, name))

    def abandon(self, plan: VersionPlan, owner: str) -> None:
        """Give up a build: remove its objects and its lease (best effort; a lease left behind
        expires, and the next build of that version removes the objects)."""
        spec = plan.spec
        # Best effort: the failure being handled is the one to report.
        with contextlib.suppress(Exception):
            self.db.release_build(
                spec.training_file_id, owner=owner,
                on_release=lambda: self._discard_objects(spec.training_file_id, spec.version))

    def build(self, plan: VersionPlan) -> BuiltVersion:
        """Write the three objects of the planned version (unpublished until `publish`); the
        caller holds the version's build lease."""
        spec = plan.spec
        # Writes of this version and reads of the previous one are retried (and counted) by this
        # store; source fetches by the builder's own fetches, on the store itself.
        outputs = RetryingStore(self.store, self.retry)
        built = build_version(
            spec,
            lambda: self.db.iter_members(spec.training_file_id),
            sources=self.store,
            source_bucket=self.source_bucket,
            outputs=outputs,
            output_bucket=self.training_bucket,
            concurrency=self.fetch_concurrency,
            retry=self.retry,
        )
        return replace(built, output_retries=outputs.retries.value)

    def publish(self, staged: StagedVersion) -> VersionRecord:
        """Make a staged version current in one transaction: it must still hold its build lease
        (and its request the same attempt); the file's version moves N → N+1."""
        plan, built = staged.plan, staged.built
        if not staged.passed:
            raise ChecksFailed(f"checks failed: {', '.join(staged.failed_checks())}")
        spec = plan.spec
        record = VersionRecord(
            training_file_id=spec.training_file_id,
            version=spec.version,
            reason=spec.reason,
            json_key=built.json.key, json_sha256=built.json.sha256, json_size=built.json.size,
            jsonl_key=built.jsonl.key, jsonl_sha256=built.jsonl.sha256,
            jsonl_size=built.jsonl.size,
            manifest_key=built.manifest.key, manifest_sha256=built.manifest.sha256,
            json_body_start=built.body_start, json_body_end=built.body_end,
            conversation_count=built.conversation_count,
            training_pair_count=built.training_pair_count,
            trainable_pair_count=built.trainable_pair_count,
            jsonl_line_count=built.trainable_pair_count,
            human_reviewed_count=built.human_reviewed_count,
            avg_quality_score=built.avg_quality_score,
            request_ids=list(plan.request_ids),
            dagster_run_id=spec.dagster_run_id,
            created_at=spec.published_at,
        )
        publication = Publication(
            version=record,
            expected_current_version=plan.expected_current_version,
            new_file=plan.new_file,
            vertical=built.vertical,
            consultant_profile=built.consultant_profile,
            added_members=built.added_members,
            rebuilt_members=built.rebuilt_members,
            published_at=spec.published_at,
            build_owner=staged.owner,
            request_attempt=plan.attempt,
            objects=[ObjectRecord(name, item.key, item.sha256, item.size)
                     for name, item in built.objects.items()],
            placed=plan.placed,
        )
        try:
            self.db.publish_version(publication, plan.request_ids)
        except BaseException:
            if self._published(record):
                # The commit went through; only its reply was lost with the connection.
                return record
            # Nothing was published: free the version's keys and lease now rather than when the
            # lease expires (if the commit did go through after all, the lease is gone and
            # this removes nothing).
            self.abandon(plan, staged.owner)
            raise
        return record

    def _published(self, record: VersionRecord) -> bool:
        """Whether exactly this version is published, read back after its publication failed."""
        try:
            stored = self.db.get_version(record.training_file_id, record.version)
        except Exception:  # noqa: BLE001 - the database is still out of reach: not known
            return False
        return stored is not None and stored.manifest_sha256 == record.manifest_sha256

    # --- Outcomes --------------------------------------------------------------------------

    def record_failure(self, request_ids: Sequence[str], error: BaseException,
                       run_id: str | None = None, attempt: int | None = None) -> None:
        """End a claimed request's attempt: rejected for broken rules, failed for permanent
        problems, and back to pending (a new attempt) for transient ones while attempts last."""
        if isinstance(error, AttemptSuperseded):
            return  # this run no longer speaks for the request
        if isinstance(error, RequestRejected):
            status, payload = "rejected", error.as_error()
        elif isinstance(error, ProcessingFailed):
            status, payload = "failed", error.as_error()
        elif isinstance(error, KeyboardInterrupt):
            status = "failed"
            payload = {"message": "stopped with Ctrl-C; `brightrun requests retry` runs it again",
                       "conversations": {}}
        else:
            status = "failed"
            payload = {"message": f"{type(error).__name__}: {error}", "conversations": {}}
        retry_below = self.lifecycle.request_attempts if is_retryable(error) else 0
        for request_id in request_ids:
            self.db.fail_attempt(request_id, attempt=attempt, status=status, error=payload,
                                 now=utc_now(), retry_below=retry_below, dagster_run_id=run_id)

    def record_success(self, request_id: str, run_id: str) -> None:
        """Note which run published a succeeded request (re-executions included)."""
        self.db.transition_request(request_id, from_statuses=["succeeded"], to="succeeded",
                                   now=utc_now(), dagster_run_id=run_id)

    def retry_request(self, request_id: str) -> SelectionRequest:
        """Put a failed request back to pending so the sensor claims (and runs) it again."""
        request = self.db.get_request(request_id)
        if request is None:
            raise NotFound(f"no selection request with id {request_id!r}")
        if not self.db.transition_request(request_id, from_statuses=["failed"], to="pending",
                                          now=utc_now()):
            raise Conflict(f"request {request_id} is {request.status}; only failed requests "
                           "can be retried")
        retried = self.db.get_request(request_id)
        assert retried is not None
        return retried

    @contextmanager
    def request_outcome(self, request_ids: Sequence[str], run_id: str | None,
                        attempt: int | None = None) -> Iterator[None]:
        """Record a failure of the enclosed step on its requests, then let it propagate."""
        try:
            yield
        except (Exception, KeyboardInterrupt) as error:
            self.record_failure(request_ids, error, run_id, attempt)
            raise

    def keep_alive(self, *, run_id: str | None, training_file_id: str | None = None,
                   request_id: str | None = None) -> Heartbeat:
        """A heartbeat showing that this process still works on a run and its request."""
        return Heartbeat(
            lambda: self.db.beat(now=utc_now(), run_id=run_id,
                                 training_file_id=training_file_id, request_id=request_id),
            self.lifecycle.heartbeat_seconds, name=f"heartbeat-{run_id or request_id}")

    def run_request(self, request_id: str, run_id: str | None = None,
                    attempt: int | None = None) -> VersionRecord:
        """Build, check and publish one claimed request without Dagster (tests, benchmarks):
        the same steps, leases and checks as a run of the training-file job."""
        heartbeat = self.keep_alive(run_id=run_id, request_id=request_id)
        with heartbeat:
            try:
                with self.request_outcome([request_id], run_id, attempt):
                    plan = self.start(request_id, run_id, attempt)
                    staged = self.stage(plan)
                    assert staged is not None  # a request always has something to add
                    return self.publish(staged)
            finally:
                heartbeat.close()  # no beat may land after the run's row is gone
                if run_id is not None:
                    with contextlib.suppress(Exception):
                        self.db.end_beats(run_id)
