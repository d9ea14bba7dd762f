"""the tool calls made for each turn

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-02 06:10:00.000000

"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

# revision identifiers, used by Alembic.
revision: str = "0002"
down_revision: str | Sequence[str] | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Upgrade schema."""
    op.create_table(
        "tool_calls",
        sa.Column("id", sa.String(length=255), nullable=False),
        sa.Column("conversation", sa.String(length=255), nullable=False),
        sa.Column("channel", sa.String(length=32), nullable=False),
        sa.Column("customer", sa.String(length=255), nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("tool", sa.String(length=255), nullable=False),
        sa.Column("arguments", sa.JSON(), nullable=False),
        sa.Column("outcome", sa.String(length=16), nullable=False),
        sa.Column("status", sa.Integer(), nullable=True),
        sa.Column("latency_ms", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("tool_calls", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_tool_calls_at"), ["at"], unique=False)
        batch_op.create_index(
            batch_op.f("ix_tool_calls_conversation"), ["conversation"], unique=False
        )
        batch_op.create_index(batch_op.f("ix_tool_calls_customer"), ["customer"], unique=False)


def downgrade() -> None:
    """Downgrade schema."""
    with op.batch_alter_table("tool_calls", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_tool_calls_customer"))
        batch_op.drop_index(batch_op.f("ix_tool_calls_conversation"))
        batch_op.drop_index(batch_op.f("ix_tool_calls_at"))

    op.drop_table("tool_calls")
