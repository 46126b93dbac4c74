"""The catalog of enriched source conversations, with their Batch ID and what changed."""

import dagster as dg
import pandas as pd

from resources import BrightRunResource

# The UI's metadata table stays responsive up to a few hundred rows.
CHANGED_TABLE_ROWS = 500


@dg.asset(group_name="sources", kinds={"sql"})
def enriched_conversations(brightrun: BrightRunResource) -> dg.MaterializeResult:
    """The conversations curators pick from (status, eligibility, Batch ID), and the ones that
    changed since they were built into a training file (newer `updated_at` or another file)."""
    db = brightrun.pipeline().db
    rows = db.list_conversations(sort="batch_id")
    frame = pd.DataFrame(
        [{"batch_id": r.batch_id or "(none)", "status": r.enrichment_status,
          "eligible": r.enrichment_status == "completed" and bool(r.enriched_file_path)}
         for r in rows],
        columns=["batch_id", "status", "eligible"],
    )
    by_batch = (frame.groupby("batch_id", sort=True)
                .agg(conversations=("status", "size"), eligible=("eligible", "sum"))
                .reset_index())
    changed = [{
        "conversation_id": member.conversation_id,
        "training_file_id": member.training_file_id,
        "built_in_version": member.built_in_version,
        "built_from_updated_at": str(member.source_updated_at),
        "updated_at": str(row.updated_at),
        "source_key_changed": row.enriched_file_path != member.source_key,
    } for member, row in db.stale_members()]
    return dg.MaterializeResult(metadata={
        "conversations": dg.MetadataValue.int(len(frame)),
        "eligible": dg.MetadataValue.int(int(frame["eligible"].sum())),
        "batches": dg.MetadataValue.int(int(frame["batch_id"].nunique())),
        "by_batch": dg.MetadataValue.md(by_batch.to_markdown(index=False)),
        "changed_since_built": dg.MetadataValue.int(len(changed)),
        "files_with_changes": dg.MetadataValue.int(
            len({c["training_file_id"] for c in changed})),
        "changed_conversations": dg.MetadataValue.table(
            records=[dg.TableRecord(c) for c in changed[:CHANGED_TABLE_ROWS]],
            schema=dg.TableSchema(columns=[dg.TableColumn(name) for name in (
                "conversation_id", "training_file_id", "built_in_version",
                "built_from_updated_at", "updated_at", "source_key_changed")]),
        ),
    })
