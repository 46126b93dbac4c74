"""The version builder: version N+1 of a training file from version N plus new conversations.

A build has two steps. The intake fetches, validates and serializes the conversations that are new
or whose sources changed (only those: the previous version's conversations are never re-fetched),
spooling each one's training.json block and JSONL lines to disk, and works out the version's
membership and header figures in file order. Then every output registered in
`brightrun_pipeline.outputs` writes its object (carried over from the previous version on an
append) once the objects it is derived from are finished; outputs that do not depend on each other
are written at the same time. Everything is streamed and hashed while written; nothing is
published here.
"""

from __future__ import annotations

import fcntl
import io
import os
import shutil
import threading
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from contextlib import AbstractContextManager, ExitStack, contextmanager
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, BinaryIO

import orjson

from brightrun_pipeline.config import RetrySettings
from brightrun_pipeline.errors import ObjectExists, ProcessingFailed, RequestRejected, StaleVersion
from brightrun_pipeline.members import HeaderTotals, MemberRecord
from brightrun_pipeline.models import (
    FORMAT_SPEC,
    FORMAT_VERSION,
    JSONL_FIELDS,
    ConversationBlockMetadata,
    ManifestObject,
    Scaffolding,
    ScaffoldingDistribution,
    TrainingFileMetadata,
)
from brightrun_pipeline.outputs import EXPORTS, OUTPUTS, SPLITS, LineExport, Output
from brightrun_pipeline.rules import quality_tier
from brightrun_pipeline.sources import FetchedSource, ParsedSource, fetch_sources, parse_source
from brightrun_pipeline.storage import ObjectStore
from brightrun_pipeline.streams import (
    BLOCK_SEPARATOR,
    HashingWriter,
    SpoolFiles,
    array_item,
    copy_verified_prefix,
)

JSON_NAME, JSONL_NAME, MANIFEST_NAME = "training.json", "training.jsonl", "manifest.json"
BASE_NAMES = (JSON_NAME, JSONL_NAME, MANIFEST_NAME)


def object_key(training_file_id: str, version: int, name: str) -> str:
    """The storage key of one object of a version (contract §3)."""
    return f"{training_file_id}/v{version}/{name}"


def format_timestamp(moment: datetime) -> str:
    """A publication time as ISO-8601 with seconds and offset, e.g. 2025-12-01T09:30:00+00:00."""
    return moment.astimezone(UTC).isoformat(timespec="seconds")


def format_created(moment: datetime | None) -> str | None:
    """A conversation's creation time as the block shows it (microseconds, UTC offset)."""
    return None if moment is None else moment.astimezone(UTC).isoformat(timespec="microseconds")


@dataclass(frozen=True, slots=True)
class IncomingConversation:
    """Database facts about a conversation whose source is (re)read for this version."""

    conversation_id: str
    batch_id: str | None
    source_key: str
    quality_score: float | None
    persona_key: str | None
    emotional_arc_key: str | None
    topic_key: str | None
    created_at: datetime | None
    updated_at: datetime | None
    # Set when rebuilding a published version from its manifest; otherwise the version built.
    added_in_version: int | None = None



class NamedObjects:
    """A version's objects by name, with its two main ones at hand."""

    objects: dict[str, ManifestObject]

    @property
    def json(self) -> ManifestObject:
        return self.objects[JSON_NAME]

    @property
    def jsonl(self) -> ManifestObject:
        return self.objects[JSONL_NAME]


@dataclass(frozen=True)
class PreviousVersion(NamedObjects):
    """Where the objects of version N are (name → key, sha256, size), and where its
    conversation blocks lie in its training.json."""

    version: int
    objects: dict[str, ManifestObject]
    body_start: int
    body_end: int


@dataclass(frozen=True)
class BuildSpec:
    """What to build: the file, the version, and the conversations to add or rebuild."""

    training_file_id: str
    file_name: str
    description: str | None
    file_created_at: datetime
    version: int
    published_at: datetime
    reason: str
    dagster_run_id: str | None
    request_ids: list[str]
    vertical: str | None
    consultant_profile: dict[str, Any] | None
    previous: PreviousVersion | None
    additions: list[IncomingConversation]
    rebuilds: list[IncomingConversation] = field(default_factory=list)
    # The exports to write (names registered in brightrun_pipeline.outputs): every one for a
    # new version; those a published version had when it is reproduced.
    exports: tuple[str, ...] = tuple(e.name for e in EXPORTS)
    # The side of every conversation of the version when the file holds out a validation share
    # (each export is then also written as a train and a validation object); None: no split.
    splits: dict[str, str] | None = None



