"""`training.jsonl`: one line per trainable pair, in the order of training.json.

Written from the version's conversations: the previous version's lines, grouped by conversation,
are copied as bytes except those of rebuilt conversations, then the added ones. On an append the
previous JSONL is copied whole. Checked, together with training.json, by one streamed pass.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from brightrun_pipeline.errors import ProcessingFailed
from brightrun_pipeline.outputs import consistency
from brightrun_pipeline.outputs.base import Check, Output
from brightrun_pipeline.streams import VerifyingReader, iter_line_groups

if TYPE_CHECKING:
    from brightrun_pipeline.builder import PreviousVersion, VersionBuild
    from brightrun_pipeline.streams import HashingWriter


class Lines(Output):
    name = "training.jsonl"
    format = "jsonl"
    title = "JSONL (one line per trainable pair)"
    media_type = "application/x-ndjson"
    checks = (
        Check("line_count_matches", "JSONL line count equals trainable_pairs.", "jsonl",
              consistency.outcome("line_count_matches")),
        Check("lines_equal_pairs", "Every JSONL line equals its pair in the JSON, in order.",
              "jsonl", consistency.outcome("lines_equal_pairs")),
        Check("unique_ids", "Every JSONL id is unique.", "jsonl",
              consistency.outcome("unique_ids")),
    )

    def write(self, build: VersionBuild, out: HashingWriter) -> None:
        """Every conversation's lines in file order: the previous version's as they were, except
        those rebuilt (from the spool), then the additions' (from the spool)."""
        previous, rebuild_ids = build.previous, build.rebuild_ids
        if previous is None:
            # A first version: every line is in the spool, in file order.
            build.lines.drain(out)
            return
        with build.open_previous(self.name) as raw:
            reader = VerifyingReader(raw, expected_sha256=previous.jsonl.sha256,
                                     expected_size=previous.jsonl.size,
                                     label=f"training.jsonl of version {previous.version}")
            groups = iter_line_groups(reader)
            for member in build.members():
                previous_lines = b""
                if member.trainable_pair_count:
                    group_cid, previous_lines = next(groups, ("", b""))
                    if group_cid != member.conversation_id:
                        raise ProcessingFailed(
                            f"training.jsonl of version {previous.version} is out of step "
                            f"with its membership at conversation {member.conversation_id}")
                if member.conversation_id in rebuild_ids and member.conversation_id in build.fresh:
                    out.write(build.spooled_lines(member.conversation_id))
                else:
                    out.write(previous_lines)
            reader.finish()
        for conversation in build.spec.additions:
            out.write(build.spooled_lines(conversation.conversation_id))

    def can_carry(self, previous: PreviousVersion) -> bool:
        return True

    def carry(self, build: VersionBuild, out: HashingWriter) -> None:
        """The previous JSONL (checked against its hash), then the added lines from the spool."""
        build.copy_previous(self.name, out)
        build.lines.drain(out)


OUTPUT = Lines()
