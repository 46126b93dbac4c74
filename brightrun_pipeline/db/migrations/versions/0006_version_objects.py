"""The objects of each version as rows (name, key, sha256, size): a version is a set of named
outputs, and new outputs need no new columns.

Revision ID: 0006_version_objects
Revises: 0005_catalog_indexes

Existing versions get rows for the three objects they have (training.json, training.jsonl,
manifest.json) from their version row. The definitions are written out here (not imported from
schema.py) so that later changes to the live table definitions can never alter what this
revision creates.
"""

import sqlalchemy as sa
from alembic import op

from brightrun_pipeline.db.types import UUIDText

revision = "0006_version_objects"
down_revision = "0005_catalog_indexes"
branch_labels = None
depends_on = None


def upgrade() -> None:
    bind = op.get_bind()
    if "training_file_version_objects" in set(sa.inspect(bind).get_table_names()):
        return
    objects = op.create_table(
        "training_file_version_objects",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("training_file_id", UUIDText, sa.ForeignKey("training_files.id"),
                  nullable=False),
        sa.Column("version", sa.Integer, nullable=False),
        sa.Column("name", sa.String(120), nullable=False),
        sa.Column("key", sa.Text, nullable=False),
        sa.Column("sha256", sa.String(64), nullable=False),
        # Unknown (NULL) only for the manifests of versions published before this revision.
        sa.Column("size", sa.BigInteger),
        sa.UniqueConstraint("training_file_id", "version", "name",
                            name="uq_training_file_version_objects_name"),
    )
    versions = sa.table("training_file_versions", *(sa.column(name) for name in (
        "training_file_id", "version", "json_key", "json_sha256", "json_size", "jsonl_key",
        "jsonl_sha256", "jsonl_size", "manifest_key", "manifest_sha256")))
    for name, prefix in (("training.json", "json"), ("training.jsonl", "jsonl"),
                         ("manifest.json", "manifest")):
        size = (versions.c[f"{prefix}_size"] if prefix != "manifest"
                else sa.null())
        bind.execute(objects.insert().from_select(
            ["training_file_id", "version", "name", "key", "sha256", "size"],
            sa.select(versions.c.training_file_id, versions.c.version,
                      sa.literal(name, sa.String), versions.c[f"{prefix}_key"],
                      versions.c[f"{prefix}_sha256"], size)))


def downgrade() -> None:
    op.drop_table("training_file_version_objects")