@dataclass(frozen=True)
class BuiltVersion(NamedObjects):
    """A version whose objects are written (not yet published)."""

    spec: BuildSpec
    # Every object of the version by name, in the order of the registry (manifest last).
    objects: dict[str, ManifestObject]
    body_start: int
    body_end: int
    conversation_count: int
    training_pair_count: int
    trainable_pair_count: int
    human_reviewed_count: int
    avg_quality_score: float | None
    vertical: str | None
    consultant_profile: dict[str, Any]
    added_members: list[MemberRecord]
    rebuilt_members: list[MemberRecord]
    # The objects that start with the previous version's object, byte for byte (an append).
    carried: frozenset[str] = frozenset()
    # Retries of transient storage errors: of the source fetches (counted here), and of the
    # writes of this version and reads of the previous one (counted by the store that did them).
    source_fetch_retries: int = 0
    output_retries: int = 0

    @property
    def manifest(self) -> ManifestObject:
        return self.objects[MANIFEST_NAME]

    @property
    def exports(self) -> dict[str, ManifestObject]:
        """The objects besides training.json, training.jsonl and the manifest."""
        return {name: item for name, item in self.objects.items() if name not in BASE_NAMES}

    @property
    def storage_retries(self) -> int:
        """Every retry of a storage call this build made."""
        return self.source_fetch_retries + self.output_retries


@dataclass(slots=True)
class Fresh:
    """A conversation read for this version: its facts, and where its training.json block and
    its JSONL lines are in the build's spools."""

    member: MemberRecord
    block_offset: int
    block_length: int
    lines_offset: int
    lines_length: int


@dataclass
class VersionBuild:
    """What the outputs of a version are written from.

    `fresh` holds the conversations read for this version (added, or rebuilt from changed
    sources), their blocks in the `blocks` spool (in reading order, separated by
    BLOCK_SEPARATOR) and their lines in the `lines` spool; `members` yields the previous version's
    conversations in file order. On an append (`appending`), the fresh conversations are exactly
    the additions, in order, after the previous version's.
    """

    spec: BuildSpec
    work: Path
    keys: dict[str, str]
    store: ObjectStore
    bucket: str
    durable: bool
    members: Callable[[], Iterable[MemberRecord]]
    fresh: dict[str, Fresh]
    blocks: SpoolFiles
    lines: SpoolFiles
    # Per export (by name): the rows of the fresh conversations' lines, in reading order; absent
    # when the version rebuilds conversations.
    rows: dict[str, SpoolFiles]
    profile: dict[str, Any]
    # The header of training.json, worked out from the membership before any output is written.
    metadata: TrainingFileMetadata = field(init=False)
    # The split side of every JSONL line in order (its index in SPLITS), when split.
    line_sides: bytes | None = None
    # How many lines the previous version's JSONL has (what an append carries over).
    previous_lines: int = 0
    # Objects finished so far, by name, and those carried over from the previous version.
    objects: dict[str, ManifestObject] = field(default_factory=dict)
    carried: set[str] = field(default_factory=set)
    # Where training.json's conversation blocks start and end (set by its output).
    body_start: int = 0
    body_end: int = 0

    @property
    def previous(self) -> PreviousVersion | None:
        return self.spec.previous

    @property
    def appending(self) -> bool:
        """Whether this version only adds conversations to a previous one."""
        return self.spec.previous is not None and not self.spec.rebuilds

    @property
    def rebuild_ids(self) -> set[str]:
        return {c.conversation_id for c in self.spec.rebuilds}

    def path(self, name: str) -> Path:
        """Where the object `name` is written before it is stored."""
        return self.work / name

    def open_previous(self, name: str) -> AbstractContextManager[BinaryIO]:
        """The previous version's object `name`, opened for streaming."""
        assert self.spec.previous is not None
        return self.store.open_read(self.bucket, self.spec.previous.objects[name].key)

    def copy_previous(self, name: str, out: HashingWriter) -> None:
        """Copy the previous version's object `name` to the start of `out`, checked against its
        recorded hash (the check costs no second pass: `out`'s running hash is the object's)."""
        previous = self.spec.previous
        assert previous is not None
        item = previous.objects[name]
        with self.open_previous(name) as raw:
            copy_verified_prefix(raw, out, item.sha256, item.size,
                                 f"{name} of version {previous.version}")

    def spooled_block(self, conversation_id: str) -> bytes:
        fresh = self.fresh[conversation_id]
        return self.blocks.read(fresh.block_offset, fresh.block_length)

    def spooled_lines(self, conversation_id: str) -> bytes:
        fresh = self.fresh[conversation_id]
        return self.lines.read(fresh.lines_offset, fresh.lines_length)

    def file_order(self) -> Iterator[MemberRecord]:
        """The version's conversations in file order, as they are recorded once published."""
        spec = self.spec
        splits = spec.splits
        rebuild_ids = self.rebuild_ids
        position = -1
        for member in self.members() if spec.previous is not None else ():
            position = member.position
            if member.conversation_id in rebuild_ids and member.conversation_id in self.fresh:
                member = _placed(self.fresh[member.conversation_id].member,
                                 tid=spec.training_file_id, position=member.position,
                                 split=splits[member.conversation_id] if splits
                                 else member.split)
            yield member
        for conversation in spec.additions:
            position += 1
            yield _placed(self.fresh[conversation.conversation_id].member,
                          tid=spec.training_file_id, position=position,
                          split=splits[conversation.conversation_id] if splits else None)


