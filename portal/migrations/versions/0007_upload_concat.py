"""Uploads: partial and final uploads (tus concatenation); write leases leave the table

A partial upload has no video yet (`video_id` NULL): its bytes wait under its own data key
until a final upload gathers them into one film. `concat` says which kind an upload is.
`locked_until` goes: a PATCH's write lease now belongs to the live process that holds it
(portal/leases.py), so a lease cannot outlive a killed process.

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-27 08:06:27.988265
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import portal.db

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("uploads", schema=None) as batch_op:
        batch_op.add_column(sa.Column("concat", sa.Text(), nullable=True))
        batch_op.alter_column("video_id", existing_type=sa.String(length=32), nullable=True)
        batch_op.drop_column("locked_until")


def downgrade() -> None:
    # Partial uploads cannot exist without a video in the old schema.
    op.execute("DELETE FROM uploads WHERE video_id IS NULL")
    with op.batch_alter_table("uploads", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("locked_until", portal.db.UTCDateTime(timezone=True), nullable=True)
        )
        batch_op.alter_column("video_id", existing_type=sa.String(length=32), nullable=False)
        batch_op.drop_column("concat")
