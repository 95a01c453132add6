"""Reads every row of every table of a test server's database, as text."""

from __future__ import annotations

import pytest
from sqlalchemy import MetaData, select
from sqlalchemy.ext.asyncio import create_async_engine

from infra.settings import Settings
from tests.support.helpers import Api


async def dump_all_tables(api: Api, request: pytest.FixtureRequest) -> str:
    """Every row of every table of the `api` fixture's server, as one string."""
    server = request.getfixturevalue(f"{api.mode}_server")
    return await dump_settings_tables(server.settings)


async def dump_settings_tables(settings: Settings) -> str:
    """Every row of every table (found by reflection, not from our models), as one string."""
    engine = create_async_engine(settings.database_url)
    try:
        async with engine.connect() as connection:
            metadata = MetaData()
            await connection.run_sync(metadata.reflect)
            parts = []
            for table in metadata.sorted_tables:
                # Plain tuples: SQLAlchemy's Row repr cuts long values short, which would hide a
                # marker in the middle of a long column from "not in the dump" checks.
                rows = [tuple(row) for row in (await connection.execute(select(table))).all()]
                parts.append(f"{table.name}: {rows!r}")
    finally:
        await engine.dispose()
    return "\n".join(parts)
