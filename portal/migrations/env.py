"""Alembic environment: runs on a connection handed in by `portal.migrations.upgrade`, or on
the URL in the config when invoked from the command line (`make migration`)."""

from __future__ import annotations

import asyncio

from alembic import context
from sqlalchemy.engine import Connection

from portal.db import create_engine
from portal.migrations import declared_schema, include_name

config = context.config


def run_on(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=declared_schema(),
        render_as_batch=connection.dialect.name == "sqlite",  # SQLite cannot ALTER much
        compare_type=True,
        include_name=include_name,
    )
    with context.begin_transaction():
        context.run_migrations()


async def run_from_url(url: str) -> None:
    engine = create_engine(url)
    async with engine.begin() as conn:
        await conn.run_sync(run_on)
    await engine.dispose()


connection = config.attributes.get("connection")
if connection is not None:
    run_on(connection)
else:
    asyncio.run(run_from_url(config.get_main_option("sqlalchemy.url") or ""))
