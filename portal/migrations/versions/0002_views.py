"""Views: the last counted view per viewer and video, so a view counts once a day.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-25 14:15:50.024969
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import portal.db

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "views",
        sa.Column("viewer_key", sa.String(length=80), nullable=False),
        sa.Column("video_id", sa.String(length=32), nullable=False),
        sa.Column("counted_at", portal.db.UTCDateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["video_id"], ["videos.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("viewer_key", "video_id"),
    )


def downgrade() -> None:
    op.drop_table("views")
