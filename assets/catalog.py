"""The catalog of enriched source conversations, with their Batch ID."""

import dagster as dg
import pandas as pd

from resources import BrightRunResource


@dg.asset(group_name="sources", kinds={"sql"})
def enriched_conversations(brightrun: BrightRunResource) -> dg.MaterializeResult:
    """The conversations curators pick from: status, eligibility and Batch ID of each."""
    rows = brightrun.pipeline().db.list_conversations(sort="batch_id")
    frame = pd.DataFrame(
        [{"batch_id": r.batch_id or "(none)", "status": r.enrichment_status,
          "eligible": r.enrichment_status == "completed" and bool(r.enriched_file_path)}
         for r in rows],
        columns=["batch_id", "status", "eligible"],
    )
    by_batch = (frame.groupby("batch_id", sort=True)
                .agg(conversations=("status", "size"), eligible=("eligible", "sum"))
                .reset_index() if len(frame) else frame)
    return dg.MaterializeResult(metadata={
        "conversations": dg.MetadataValue.int(len(frame)),
        "eligible": dg.MetadataValue.int(int(frame["eligible"].sum()) if len(frame) else 0),
        "batches": dg.MetadataValue.int(int(frame["batch_id"].nunique()) if len(frame) else 0),
        "by_batch": dg.MetadataValue.md(by_batch.to_markdown(index=False) if len(frame) else ""),
    })
