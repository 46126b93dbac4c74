"""Indexes for the console's catalog pages: the Batch ID lookup, and the created/title sorts.

Revision ID: 0005_catalog_indexes
Revises: 0004_users

- `ix_batch_items_conversation_first` holds everything the view's Batch ID subquery reads: on
  PostgreSQL a conversation's earliest item is the first entry under its ID, and on both
  backends its batch job comes from the index alone (no table row is read). Sorting the catalog
  by Batch ID works one out for every conversation, so this is most of that sort's cost.
- `ix_conversations_title` (both backends) and `ix_conversations_created` (PostgreSQL) serve the
  catalog's sorts by title and by created time (the default), with the conversation ID as the
  tie-breaker the listing uses: a page is read off the index instead of sorting every
  conversation. SQLite sorts created times by instant (`julianday`, its timestamps being text in
  any ISO-8601 form), which an index on the column does not hold, so there it has none.

The definitions are written out here (not imported from schema.py) so that later changes to the
live definitions can never alter what this revision creates. An index that exists already (the
upstream application may have made it) is left as it is.
"""

import sqlalchemy as sa
from alembic import op

revision = "0005_catalog_indexes"
down_revision = "0004_users"
branch_labels = None
depends_on = None


def _indexes(dialect: str) -> list[tuple[str, str, list[str]]]:
    """(name, table, columns) of each index on this backend."""
    indexes = [
        ("ix_batch_items_conversation_first", "batch_items",
         ["conversation_id", "created_at", "id", "batch_job_id"]),
        ("ix_conversations_title", "conversations", ["title", "conversation_id"]),
    ]
    if dialect == "postgresql":
        indexes.append(("ix_conversations_created", "conversations",
                        ["created_at", "conversation_id"]))
    return indexes


def upgrade() -> None:
    bind = op.get_bind()
    inspector = sa.inspect(bind)
    for name, table, columns in _indexes(bind.dialect.name):
        if name not in {ix["name"] for ix in inspector.get_indexes(table)}:
            op.create_index(name, table, columns)


def downgrade() -> None:
    bind = op.get_bind()
    for name, table, _ in reversed(_indexes(bind.dialect.name)):
        op.drop_index(name, table_name=table, if_exists=True)
