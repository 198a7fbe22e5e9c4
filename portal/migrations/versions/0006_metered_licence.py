"""Metering records the licence a film was watched under (pass fees go to pass viewing only).

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-27 08:14:49.491150
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("watched_segments", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("licence", sa.String(length=32), server_default="", nullable=False)
        )


def downgrade() -> None:
    with op.batch_alter_table("watched_segments", schema=None) as batch_op:
        batch_op.drop_column("licence")
