"""How an export derived from the JSONL line by line (a `LineExport`) is written, carried over and
checked. An export module only declares its rows and its rules; this makes it an output."""

from __future__ import annotations

from typing import TYPE_CHECKING

import orjson

from brightrun_pipeline.outputs.base import Check, CheckOutcome, LineExport, Output
from brightrun_pipeline.streams import HashingReader, iter_lines, skip

if TYPE_CHECKING:
    from brightrun_pipeline.builder import BuildSpec, PreviousVersion, VersionBuild
    from brightrun_pipeline.streams import HashingWriter
    from brightrun_pipeline.verification import CheckContext

JSONL = "training.jsonl"


class ExportOutput(Output):
    """The whole export: one row per JSONL line, in the JSONL's order."""

    media_type = "application/x-ndjson"

    def __init__(self, export: LineExport) -> None:
        self.export = export
        self.name, self.format, self.title = export.name, export.format, export.title
        self.checks = (Check(export.check_name, export.check_description, "jsonl",
                             self.check),)

    def present(self, spec: BuildSpec) -> bool:
        return self.name in spec.exports

    def inputs(self, present: tuple[str, ...]) -> tuple[str, ...]:
        # Also when its rows were spooled: derived from the JSONL, it is written after it.
        return (JSONL,)

    def write(self, build: VersionBuild, out: HashingWriter) -> None:
        """A first version drains the rows its conversations gave as they were read; a version
        built on a previous one derives every row from the finished JSONL."""
        spooled = build.rows.get(self.name)
        if build.previous is None and spooled is not None:
            spooled.drain(out)
            return
        self._derive(build, out, 0)

    def can_carry(self, previous: PreviousVersion) -> bool:
        return self.name in previous.objects

    def carry(self, build: VersionBuild, out: HashingWriter) -> None:
        """The previous version's export (checked against its hash), then the rows of the lines
        this version added."""
        previous = build.previous
        assert previous is not None
        build.copy_previous(self.name, out)
        spooled = build.rows.get(self.name)
        if spooled is not None:
            spooled.drain(out)
        else:
            # The new lines follow the previous JSONL's bytes, byte for byte.
            self._derive(build, out, previous.jsonl.size)

    def _derive(self, build: VersionBuild, out: HashingWriter, start: int) -> None:
        """The rows of the JSONL's lines from byte `start` on."""
        with open(build.path(JSONL), "rb") as lines:
            lines.seek(start)
            for line in lines:
                out.write(self.export.row(orjson.loads(line)))

    def check(self, context: CheckContext) -> CheckOutcome:
        """One row per JSONL line, each sound for the line it comes from (the export's own
        rules), and the object is the one that was built. On an append the rows copied from the
        previous version are compared with its export's hash, not parsed again."""
        built = context.built
        if self.name not in built.objects:
            return CheckOutcome(True, f"this version has no {self.name}")
        store, bucket = context.store, context.bucket
        built_object, previous = built.objects[self.name], built.spec.previous
        carried = (previous.objects[self.name]
                   if self.name in built.carried and previous is not None else None)
        problems: list[str] = []
        with store.open_read(bucket, built_object.key) as rows_raw, \
                store.open_read(bucket, built.jsonl.key) as lines_raw:
            rows, lines = HashingReader(rows_raw), HashingReader(lines_raw)
            if carried is not None:
                assert previous is not None
                skip(rows, carried.size)
                skip(lines, previous.jsonl.size)
                if rows.hash.copy().hexdigest() != carried.sha256:
                    problems.append(f"the rows copied from version {previous.version} differ "
                                    "from its export")
            rows_seen = lines_seen = 0
            row_iter, line_iter = iter_lines(rows), iter_lines(lines)
            number = 0
            while True:
                row, line = next(row_iter, None), next(line_iter, None)
                if row is None and line is None:
                    break
                number += 1
                rows_seen += row is not None
                lines_seen += line is not None
                if row is None or line is None:
                    continue
                try:
                    parsed, pair = orjson.loads(row), orjson.loads(line)
                except orjson.JSONDecodeError:
                    problems.append(f"new row {number} or its JSONL line is not JSON")
                    continue
                problems += [f"new row {number}: {p}"
                             for p in self.export.problems(parsed, pair)]
            if rows_seen != lines_seen:
                # Named first: one missing row puts every later row against the wrong line.
                problems.insert(0, f"{'fewer' if rows_seen < lines_seen else 'more'} rows than "
                                   f"JSONL lines ({rows_seen} new rows, {lines_seen} new lines)")
            skip(rows, 1 << 62)
            if (rows.hash.hexdigest(), rows.size) != (built_object.sha256, built_object.size):
                problems.append(f"{self.name} is not the object that was built")
        return CheckOutcome(not problems, "; ".join(problems[:5]) or "ok")
