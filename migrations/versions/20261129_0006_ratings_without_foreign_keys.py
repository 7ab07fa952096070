"""Ratings without per-row foreign-key checks; the writers guarantee that users and items exist.

On PostgreSQL the foreign keys' per-row checks took about two thirds of a bulk upsert. Every
rating is written by `service.db.upsert.upsert_batches`, which creates or finds the rating's
user and item in the same transaction and, on PostgreSQL, holds a lock on the user that
`DELETE /users/{user}` needs; that deletion removes the user's ratings itself, and items are
never deleted (tests/db/test_rating_integrity.py).

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-29 18:30:00
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0006"
down_revision: str | Sequence[str] | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

FOREIGN_KEYS = (
    ("fk_ratings_user_id_users", "user_id", "users"),
    ("fk_ratings_item_id_items", "item_id", "items"),
)


def upgrade() -> None:
    """Drop the two foreign keys of `ratings` (SQLite: by rebuilding the table)."""
    with op.batch_alter_table("ratings") as batch:
        for name, _column, _table in FOREIGN_KEYS:
            batch.drop_constraint(name, type_="foreignkey")


def downgrade() -> None:
    """Restore the foreign keys (ON DELETE CASCADE, as the initial schema made them)."""
    with op.batch_alter_table("ratings") as batch:
        for name, column, table in FOREIGN_KEYS:
            batch.create_foreign_key(name, table, [column], ["id"], ondelete="CASCADE")
