"""The vault's own tables, on their own `MetaData`: the portal's schema (portal.db) and the
Alembic migrations include them, but the vault never imports the portal's schema.

Times are timezone-aware UTC; the vault writes them and never reads them back.
"""

from __future__ import annotations

from sqlalchemy import Column, DateTime, LargeBinary, MetaData, String, Table

metadata = MetaData()

data_keys = Table(
    "data_keys",
    metadata,
    Column("owner", String(64), primary_key=True),  # the video id
    Column("key_id", String(32), nullable=False, index=True),  # the KEK that wraps it
    Column("wrapped", LargeBinary, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
)

# One row per master key (KEK) ever used: a value sealed under that key, so a wrong key in the
# keyring is caught at start-up instead of producing garbage later (see docs/vault-format.md).
vault_keys = Table(
    "vault_keys",
    metadata,
    Column("key_id", String(32), primary_key=True),
    Column("check_value", LargeBinary, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
)
