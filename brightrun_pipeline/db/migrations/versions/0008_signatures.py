"""Near-duplicate signatures: the MinHash of each conversation's training text, computed once
per version of its enriched file (keyed by the sha256 of those bytes) and reused by every check.

Revision ID: 0008_signatures
Revises: 0007_file_settings

The definitions are written out here (not imported from schema.py) so that later changes to the
live table definitions can never alter what this revision creates.
"""

import sqlalchemy as sa
from alembic import op

from brightrun_pipeline.db.types import Timestamp, UUIDText

revision = "0008_signatures"
down_revision = "0007_file_settings"
branch_labels = None
depends_on = None


def upgrade() -> None:
    if "conversation_signatures" in sa.inspect(op.get_bind()).get_table_names():
        return
    op.create_table(
        "conversation_signatures",
        sa.Column("conversation_id", UUIDText, primary_key=True),
        sa.Column("source_sha256", sa.String(64), primary_key=True),
        sa.Column("scheme", sa.String(60), nullable=False),
        sa.Column("hashvalues", sa.LargeBinary, nullable=False),
        sa.Column("source_key", sa.Text, nullable=False),
        sa.Column("source_updated_at", Timestamp),
        sa.Column("created_at", Timestamp, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("conversation_signatures")
