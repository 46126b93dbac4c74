"""Dynamic partitions of the training-file assets: one partition per training file (its UUID)."""

import dagster as dg

training_files_partitions = dg.DynamicPartitionsDefinition(name="training_files")

REQUEST_TAG = "brightrun/request_id"
TRAINING_FILE_TAG = "brightrun/training_file"
REASON_TAG = "brightrun/reason"
