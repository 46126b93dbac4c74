"""Per-file settings: how near-duplicate conversations are treated, and the validation share;
a request that creates a file carries the settings the file starts with.

Revision ID: 0007_file_settings
Revises: 0006_version_objects

The definitions are written out here (not imported from schema.py) so that later changes to the
live table definitions can never alter what this revision creates.
"""

import sqlalchemy as sa
from alembic import op

from brightrun_pipeline.db.types import JSONDocument

revision = "0007_file_settings"
down_revision = "0006_version_objects"
branch_labels = None
depends_on = None


def upgrade() -> None:
    inspector = sa.inspect(op.get_bind())
    files = {c["name"] for c in inspector.get_columns("training_files")}
    with op.batch_alter_table("training_files") as batch:
        if "near_duplicates" not in files:
            batch.add_column(sa.Column("near_duplicates", sa.String(10), nullable=False,
                                       server_default="warn"))
        if "validation_fraction" not in files:
            batch.add_column(sa.Column("validation_fraction", sa.Float))
    requests = {c["name"] for c in inspector.get_columns("selection_requests")}
    if "new_file_settings" not in requests:
        with op.batch_alter_table("selection_requests") as batch:
            batch.add_column(sa.Column("new_file_settings", JSONDocument))


def downgrade() -> None:
    with op.batch_alter_table("selection_requests") as batch:
        batch.drop_column("new_file_settings")
    with op.batch_alter_table("training_files") as batch:
        batch.drop_column("validation_fraction")
        batch.drop_column("near_duplicates")
