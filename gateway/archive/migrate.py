"""Schema migrations with Alembic (`gateway db upgrade`; the `release` process runs it)."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection

from gateway.archive.database import ArchiveDatabase

MIGRATIONS = Path(__file__).parent / "migrations"


def alembic_config(connection: Connection | None = None) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.attributes["connection"] = connection
    return config


async def upgrade(database: ArchiveDatabase, revision: str = "head") -> None:
    async with database.engine.begin() as connection:
        await connection.run_sync(lambda sync: command.upgrade(alembic_config(sync), revision))


async def current(database: ArchiveDatabase) -> tuple[str | None, str | None]:
    """(the database's revision, the newest revision there is)."""
    async with database.engine.connect() as connection:
        revision = await connection.run_sync(
            lambda sync: MigrationContext.configure(sync).get_current_revision()
        )
    return revision, ScriptDirectory.from_config(alembic_config()).get_current_head()
