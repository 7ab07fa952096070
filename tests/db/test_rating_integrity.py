"""Every stored rating has its user and item, without foreign keys (migration 0006)."""

from __future__ import annotations

import threading
from datetime import UTC, datetime
from pathlib import Path

from sqlalchemy import Engine, text

import service
from service.db import queries
from service.db.session import make_sessionmaker, transaction
from service.db.upsert import prepare_batch, upsert_ratings
from tests.db.test_upsert import batch

ORPHANS = text(
    "SELECT count(*) FROM ratings r LEFT JOIN users u ON u.id = r.user_id"
    " LEFT JOIN items i ON i.id = r.item_id WHERE u.id IS NULL OR i.id IS NULL"
)


def orphans(engine: Engine) -> int:
    with engine.connect() as connection:
        return int(connection.execute(ORPHANS).scalar_one())


def test_no_code_path_deletes_items() -> None:
    """Items are never deleted: the guarantee for `ratings.item_id` rests on it."""
    root = Path(service.__file__).parent
    offending = [
        str(path.relative_to(root))
        for path in root.rglob("*.py")
        if "delete(items" in (source := path.read_text()) or "DELETE FROM items" in source
    ]
    assert offending == []


def race_writes_against_user_deletions(
    engine: Engine, rounds: int, *, prepared: bool = False
) -> None:
    """Write `rounds` batches of 8 users' ratings while another thread deletes those users in
    turn; assert that neither thread failed and that no rating was left without its user.

    `prepared`: the batches are made ready ahead first, as `mfserve import` does.
    """
    sessions = make_sessionmaker(engine, write=True)
    users = [f"u{n}" for n in range(8)]
    stop = threading.Event()
    errors: list[BaseException] = []

    def write() -> None:
        try:
            for round_ in range(rounds):
                rating = float(1 + round_ % 4)
                rows = batch(*[(user, f"i{n}", rating, round_) for user in users for n in range(5)])
                if prepared:
                    prepare_batch(rows, engine.dialect.name)
                with transaction(sessions) as session:
                    upsert_ratings(session, rows, now=datetime.now(UTC))
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)
        finally:
            stop.set()

    def delete() -> None:
        try:
            n = 0
            while not stop.is_set():
                with transaction(sessions) as session:
                    queries.delete_user(session, users[n % len(users)])
                n += 1
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=write), threading.Thread(target=delete)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert orphans(engine) == 0


def test_users_deleted_while_their_ratings_are_written_leave_no_orphans(engine: Engine) -> None:
    race_writes_against_user_deletions(engine, rounds=60)
