"""The side of the train/validation split each conversation of a file is on.

Revision ID: 0009_splits
Revises: 0008_signatures

A conversation's side is chosen once, when it joins a file that holds out a validation share (or
when such a share is first configured), and never changes after. The definitions are written
out here (not imported from schema.py) so that later changes to the live table definitions can
never alter what this revision creates.
"""

import sqlalchemy as sa
from alembic import op

revision = "0009_splits"
down_revision = "0008_signatures"
branch_labels = None
depends_on = None


def upgrade() -> None:
    columns = {c["name"] for c in sa.inspect(op.get_bind()).get_columns(
        "training_file_conversations")}
    if "split" not in columns:
        with op.batch_alter_table("training_file_conversations") as batch:
            batch.add_column(sa.Column("split", sa.String(12)))


def downgrade() -> None:
    with op.batch_alter_table("training_file_conversations") as batch:
        batch.drop_column("split")
