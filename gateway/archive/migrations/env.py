"""Alembic's environment: runs on the connection `gateway.archive.migrate` hands it."""

from __future__ import annotations

from alembic import context

from gateway.archive.schema import metadata

connection = context.config.attributes.get("connection")
if connection is None:
    raise RuntimeError("run the archive's migrations with `gateway db upgrade`")
# Batch mode: SQLite alters a table by copying it.
context.configure(connection=connection, target_metadata=metadata, render_as_batch=True)
with context.begin_transaction():
    context.run_migrations()
