"""User attributes, and the phase (training, refit) of a running job's progress.

Revision ID: 0004
Revises: 0002
Create Date: 2026-11-29 18:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | Sequence[str] | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Create user_attributes; add training_jobs.phase."""
    op.create_table(
        "user_attributes",
        sa.Column("user_id", sa.Integer(), nullable=False),
        sa.Column("attributes", sa.JSON(), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["user_id"],
            ["users.id"],
            name=op.f("fk_user_attributes_user_id_users"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("user_id", name=op.f("pk_user_attributes")),
    )
    op.create_index(
        op.f("ix_user_attributes_updated_at"), "user_attributes", ["updated_at"], unique=False
    )
    with op.batch_alter_table("training_jobs") as batch:
        batch.add_column(sa.Column("phase", sa.String(length=16), nullable=True))


def downgrade() -> None:
    """Drop user_attributes and training_jobs.phase."""
    with op.batch_alter_table("training_jobs") as batch:
        batch.drop_column("phase")
    op.drop_index(op.f("ix_user_attributes_updated_at"), table_name="user_attributes")
    op.drop_table("user_attributes")
