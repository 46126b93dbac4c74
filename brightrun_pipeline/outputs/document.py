"""`training.json`: the full document (brightrun-lora-v4): header, consultant profile, and one
block per conversation in file order.

Written from the version's conversations: the previous version's blocks are copied as bytes
(never re-fetched or re-parsed) except those rebuilt from changed sources, then the added ones.
On an append the previous body is copied whole after the new header. Checked, together with the
JSONL, by one streamed pass (`consistency`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import orjson

from brightrun_pipeline.models import TrainingFileMetadata
from brightrun_pipeline.outputs import consistency
from brightrun_pipeline.outputs.base import Check, Output
from brightrun_pipeline.streams import (
    BLOCK_SEPARATOR,
    BODY_CLOSE,
    BODY_OPEN,
    VerifyingReader,
    iter_blocks,
)

if TYPE_CHECKING:
    from brightrun_pipeline.builder import PreviousVersion, VersionBuild
    from brightrun_pipeline.streams import HashingWriter


def document_prefix(metadata: TrainingFileMetadata, profile: dict[str, Any]) -> bytes:
    """Everything before the first conversation block."""
    head = orjson.dumps(
        {"training_file_metadata": metadata.model_dump(mode="json"), "consultant_profile": profile},
        option=orjson.OPT_INDENT_2,
    )
    assert head.endswith(b"\n}")
    return head[:-2] + BODY_OPEN


class Document(Output):
    name = "training.json"
    format = "json"
    title = "Full JSON (brightrun-lora-v4)"
    media_type = "application/json"
    checks = (
        Check("matches_v4_format", "Every block and the header validate against the v4 model.",
              "json", consistency.outcome("matches_v4_format")),
        Check("unique_conversations", "Every conversation ID appears once.", "json",
              consistency.outcome("unique_conversations")),
        Check("header_matches_membership", "Totals, quality summary and scaffolding distribution"
              " equal what the membership gives.", "json",
              consistency.outcome("header_matches_membership")),
    )

    def write(self, build: VersionBuild, out: HashingWriter) -> None:
        """Header, then every block in file order: the previous version's as they were, except
        those rebuilt (from the spool), then the additions (from the spool)."""
        out.write(document_prefix(build.metadata, build.profile))
        build.body_start = out.size
        previous, rebuild_ids = build.previous, build.rebuild_ids
        if previous is None:
            # A first version: every block is in the spool, in file order.
            build.blocks.drain(out)
            build.body_end = out.size
            out.write(BODY_CLOSE)
            return
        wrote_block = False
        with build.open_previous(self.name) as raw:
            reader = VerifyingReader(raw, expected_sha256=previous.json.sha256,
                                     expected_size=previous.json.size,
                                     label=f"training.json of version {previous.version}")
            reader.skip(previous.body_start)
            for cid, block in iter_blocks(reader, previous.body_end - previous.body_start):
                if wrote_block:
                    out.write(BLOCK_SEPARATOR)
                out.write(build.spooled_block(cid) if cid in rebuild_ids and cid in build.fresh
                          else block)
                wrote_block = True
            reader.finish()
        for conversation in build.spec.additions:
            if wrote_block:
                out.write(BLOCK_SEPARATOR)
            out.write(build.spooled_block(conversation.conversation_id))
            wrote_block = True
        build.body_end = out.size
        out.write(BODY_CLOSE)

    def can_carry(self, previous: PreviousVersion) -> bool:
        return True

    def carry(self, build: VersionBuild, out: HashingWriter) -> None:
        """The new header, the previous body copied whole (checked against its hash), then the
        added blocks straight from the spool (which holds them in order, separated)."""
        previous = build.previous
        assert previous is not None
        out.write(document_prefix(build.metadata, build.profile))
        build.body_start = out.size
        with build.open_previous(self.name) as raw:
            reader = VerifyingReader(raw, expected_sha256=previous.json.sha256,
                                     expected_size=previous.json.size,
                                     label=f"training.json of version {previous.version}")
            reader.skip(previous.body_start)
            reader.copy_to(out, previous.body_end - previous.body_start)
            reader.finish()
        if build.fresh:
            out.write(BLOCK_SEPARATOR)
            build.blocks.drain(out)
        build.body_end = out.size
        out.write(BODY_CLOSE)


OUTPUT = Document()
