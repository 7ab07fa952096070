"""PostgreSQL's one-flight group write: the outcome of `upsert_batches`, row for row."""

from __future__ import annotations

import random
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import Engine, select, text

from service.db.postgres_group import GroupWriter
from service.db.queries import delete_user
from service.db.session import create_db_engine, make_sessionmaker, transaction
from service.db.tables import users
from service.db.upsert import RatingBatch, UpsertCounts, upsert_batches
from tests.db.test_upsert import T0, batch, history, store, stored


@pytest.fixture(params=["postgresql"])
def backend(request: pytest.FixtureRequest) -> str:
    """The group function is PostgreSQL's: this module runs on PostgreSQL only."""
    return str(request.param)


@pytest.fixture
def group_writer(engine: Engine) -> Iterator[GroupWriter]:
    assert engine.dialect.name == "postgresql"
    raw = engine.raw_connection()
    try:
        yield GroupWriter(raw.driver_connection)
    finally:
        raw.close()


def test_a_group_stores_and_counts_as_one_after_another(
    engine: Engine, group_writer: GroupWriter
) -> None:
    store(engine, batch(("u", "a", 2.0, 50)))
    group = [
        batch(("u", "a", 3.0, 50), ("u", "b", 1.0, 10)),
        batch(("u", "a", 4.0, 40), ("v", "c", 5.0, 10), ("v", "c", 4.0, 10)),
        batch(("u", "b", 2.0, 10), ("v", "c", 1.0, 5)),
    ]
    now = datetime.now(UTC)
    assert group_writer.write(group, [now] * 3) == [
        UpsertCounts(1, 1, 0),  # (u, a): equal time replaces; (u, b) new
        UpsertCounts(1, 0, 2),  # (u, a) older: ignored; (v, c): the later duplicate wins
        UpsertCounts(0, 1, 1),  # (u, b) equal to the first batch's: replaces; (v, c) older
    ]
    assert stored(engine) == {
        ("u", "a"): (3.0, T0 + timedelta(seconds=50)),
        ("u", "b"): (2.0, T0 + timedelta(seconds=10)),
        ("v", "c"): (4.0, T0 + timedelta(seconds=10)),
    }
    assert history(engine, "u") == 2
    assert history(engine, "v") == 1


def test_a_group_that_changes_nothing_touches_no_history(
    engine: Engine, group_writer: GroupWriter
) -> None:
    store(engine, batch(("u", "a", 2.0, 50)))
    now = datetime.now(UTC)
    group = [batch(("u", "a", 1.0, 1)), batch(("u", "a", None, 2))]
    assert group_writer.write(group, [now] * 2) == [UpsertCounts(0, 0, 1)] * 2
    assert history(engine, "u") == 1


def test_ids_that_look_like_syntax_round_trip(engine: Engine, group_writer: GroupWriter) -> None:
    names = ["{a,b}", "NULL", " padded ", "x,y", '"', "\\N", "a;b", "é\u2028f", "Zoë", "🙂"]
    group = [batch((name, name + "!", None, 1)) for name in names]
    assert group_writer.write(group, [T0] * len(group)) == [UpsertCounts(1, 0, 0)] * len(names)
    assert stored(engine) == {
        (name, name + "!"): (None, T0 + timedelta(seconds=1)) for name in names
    }


def state(engine: Engine) -> tuple[object, ...]:
    """Everything a write decides: ratings with their stored-at times, users' markers, ids."""
    with engine.connect() as connection:
        return (
            connection.execute(
                text(
                    "SELECT u.external_id, i.external_id, r.rating, r.event_at, r.stored_at"
                    " FROM ratings r JOIN users u ON u.id = r.user_id"
                    " JOIN items i ON i.id = r.item_id ORDER BY 1, 2"
                )
            ).all(),
            connection.execute(
                text(
                    "SELECT external_id, created_at, history_changed_at, history_version"
                    " FROM users ORDER BY 1"
                )
            ).all(),
            connection.execute(text("SELECT external_id FROM items ORDER BY 1")).all(),
        )


def random_group(rng: random.Random, round_: int) -> tuple[list[RatingBatch], list[datetime]]:
    """A few batches of 1 to 4 rows over a small id space: many repeats, ties and nulls."""
    batches = [
        batch(
            *(
                (
                    f"u{rng.randrange(6)}",
                    f"i{rng.randrange(5)}",
                    rng.choice([None, 1.0, 2.5, 5.0]),
                    rng.randrange(4),
                )
                for _ in range(rng.randint(1, 4))
            )
        )
        for _ in range(rng.randint(1, 6))
    ]
    nows = sorted(T0 + timedelta(hours=round_, microseconds=rng.randrange(10**6)) for _ in batches)
    return batches, nows


def test_random_groups_match_upsert_batches(
    engine: Engine, group_writer: GroupWriter, database_factory: Any
) -> None:
    # The same random groups go through `upsert_batches` on a second fresh database.
    url, name = database_factory.fresh()
    reference = create_db_engine(url)
    try:
        rng = random.Random(7)
        for round_ in range(40):
            batches, nows = random_group(rng, round_)
            expected = run_reference(reference, batches, nows)
            assert group_writer.write(batches, nows) == expected, round_
            assert state(engine) == state(reference), round_
    finally:
        reference.dispose()
        database_factory.drop(name)


def run_reference(
    engine: Engine, batches: list[RatingBatch], nows: list[datetime]
) -> list[UpsertCounts]:
    with transaction(make_sessionmaker(engine, write=True)) as session:
        return upsert_batches(session.connection(), batches, nows)


def test_a_failed_group_stores_nothing(engine: Engine, group_writer: GroupWriter) -> None:
    too_long = "x" * 300  # over the column's 128 characters: the server refuses the group
    with pytest.raises(Exception, match="too long"):
        group_writer.write([batch(("u", "a", 1.0, 1)), batch((too_long, "b", 1.0, 1))], [T0] * 2)
    assert stored(engine) == {}
    with engine.connect() as connection:
        assert connection.execute(select(users.c.id)).all() == []


def test_concurrent_groups_and_user_deletes_leave_no_orphans(
    engine: Engine, group_writer: GroupWriter
) -> None:
    # One thread writes groups of the same users while another deletes them again and again:
    # every stored rating keeps its user (nothing references a deleted one) and no write fails.
    stop = threading.Event()
    errors: list[BaseException] = []

    def delete_users() -> None:
        sessions = make_sessionmaker(engine, write=True)
        try:
            while not stop.is_set():
                with transaction(sessions) as session:
                    delete_user(session, "u1")
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    deleter = threading.Thread(target=delete_users)
    deleter.start()
    try:
        for round_ in range(200):
            group = [batch(("u1", f"i{round_}", 1.0, 1)), batch(("u2", f"i{round_}", 2.0, 1))]
            assert group_writer.write(group, [T0] * 2) == [UpsertCounts(1, 0, 0)] * 2
    finally:
        stop.set()
        deleter.join()
    assert errors == []
    orphans = text(
        "SELECT count(*) FROM ratings r LEFT JOIN users u ON u.id = r.user_id WHERE u.id IS NULL"
    )
    with engine.connect() as connection:
        assert connection.execute(orphans).scalar_one() == 0
    assert len([pair for pair in stored(engine) if pair[0] == "u2"]) == 200
