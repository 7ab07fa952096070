"""The serving path's reads: markers on a held connection see every commit, and the held
connections go back to the pool when the readers close."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

from sqlalchemy import text

from service.db.serving_reads import create_serving_engine, serving_readers
from service.db.tables import users


def _add_user(database_url: str, user: str, version: int) -> None:
    engine = create_serving_engine(database_url)
    try:
        with engine.begin() as connection:
            now = datetime.now(UTC)
            connection.execute(
                users.insert().values(
                    external_id=user,
                    history_version=version,
                    created_at=now,
                    history_changed_at=now,
                )
            )
    finally:
        engine.dispose()


def _bump(database_url: str, user: str) -> None:
    engine = create_serving_engine(database_url)
    try:
        with engine.begin() as connection:
            connection.execute(
                text(
                    "UPDATE users SET history_version = history_version + 1 WHERE external_id = :u"
                ),
                {"u": user},
            )
    finally:
        engine.dispose()


def test_markers_see_each_commit_and_the_readers_give_their_connections_back(
    database_url: str,
) -> None:
    _add_user(database_url, "alice", 3)
    engine = create_serving_engine(database_url)

    async def scenario() -> list[dict[str, int]]:
        seen = []
        async with serving_readers(database_url, engine) as (markers, profiles):
            seen.append(await markers(["alice", "nobody"]))
            _bump(database_url, "alice")  # another connection commits
            seen.append(await markers(["alice"]))
            _add_user(database_url, "bob", 1)
            seen.append(await markers(["alice", "bob"]))
            found = await profiles(["bob"])
            assert found["bob"].history_version == 1
            assert len(found["bob"].item_ids) == 0
        return seen

    try:
        seen = asyncio.run(scenario())
        assert seen == [{"alice": 3}, {"alice": 4}, {"alice": 4, "bob": 1}]
        assert engine.pool.checkedout() == 0  # type: ignore[attr-defined]
    finally:
        engine.dispose()