def block_and_lines(
    source: ParsedSource, incoming: IncomingConversation, added_in_version: int, version: int,
    exports: Sequence[LineExport] = (),
) -> tuple[bytes, bytes, MemberRecord, list[bytes]]:
    """Serialize one conversation: its JSON block, its JSONL lines, its membership facts, and the
    rows its lines give in each of `exports` (derived from the lines as built, which equal the
    lines as parsed back, so the JSONL is not parsed again for them)."""
    pairs: list[dict[str, Any]] = source.document["training_pairs"]
    first_meta = pairs[0]["conversation_metadata"]
    cid = incoming.conversation_id
    metadata = ConversationBlockMetadata(
        conversation_id=cid,
        batch_id=incoming.batch_id,
        source_file=incoming.source_key,
        source_sha256=source.sha256,
        created_date=format_created(incoming.created_at),
        total_turns=len(pairs),
        quality_score=incoming.quality_score,
        quality_tier=quality_tier(incoming.quality_score),
        added_in_version=added_in_version,
        scaffolding=Scaffolding(
            persona_key=incoming.persona_key,
            persona_name=first_meta.get("client_persona"),
            emotional_arc_key=incoming.emotional_arc_key,
            emotional_arc=first_meta.get("emotional_arc"),
            training_topic_key=incoming.topic_key,
            training_topic=first_meta.get("training_topic"),
        ),
    )
    block = array_item({"conversation_metadata": metadata.model_dump(mode="json"),
                        "training_pairs": pairs})
    lines = io.BytesIO()
    rows: list[list[bytes]] = [[] for _ in exports]
    trainable = 0
    reviewed = 0
    for pair in pairs:
        if pair["training_metadata"].get("human_reviewed") is True:
            reviewed += 1
        target = pair["target_response"]
        if not (isinstance(target, str) and target):
            continue
        trainable += 1
        line = {"id": f"{cid}_turn{pair['turn_number']}", "conversation_id": cid}
        for name in JSONL_FIELDS[2:]:
            line[name] = pair[name]
        lines.write(orjson.dumps(line))
        lines.write(b"\n")
        for index, export in enumerate(exports):
            rows[index].append(export.row(line))
    member = MemberRecord(
        training_file_id="",
        conversation_id=cid,
        position=-1,
        added_in_version=added_in_version,
        built_in_version=version,
        batch_id=incoming.batch_id,
        source_key=incoming.source_key,
        source_sha256=source.sha256,
        source_updated_at=incoming.updated_at,
        pair_count=len(pairs),
        trainable_pair_count=trainable,
        human_reviewed_count=reviewed,
        quality_score=incoming.quality_score,
        persona_key=incoming.persona_key,
        emotional_arc_key=incoming.emotional_arc_key,
        topic_key=incoming.topic_key,
    )
    return block, lines.getvalue(), member, [b"".join(part) for part in rows]



@dataclass(frozen=True)
class Serialized:
    """One source, read and serialized: its block, its JSONL lines and its facts."""

    conversation_id: str
    block: bytes
    lines: bytes
    member: MemberRecord
    consultant_profile: dict[str, Any]
    vertical: str
    rows: list[bytes]


