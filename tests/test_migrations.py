"""The Alembic migrations build exactly the schema portal/db.py and the vault's own tables
(portal/vault/tables.py) declare, on both databases."""

from __future__ import annotations

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import inspect, text

from portal.db import create_engine
from portal.migrations import declared_schema, include_name, upgrade

pytestmark = pytest.mark.anyio


async def test_migrations_leave_no_difference_from_the_declared_schema(database_url):
    engine = create_engine(database_url)
    try:
        await upgrade(engine)
        await upgrade(engine)  # a second start finds nothing to do
        async with engine.connect() as conn:
            diff = await conn.run_sync(
                lambda sync: compare_metadata(
                    MigrationContext.configure(sync, opts={"include_name": include_name}),
                    declared_schema(),
                )
            )
            version = (await conn.execute(text("SELECT version_num FROM alembic_version"))).all()
    finally:
        await engine.dispose()
    assert diff == []
    assert len(version) == 1


async def test_migrations_create_the_catalog_search_structures(database_url):
    engine = create_engine(database_url)
    try:
        await upgrade(engine)
        async with engine.connect() as conn:
            if conn.dialect.name == "sqlite":
                names = await conn.run_sync(lambda sync: inspect(sync).get_table_names())
                assert "videos_fts" in names
            else:
                indexes = await conn.run_sync(
                    lambda sync: {i["name"] for i in inspect(sync).get_indexes("videos")}
                )
                assert "ix_videos_search" in indexes
    finally:
        await engine.dispose()
