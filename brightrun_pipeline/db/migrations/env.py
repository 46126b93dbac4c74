"""Alembic environment: runs migrations on the connection handed over by `Database.upgrade`."""

from alembic import context

from brightrun_pipeline.db.schema import metadata

VERSION_TABLE = "brightrun_schema_version"

connection = context.config.attributes["connection"]
context.configure(
    connection=connection,
    target_metadata=metadata,
    version_table=VERSION_TABLE,
    render_as_batch=connection.dialect.name == "sqlite",
)
with context.begin_transaction():
    context.run_migrations()