def serialize_source(fetched: FetchedSource, conversation: IncomingConversation, added_in: int,
                     version: int, exports: Sequence[LineExport] = ()) -> Serialized:
    """Validate one fetched source and serialize it."""
    source = parse_source(fetched)
    block, lines, member, rows = block_and_lines(source, conversation, added_in, version, exports)
    return Serialized(conversation.conversation_id, block, lines, member,
                      source.document["consultant_profile"],
                      source.document["dataset_metadata"]["vertical"], rows)


def build_version(
    spec: BuildSpec,
    members: Callable[[], Iterable[MemberRecord]],
    *,
    sources: ObjectStore,
    source_bucket: str,
    outputs: ObjectStore,
    output_bucket: str,
    concurrency: int,
    retry: RetrySettings,
) -> BuiltVersion:
    """Build and write every object of `spec.version` (the outputs `spec` calls for).

    The caller holds the version's build lease: it alone writes at the version's keys, and it
    cleared them when it took the lease. Objects are written once; finding one already there
    with other bytes means another writer got in, and this build is stale.

    `members` yields the conversations already in the file, in file order (the database's view of
    version N); it is called from the outputs' threads too, so it must open its own connection
    (a pooled engine does; an in-memory SQLite database would not). Nothing is published here:
    the objects are written, the caller checks and commits.
    """
    tid = spec.training_file_id
    present = version_outputs(spec)
    keys = {output.name: object_key(tid, spec.version, output.name) for output in present}
    scratch = outputs.scratch_dir(output_bucket)
    sweep_dead_builds(scratch)
    work = scratch / f"build-{uuid.uuid4().hex}"
    work.mkdir(parents=True)
    try:
        with ExitStack() as stack:
            stack.enter_context(_held(work / ".alive"))
            built = _build(spec, members, present, keys, work, stack, sources=sources,
                           source_bucket=source_bucket, outputs=outputs,
                           output_bucket=output_bucket, concurrency=concurrency, retry=retry)
        for output in present:
            try:
                outputs.put_file(output_bucket, keys[output.name], work / output.name)
            except ObjectExists as exc:
                raise StaleVersion(
                    f"version {spec.version} of training file {tid}: {output.name} was written "
                    "by another build; this build is stale") from exc
        return built
    finally:
        shutil.rmtree(work, ignore_errors=True)


def version_outputs(spec: BuildSpec) -> tuple[Output, ...]:
    """The registered outputs a version built from `spec` has, in registry order."""
    return tuple(output for output in OUTPUTS if output.present(spec))


