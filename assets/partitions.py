"""Dynamic partitions of the training-file assets: one partition per training file (its UUID)."""

import dagster as dg

training_files_partitions = dg.DynamicPartitionsDefinition(name="training_files")

REQUEST_TAG = "brightrun/request_id"
TRAINING_FILE_TAG = "brightrun/training_file"
REASON_TAG = "brightrun/reason"
# The claim of the request a run was launched for (selection_requests.attempts).
ATTEMPT_TAG = "brightrun/attempt"
