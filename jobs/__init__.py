"""Jobs: build and publish one version of a training file."""

import dagster as dg

from assets.training_files import (
    training_file_membership,
    training_file_objects,
    training_file_version,
)

TRAINING_FILE_JOB = "training_file_job"

training_file_job = dg.define_asset_job(
    TRAINING_FILE_JOB,
    selection=dg.AssetSelection.assets(
        training_file_membership, training_file_objects, training_file_version),
    # One small run per request: stepping in-process avoids a subprocess per step.
    executor_def=dg.in_process_executor,
    description="Build, check and publish the next version of one training file.",
)

catalog_job = dg.define_asset_job(
    "enriched_conversations_job",
    selection=dg.AssetSelection.assets("enriched_conversations"),
    executor_def=dg.in_process_executor,
    description="Refresh the catalog of enriched conversations.",
)
