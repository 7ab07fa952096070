"""Cheaper rating writes: no index on users' history time, a BRIN index on ratings' stored_at.

`users.history_changed_at` had an index that no query reads; with it, every history touch
(each write of a user's ratings) was an UPDATE of an indexed column, never a HOT update, and
inserted a new entry in all three of users' indexes. Without it, and with room left in each
page (fillfactor 70 on PostgreSQL), the touch updates the row in place.

On PostgreSQL `ratings.stored_at` gets a BRIN index instead of a B-tree: rows are appended in
the order they are stored, and its readers (the schedule's count of ratings stored after the
last snapshot, the dashboard's hourly counts) read recent ranges; a B-tree entry per written
row was a third of a bulk upsert's index work. SQLite, which has no BRIN, keeps its B-tree.

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-30 00:00:00
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0007"
down_revision: str | Sequence[str] | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

USERS_FILLFACTOR = 70
"""Percent of each users page filled by inserts: the rest takes in-place history touches."""


def _postgres() -> bool:
    return op.get_bind().dialect.name == "postgresql"


def upgrade() -> None:
    """Drop the users' history-time index; PostgreSQL: fillfactor, BRIN on stored_at."""
    op.drop_index("ix_users_history_changed_at", table_name="users")
    if _postgres():
        op.execute(f"ALTER TABLE users SET (fillfactor = {USERS_FILLFACTOR})")
        op.drop_index("ix_ratings_stored_at", table_name="ratings")
        op.create_index("ix_ratings_stored_at", "ratings", ["stored_at"], postgresql_using="brin")


def downgrade() -> None:
    """Restore the B-tree on stored_at, the default fillfactor and the history-time index."""
    if _postgres():
        op.drop_index("ix_ratings_stored_at", table_name="ratings")
        op.create_index("ix_ratings_stored_at", "ratings", ["stored_at"])
        op.execute("ALTER TABLE users RESET (fillfactor)")
    op.create_index("ix_users_history_changed_at", "users", ["history_changed_at"])
