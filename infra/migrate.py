"""Applies Alembic migrations (`parley migrate`, and `parley serve` in the embedded mode)."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy.engine import Connection

from infra.db import create_engine

MIGRATIONS = Path(__file__).parent / "migrations"


def alembic_config(database_url: str) -> Config:
    """An Alembic config built in code: no alembic.ini to keep in sync."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.set_main_option("sqlalchemy.url", database_url.replace("%", "%%"))
    return config


async def migrate(database_url: str) -> None:
    """Brings the database at `database_url` to the newest schema."""
    engine = create_engine(database_url)
    try:
        async with engine.begin() as connection:

            def upgrade(sync_connection: Connection) -> None:
                config = alembic_config(database_url)
                config.attributes["connection"] = sync_connection
                command.upgrade(config, "head")

            await connection.run_sync(upgrade)
    finally:
        await engine.dispose()