@contextmanager
def _held(path: Path) -> Iterator[None]:
    """Hold an exclusive lock on `path` while building: the kernel releases it when the process
    dies, however it dies, which is how a sweep tells a dead build's work directory."""
    # Locked under another name first: a sweep must never find the file unlocked.
    pending = path.with_name(path.name + ".new")
    fd = os.open(pending, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        os.rename(pending, path)
        yield
    finally:
        os.close(fd)


def sweep_dead_builds(scratch: Path) -> int:
    """Remove the work directories of builds whose process died (SIGKILL leaves them behind);
    a live build holds its directory's lock. Returns how many were removed."""
    removed = 0
    for work in scratch.glob("build-*"):
        try:
            fd = os.open(work / ".alive", os.O_WRONLY)
        except FileNotFoundError:
            continue  # just created, its lock not taken yet: a live build
        except OSError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            continue
        finally:
            os.close(fd)
        shutil.rmtree(work, ignore_errors=True)
        removed += 1
    return removed


def _build(
    spec: BuildSpec,
    members: Callable[[], Iterable[MemberRecord]],
    present: tuple[Output, ...],
    keys: dict[str, str],
    work: Path,
    stack: ExitStack,
    *,
    sources: ObjectStore,
    source_bucket: str,
    outputs: ObjectStore,
    output_bucket: str,
    concurrency: int,
    retry: RetrySettings,
) -> BuiltVersion:
    intake = _read_conversations(spec, members, work, stack, sources=sources,
                                 source_bucket=source_bucket, concurrency=concurrency,
                                 retry=retry)
    # Membership and header figures, in file order.
    totals = HeaderTotals()
    added_members: list[MemberRecord] = []
    rebuilt_members: list[MemberRecord] = []
    build = VersionBuild(spec=spec, work=work, keys=keys, store=outputs, bucket=output_bucket,
                         durable=outputs.syncs_files, members=members, fresh=intake.fresh,
                         blocks=intake.blocks, lines=intake.lines, rows=intake.rows,
                         profile=intake.profile)
    addition_ids = {c.conversation_id for c in spec.additions}
    sides = bytearray() if spec.splits is not None else None
    for member in build.file_order():
        totals.add(member)
        fresh = intake.fresh.get(member.conversation_id)
        if fresh is not None:
            fresh.member = member  # placed: one record per conversation read, not two
        if member.conversation_id in addition_ids:
            added_members.append(member)
        else:
            build.previous_lines += member.trainable_pair_count
            if member.conversation_id in intake.fresh:
                rebuilt_members.append(member)
        if sides is not None:
            side = SPLITS.index(spec.splits[member.conversation_id])  # type: ignore[index]
            sides += bytes((side,)) * member.trainable_pair_count
    build.line_sides = None if sides is None else bytes(sides)
    build.metadata = TrainingFileMetadata(
        training_file_id=spec.training_file_id,
        file_name=spec.file_name,
        description=spec.description,
        version=FORMAT_VERSION,
        file_version=spec.version,
        format_spec=FORMAT_SPEC,
        vertical=intake.vertical,
        created_date=spec.file_created_at.astimezone(UTC).date().isoformat(),
        last_updated=format_timestamp(spec.published_at),
        total_conversations=totals.conversations,
        total_training_pairs=totals.pairs,
        trainable_pairs=totals.trainable,
        quality_summary=totals.quality_summary(),
        scaffolding_distribution=ScaffoldingDistribution(
            personas=totals.personas, emotional_arcs=totals.arcs, training_topics=totals.topics),
    )
    _write_outputs(build, present, stack)
    return BuiltVersion(
        spec=spec,
        objects={output.name: build.objects[output.name] for output in present},
        body_start=build.body_start,
        body_end=build.body_end,
        conversation_count=totals.conversations,
        training_pair_count=totals.pairs,
        trainable_pair_count=totals.trainable,
        human_reviewed_count=totals.human_reviewed,
        avg_quality_score=build.metadata.quality_summary.avg_quality_score,
        vertical=intake.vertical,
        consultant_profile=intake.profile,
        added_members=added_members,
        rebuilt_members=rebuilt_members,
        carried=frozenset(build.carried),
        source_fetch_retries=intake.fetch_retries,
    )


def _write_outputs(build: VersionBuild, present: tuple[Output, ...], stack: ExitStack) -> None:
    """Write every output as soon as the objects it is derived from are finished, two at a time
    (hashing and I/O release the GIL). A failure stops new outputs from starting; the running
    ones are waited for, so that no thread outlives the build, and the first failure is raised."""
    names = tuple(output.name for output in present)
    pending = list(present)
    running: dict[Future[ManifestObject], Output] = {}
    failure: BaseException | None = None
    pool = stack.enter_context(ThreadPoolExecutor(max_workers=2,
                                                  thread_name_prefix="brightrun-output"))
    lock = threading.Lock()
    while pending or running:
        if failure is None:
            ready = [o for o in pending if set(o.inputs(names)) <= build.objects.keys()]
            pending = [o for o in pending if o not in ready]
            for output in ready:
                running[pool.submit(_write_output, build, output, stack, lock)] = output
            if not running:
                raise AssertionError(f"outputs wait on each other: {[o.name for o in pending]}")
        elif not running:
            break
        done, _ = wait(running, return_when=FIRST_COMPLETED)
        for future in done:
            output = running.pop(future)
            if future.exception() is not None:
                failure = failure or future.exception()
            else:
                build.objects[output.name] = future.result()
    if failure is not None:
        raise failure


def _write_output(build: VersionBuild, output: Output, stack: ExitStack,
                  lock: threading.Lock) -> ManifestObject:
    """Write one output to its file in the work directory. Its fsync (a durable store's) is left
    running on the writer's helper thread: the file is closed, and so synced, when the build
    ends, before any object is stored."""
    previous = build.previous
    with lock:
        raw = stack.enter_context(open(build.path(output.name), "wb"))  # noqa: SIM115
        out = stack.enter_context(HashingWriter(raw, durable=build.durable))
    if build.appending and previous is not None and output.can_carry(previous):
        output.carry(build, out)
        with lock:
            build.carried.add(output.name)
    else:
        output.write(build, out)
    result = out.result(build.keys[output.name])
    out.sync()
    return result


@dataclass
class _Intake:
    """The conversations read for a version: spooled, with the file's consultant and vertical."""

    fresh: dict[str, Fresh]
    blocks: SpoolFiles
    lines: SpoolFiles
    rows: dict[str, SpoolFiles]
    profile: dict[str, Any]
    vertical: str | None
    fetch_retries: int


def _read_conversations(
    spec: BuildSpec,
    members: Callable[[], Iterable[MemberRecord]],
    work: Path,
    stack: ExitStack,
    *,
    sources: ObjectStore,
    source_bucket: str,
    concurrency: int,
    retry: RetrySettings,
) -> _Intake:
    """Fetch, validate and serialize the new and rebuilt conversations (in that order: rebuilds,
    then additions), spooling each one's block and lines. A conversation whose consultant is not
    the file's rejects the request (or fails a rebuild)."""
    block_files = SpoolFiles(work, name="blocks")
    stack.callback(block_files.close)
    blocks = stack.enter_context(HashingWriter(block_files, hashed=False, in_flight=1))
    line_files = SpoolFiles(work, name="lines")
    stack.callback(line_files.close)
    lines = stack.enter_context(HashingWriter(line_files, hashed=False, in_flight=1))
    rebuild_ids = {c.conversation_id for c in spec.rebuilds}
    # The rows of the new lines in each export, spooled in reading order: what a first version or
    # an append drains behind (a rebuild derives its exports from the finished JSONL instead).
    # Spool writers keep one chunk in flight: a page-cache write is quick, memory is not free.
    exports = [] if rebuild_ids else [export for export in EXPORTS if export.name in spec.exports]
    row_files = {export.name: SpoolFiles(work, name=f"rows-{index}")
                 for index, export in enumerate(exports)}
    row_writers = []
    for files in row_files.values():
        stack.callback(files.close)
        row_writers.append(stack.enter_context(HashingWriter(files, hashed=False, in_flight=1)))
    incoming = {c.conversation_id: c for c in [*spec.rebuilds, *spec.additions]}
    wanted = [(c.conversation_id, c.source_key) for c in incoming.values()]
    previous_members = {}
    if rebuild_ids:
        previous_members = {m.conversation_id: m for m in members()
                            if m.conversation_id in rebuild_ids}

    def added_in_of(conversation: IncomingConversation) -> int:
        if conversation.conversation_id in rebuild_ids:
            return previous_members[conversation.conversation_id].added_in_version
        return conversation.added_in_version or spec.version

    profile, vertical = spec.consultant_profile, spec.vertical
    fresh: dict[str, Fresh] = {}
    ineligible: dict[str, str] = {}
    fetch_retries = 0
    for fetched in fetch_sources(sources, source_bucket, wanted, concurrency=concurrency,
                                 retry=retry):
        fetch_retries += fetched.attempts - 1
        conversation = incoming[fetched.conversation_id]
        item = serialize_source(fetched, conversation, added_in_of(conversation), spec.version,
                                exports)
        if profile is None:
            profile, vertical = item.consultant_profile, item.vertical
        elif item.consultant_profile != profile:
            ineligible[item.conversation_id] = (
                f"its consultant ({item.consultant_profile.get('name')!r}) differs from the "
                f"training file's ({profile.get('name')!r})")
            continue
        if fresh:
            blocks.write(BLOCK_SEPARATOR)
        block_offset, lines_offset = blocks.size, lines.size
        blocks.write(item.block)
        lines.write(item.lines)
        for writer, rows in zip(row_writers, item.rows, strict=True):
            writer.write(rows)
        fresh[item.conversation_id] = Fresh(item.member, block_offset, len(item.block),
                                            lines_offset, len(item.lines))
    if ineligible:
        if rebuild_ids & ineligible.keys():
            raise ProcessingFailed("re-enriched sources changed consultant", ineligible)
        raise RequestRejected(
            f"{len(ineligible)} conversation(s) cannot be added to {spec.file_name!r}", ineligible)
    assert profile is not None
    for writer in (blocks, lines, *row_writers):
        writer.flush()
    return _Intake(fresh, block_files, line_files, row_files, profile, vertical, fetch_retries)


def _placed(member: MemberRecord, *, tid: str, position: int, split: str | None
            ) -> MemberRecord:
    return replace(member, training_file_id=tid, position=position, split=split)


