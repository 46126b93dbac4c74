"""Console users: who signs in, with a hashed API token.

Revision ID: 0004_users
Revises: 0003_leases

The definitions are written out here (not imported from schema.py) so that later changes to the
live table definitions can never alter what this revision creates.
"""

import sqlalchemy as sa
from alembic import op

from brightrun_pipeline.db.types import Timestamp, UUIDText

revision = "0004_users"
down_revision = "0003_leases"
branch_labels = None
depends_on = None


def upgrade() -> None:
    if "users" in set(sa.inspect(op.get_bind()).get_table_names()):
        return
    op.create_table(
        "users",
        sa.Column("id", UUIDText, primary_key=True),
        sa.Column("name", sa.String(120), nullable=False),
        sa.Column("name_key", sa.String(480), nullable=False, unique=True),
        sa.Column("is_admin", sa.Boolean, nullable=False, server_default=sa.false()),
        sa.Column("token_hash", sa.String(64), nullable=False, unique=True),
        sa.Column("created_at", Timestamp, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("users")
