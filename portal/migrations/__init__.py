"""Alembic migrations for the schema in portal/db.py.

`upgrade(engine)` brings a database to the newest revision; `megamovie serve`, `megamovie
worker` and the tests call it at start-up, so an operator never runs Alembic by hand. To
write a new revision after changing portal/db.py: `make migration MESSAGE="what changed"`.
"""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy import MetaData
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncEngine

from portal import db
from portal.vault import tables as vault_tables

HERE = Path(__file__).resolve().parent


def declared_schema() -> list[MetaData]:
    """Every table the migrations build: the portal's (portal.db) and the vault's own."""
    return [db.metadata, vault_tables.metadata]


# The catalog's search structures are made by raw DDL (portal.db.create_search_index), not
# declared as tables: schema comparison leaves them out.
SEARCH_OBJECTS = ("videos_fts", "ix_videos_search", "ix_users_search", "search_vector")


def include_name(name: str | None, type_: str, parent_names: object) -> bool:
    return not (name or "").startswith(SEARCH_OBJECTS)


def alembic_config(database_url: str = "") -> Config:
    config = Config()
    config.set_main_option("script_location", str(HERE))
    config.set_main_option("path_separator", "os")
    config.set_main_option("version_locations", str(HERE / "versions"))
    if database_url:
        config.set_main_option("sqlalchemy.url", database_url.replace("%", "%%"))
    return config


def _upgrade(connection: Connection) -> None:
    if connection.dialect.name == "postgresql":
        # Several processes (serve, workers) may start at once: one migrates, the others
        # wait for it in this transaction-scoped lock, then find nothing left to do.
        connection.exec_driver_sql("SELECT pg_advisory_xact_lock(7346511)")
    config = alembic_config()
    config.attributes["connection"] = connection
    command.upgrade(config, "head")


async def upgrade(engine: AsyncEngine) -> None:
    async with engine.begin() as conn:
        await conn.run_sync(_upgrade)
