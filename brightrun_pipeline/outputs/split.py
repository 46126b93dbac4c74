"""The train and validation parts of an export, when the file holds out a validation share.

Each part holds, in order, the export's rows whose conversation is on its side (the side of every
conversation is in `BuildSpec.splits`; brightrun_pipeline.splits assigns them). One blocking check
covers every part: `split_is_leak_free`.
"""

from __future__ import annotations

from contextlib import ExitStack
from typing import TYPE_CHECKING

import orjson

from brightrun_pipeline.errors import ProcessingFailed
from brightrun_pipeline.outputs.base import Check, CheckOutcome, LineExport, Output
from brightrun_pipeline.streams import HashingReader, iter_lines

if TYPE_CHECKING:
    from collections.abc import Iterator

    from brightrun_pipeline.builder import BuildSpec, PreviousVersion, VersionBuild
    from brightrun_pipeline.streams import HashingWriter
    from brightrun_pipeline.verification import CheckContext

SPLITS = ("train", "validation")
JSONL = "training.jsonl"


def split_name(export: LineExport, side: str) -> str:
    """The object holding one side of an export: "training.chat.jsonl" →
    "training.chat.train.jsonl"."""
    return export.name.removesuffix(".jsonl") + f".{side}.jsonl"


def _check_leak_free(context: CheckContext) -> CheckOutcome:
    """The train/validation parts of every export hold exactly the rows of their side's
    conversations, in order (so no conversation is on both sides); no conversation changed side
    since it was placed; no near-duplicate of a new conversation is on the other side."""
    built, pipeline = context.built, context.pipeline
    splits = built.spec.splits
    if splits is None:
        return CheckOutcome(True, "no validation share configured: nothing is split")
    problems: list[str] = []
    moved = [m.conversation_id for m in pipeline.db.iter_members(built.spec.training_file_id)
             if m.split is not None and splits.get(m.conversation_id) != m.split]
    if moved:
        problems.append(f"{len(moved)} conversation(s) changed side, e.g. {moved[0]}")
    # Clusters of near-duplicates stay on one side (those of earlier versions were checked then).
    spec = built.spec
    neighbours = pipeline.split_neighbours(
        spec.training_file_id if spec.previous is not None else None,
        [m.conversation_id for m in built.added_members])
    for cid, others in neighbours.items():
        across = [other for other in others if splits.get(other) not in (None, splits.get(cid))]
        if across:
            problems.append(f"{cid} is on the {splits.get(cid)} side, its near-duplicate "
                            f"{across[0]} on the other")
    store, bucket = context.store, context.bucket
    for export in {o.export: None for o in context.outputs if o.split is not None}:
        assert export is not None
        with ExitStack() as stack:
            def opened(name: str) -> Iterator[bytes]:
                raw = stack.enter_context(store.open_read(bucket, built.objects[name].key))
                return iter_lines(HashingReader(raw))

            rows, lines = opened(export.name), opened(JSONL)
            parts = {side: opened(split_name(export, side)) for side in SPLITS}
            for number, (row, line) in enumerate(zip(rows, lines, strict=False), start=1):
                side = splits.get(orjson.loads(line).get("conversation_id"))
                if side not in parts:
                    problems.append(f"{export.name} row {number}: its conversation has no side")
                    break
                if next(parts[side], None) != row:
                    problems.append(f"{split_name(export, side)} differs from the {side} rows "
                                    f"of {export.name} at row {number}")
                    break
            for side, rest in parts.items():
                if next(rest, None) is not None:
                    problems.append(f"{split_name(export, side)} has rows of no {side} "
                                    "conversation")
    return CheckOutcome(not problems, "; ".join(problems[:5]) or "ok")


LEAK_FREE = Check("split_is_leak_free", "Each export's train and validation parts hold exactly "
                  "their side's conversations; no conversation changed side.", "jsonl",
                  _check_leak_free)


class SplitPart(Output):
    """One side of an export."""

    media_type = "application/x-ndjson"
    checks = (LEAK_FREE,)

    def __init__(self, export: LineExport, side: str) -> None:
        self.export, self.split = export, side
        self.name = split_name(export, side)
        self.format = export.format
        self.title = f"{export.title}, {side} split"

    def present(self, spec: BuildSpec) -> bool:
        return spec.splits is not None and self.export.name in spec.exports

    def inputs(self, present: tuple[str, ...]) -> tuple[str, ...]:
        return (self.export.name,)

    def write(self, build: VersionBuild, out: HashingWriter) -> None:
        self._rows_of_side(build, out, 0, 0)

    def can_carry(self, previous: PreviousVersion) -> bool:
        return self.name in previous.objects and self.export.name in previous.objects

    def carry(self, build: VersionBuild, out: HashingWriter) -> None:
        """The previous version's part (checked against its hash), then this side's rows of the
        lines this version added."""
        previous = build.previous
        assert previous is not None
        build.copy_previous(self.name, out)
        self._rows_of_side(build, out, previous.objects[self.export.name].size,
                           build.previous_lines)

    def _rows_of_side(self, build: VersionBuild, out: HashingWriter, rows_from: int,
                      first_line: int) -> None:
        """Copy the export's rows (from byte `rows_from`, which is row `first_line`) whose line
        is on this side; the side of every line was worked out from the membership."""
        sides = build.line_sides
        assert sides is not None
        mine = SPLITS.index(self.split)
        with open(build.path(self.export.name), "rb") as rows:
            rows.seek(rows_from)
            count = 0
            for index, row in enumerate(rows, start=first_line):
                count += 1
                if index < len(sides) and sides[index] == mine:
                    out.write(row)
        if first_line + count != len(sides):
            raise ProcessingFailed(f"{self.export.name} has {first_line + count} rows for "
                                   f"{len(sides)} trainable pairs")
