"""Catalog at scale: indexes that walk newest and most-watched order (the paging cursor's
keys) instead of ix_videos_catalog; on PostgreSQL a weighted, GIN-indexed search_vector (film
text and creator name, kept by triggers) instead of the two expression indexes.

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-27 09:30:00.000000
"""

from __future__ import annotations

from alembic import op
from sqlalchemy import update

import portal.db
from portal.db import videos
from portal.videos import public_filter

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("videos", schema=None) as batch_op:
        batch_op.drop_index("ix_videos_catalog")
        batch_op.create_index("ix_videos_newest", ["ready_at", "id"], unique=False)
        batch_op.create_index("ix_videos_popular", ["views", "ready_at", "id"], unique=False)
    # The catalog lists public films by `ready_at` (set when a film becomes public): give
    # any public film written before that rule its best guess, so none drops out.
    op.get_bind().execute(
        update(videos)
        .where(public_filter(), videos.c.ready_at.is_(None))
        .values(ready_at=videos.c.updated_at)
    )
    bind = op.get_bind()
    if bind.dialect.name == "postgresql":
        # The old expression indexes go; the new structures (idempotent DDL, which the first
        # migration also runs on a fresh database) come in their place.
        bind.exec_driver_sql("DROP INDEX IF EXISTS ix_videos_search")
        bind.exec_driver_sql("DROP INDEX IF EXISTS ix_users_search")
        portal.db.create_search_index(bind)
        bind.exec_driver_sql("ANALYZE videos")


def downgrade() -> None:
    bind = op.get_bind()
    if bind.dialect.name == "postgresql":
        portal.db.drop_search_index(bind)
        bind.exec_driver_sql(
            "CREATE INDEX IF NOT EXISTS ix_videos_search ON videos USING GIN "
            "((to_tsvector('simple', title || ' ' || description || ' ' || tags)))"
        )
        bind.exec_driver_sql(
            "CREATE INDEX IF NOT EXISTS ix_users_search ON users USING GIN "
            "((to_tsvector('simple', display_name)))"
        )
    with op.batch_alter_table("videos", schema=None) as batch_op:
        batch_op.drop_index("ix_videos_popular")
        batch_op.drop_index("ix_videos_newest")
        batch_op.create_index("ix_videos_catalog", ["status", "ready_at"], unique=False)
