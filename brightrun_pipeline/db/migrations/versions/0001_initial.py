"""Initial schema: source tables when missing, owned tables, Batch ID indexes and catalog view.

Revision ID: 0001_initial
Revises:
"""

import sqlalchemy as sa
from alembic import op

from brightrun_pipeline.db.schema import (
    CATALOG_VIEW,
    OWNED_TABLES,
    SOURCE_INDEXES,
    SOURCE_TABLES,
    catalog_view_sql,
)

revision = "0001_initial"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    bind = op.get_bind()
    inspector = sa.inspect(bind)
    existing = set(inspector.get_table_names())
    # The upstream application owns the source tables in production; create them only when absent.
    for table in SOURCE_TABLES:
        if table.name not in existing:
            table.create(bind)
    for index in SOURCE_INDEXES:
        present = {ix["name"] for ix in sa.inspect(bind).get_indexes(index.table.name)}
        if index.name not in present:
            index.create(bind)
    for table in OWNED_TABLES:
        table.create(bind, checkfirst=True)
    if CATALOG_VIEW not in set(sa.inspect(bind).get_view_names()):
        op.execute(catalog_view_sql(bind.dialect.name))


def downgrade() -> None:
    op.execute(f"DROP VIEW IF EXISTS {CATALOG_VIEW}")
    for table in reversed(OWNED_TABLES):
        table.drop(op.get_bind(), checkfirst=True)
