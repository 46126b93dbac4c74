"""Indexes for the console's filter choices: the distinct statuses, personas, arcs, topics and
tiers of the catalog are read off an index instead of a scan of every conversation.

Revision ID: 0010_filter_indexes
Revises: 0009_splits

The definitions are written out here (not imported from schema.py) so that later changes to the
live definitions can never alter what this revision creates. An index that exists already (the
upstream application may have made it) is left as it is.
"""

import sqlalchemy as sa
from alembic import op

revision = "0010_filter_indexes"
down_revision = "0009_splits"
branch_labels = None
depends_on = None

COLUMNS = ("enrichment_status", "persona_key", "emotional_arc_key", "topic_key", "tier")


def upgrade() -> None:
    existing = {index["name"] for index in sa.inspect(op.get_bind()).get_indexes("conversations")}
    for column in COLUMNS:
        name = f"ix_conversations_{column}"
        if name not in existing:
            op.create_index(name, "conversations", [column])


def downgrade() -> None:
    for column in COLUMNS:
        op.drop_index(f"ix_conversations_{column}", table_name="conversations")
