"""Byte sizes and offsets of a version as 64-bit integers, so a version may exceed 2 GiB.

Revision ID: 0002_wide_sizes
Revises: 0001_initial
"""

import sqlalchemy as sa
from alembic import op

revision = "0002_wide_sizes"
down_revision = "0001_initial"
branch_labels = None
depends_on = None

WIDENED = ("json_size", "jsonl_size", "json_body_start", "json_body_end")


def upgrade() -> None:
    # On SQLite every INTEGER already holds 64 bits; the batch (a table copy there) keeps the
    # declared types in step with the live definitions.
    with op.batch_alter_table("training_file_versions") as batch:
        for name in WIDENED:
            batch.alter_column(name, existing_type=sa.Integer(), type_=sa.BigInteger(),
                               existing_nullable=False)


def downgrade() -> None:
    # Fails on PostgreSQL while a version of 2 GiB or more is recorded: nothing is truncated.
    with op.batch_alter_table("training_file_versions") as batch:
        for name in WIDENED:
            batch.alter_column(name, existing_type=sa.BigInteger(), type_=sa.Integer(),
                               existing_nullable=False)
