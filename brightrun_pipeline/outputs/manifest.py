"""`manifest.json`: the version's lineage: who and what built it, every other object of the
version with its key, sha256 and size (in registry order), and each conversation in file order
with the source bytes it was built from (and its split side, when the file is split).

Written last, from the finished objects; never carried over (its header changes every version).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import orjson

from brightrun_pipeline.outputs import consistency
from brightrun_pipeline.outputs.base import Check, Output
from brightrun_pipeline.streams import BLOCK_SEPARATOR, BODY_CLOSE, array_item

if TYPE_CHECKING:
    from brightrun_pipeline.builder import VersionBuild
    from brightrun_pipeline.streams import HashingWriter


class Manifest(Output):
    name = "manifest.json"
    format = "manifest"
    title = "Manifest (lineage and hashes)"
    media_type = "application/json"
    checks = (
        Check("manifest_matches_objects", "The manifest's hashes and sizes are the objects'.",
              "json", consistency.outcome("manifest_matches_objects")),
    )

    def inputs(self, present: tuple[str, ...]) -> tuple[str, ...]:
        return tuple(name for name in present if name != self.name)

    def write(self, build: VersionBuild, out: HashingWriter) -> None:
        from brightrun_pipeline.builder import format_timestamp

        spec = build.spec
        head = orjson.dumps({
            "training_file_id": spec.training_file_id,
            "file_name": spec.file_name,
            "version": spec.version,
            "created_at": format_timestamp(spec.published_at),
            "dagster_run_id": spec.dagster_run_id,
            "request_ids": spec.request_ids,
            "reason": spec.reason,
            "files": {name: build.objects[name].model_dump()
                      for name in build.keys if name != self.name},
        }, option=orjson.OPT_INDENT_2)
        out.write(head[:-2] + b',\n  "conversations": [\n')
        for index, member in enumerate(build.file_order()):
            # Field order of ManifestConversation; a plain dict keeps this per-member step cheap.
            entry = {"conversation_id": member.conversation_id, "batch_id": member.batch_id,
                     "source_key": member.source_key, "source_sha256": member.source_sha256,
                     "pair_count": member.pair_count,
                     "added_in_version": member.added_in_version}
            if spec.splits is not None:
                entry["split"] = spec.splits[member.conversation_id]
            if index:
                out.write(BLOCK_SEPARATOR)
            out.write(array_item(entry))
        out.write(BODY_CLOSE)


OUTPUT = Manifest()
