"""Build leases, run heartbeats and the holder of a claimed request.

Revision ID: 0003_leases
Revises: 0002_wide_sizes

The definitions are written out here (not imported from schema.py) so that later changes to the
live table definitions can never alter what this revision creates.
"""

import sqlalchemy as sa
from alembic import op

from brightrun_pipeline.db.types import Timestamp, UUIDText

revision = "0003_leases"
down_revision = "0002_wide_sizes"
branch_labels = None
depends_on = None


def upgrade() -> None:
    bind = op.get_bind()
    tables = set(sa.inspect(bind).get_table_names())
    if "training_file_builds" not in tables:
        op.create_table(
            "training_file_builds",
            sa.Column("training_file_id", UUIDText, primary_key=True),
            sa.Column("version", sa.Integer, nullable=False),
            sa.Column("owner", sa.String(64), nullable=False),
            sa.Column("dagster_run_id", sa.Text),
            sa.Column("acquired_at", Timestamp, nullable=False),
            sa.Column("expires_at", Timestamp, nullable=False),
        )
    if "run_heartbeats" not in tables:
        op.create_table(
            "run_heartbeats",
            sa.Column("run_id", sa.String(64), primary_key=True),
            sa.Column("training_file_id", UUIDText),
            sa.Column("request_id", sa.Text),
            sa.Column("beat_at", Timestamp, nullable=False),
        )
    columns = {c["name"] for c in sa.inspect(bind).get_columns("selection_requests")}
    with op.batch_alter_table("selection_requests") as batch:
        if "claimed_by" not in columns:
            batch.add_column(sa.Column("claimed_by", sa.Text))
        if "heartbeat_at" not in columns:
            batch.add_column(sa.Column("heartbeat_at", Timestamp))


def downgrade() -> None:
    with op.batch_alter_table("selection_requests") as batch:
        batch.drop_column("heartbeat_at")
        batch.drop_column("claimed_by")
    op.drop_table("run_heartbeats")
    op.drop_table("training_file_builds")
