"""Provider payments: top-ups pending at a payment provider (Stripe PaymentIntents)

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-27 08:25:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import portal.db

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "provider_payments",
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("user_id", sa.String(length=32), nullable=False),
        sa.Column("idempotency_key", sa.String(length=255), nullable=False),
        sa.Column("provider", sa.String(length=32), nullable=False),
        sa.Column("reference", sa.String(length=64), nullable=True),
        sa.Column("amount", sa.BigInteger(), nullable=False),
        sa.Column("currency", sa.String(length=3), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("message", sa.Text(), nullable=False),
        sa.Column("transaction_id", sa.String(length=32), nullable=True),
        sa.Column("created_at", portal.db.UTCDateTime(timezone=True), nullable=False),
        sa.Column("updated_at", portal.db.UTCDateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("provider", "reference", name="uq_provider_payments_reference"),
        sa.UniqueConstraint("user_id", "idempotency_key", name="uq_provider_payments_key"),
    )


def downgrade() -> None:
    op.drop_table("provider_payments")
