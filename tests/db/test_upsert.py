"""Bulk upsert: newest timestamp wins, batches are atomic, concurrent writers lose nothing."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import Engine, select

from service.db.session import make_sessionmaker, transaction
from service.db.tables import items, ratings, users
from service.db.upsert import (
    RatingBatch,
    UpsertCounts,
    prepare_batch,
    upsert_batches,
    upsert_ratings,
)

T0 = datetime(2024, 1, 1, tzinfo=UTC)


def batch(*rows: tuple[str, str, float | None, int]) -> RatingBatch:
    """A batch from (user, item, rating, seconds after T0) rows."""
    result = RatingBatch()
    for user, item, rating, seconds in rows:
        result.users.append(user)
        result.items.append(item)
        result.ratings.append(rating)
        result.event_times.append(T0 + timedelta(seconds=seconds))
    return result


def store(engine: Engine, rows: RatingBatch) -> UpsertCounts:
    with transaction(make_sessionmaker(engine, write=True)) as session:
        return upsert_ratings(session, rows, now=datetime.now(UTC))


def stored(engine: Engine) -> dict[tuple[str, str], tuple[float | None, datetime]]:
    query = (
        select(users.c.external_id, items.c.external_id, ratings.c.rating, ratings.c.event_at)
        .join(users, users.c.id == ratings.c.user_id)
        .join(items, items.c.id == ratings.c.item_id)
    )
    with engine.connect() as connection:
        return {(u, i): (r, t) for u, i, r, t in connection.execute(query)}


def history(engine: Engine, user: str) -> int:
    query = select(users.c.history_version).where(users.c.external_id == user)
    with engine.connect() as connection:
        return int(connection.execute(query).scalar_one())


def test_insert_then_newer_replaces_and_older_is_ignored(engine: Engine) -> None:
    assert store(engine, batch(("u", "a", 3.0, 10), ("u", "b", None, 10))) == UpsertCounts(2, 0, 0)
    assert history(engine, "u") == 1
    assert store(engine, batch(("u", "a", 4.0, 20))) == UpsertCounts(0, 1, 0)
    assert store(engine, batch(("u", "a", 1.0, 15))) == UpsertCounts(0, 0, 1)
    assert history(engine, "u") == 2  # the ignored row changed nothing
    assert stored(engine) == {
        ("u", "a"): (4.0, T0 + timedelta(seconds=20)),
        ("u", "b"): (None, T0 + timedelta(seconds=10)),
    }


def test_equal_timestamps_the_later_request_wins(engine: Engine) -> None:
    store(engine, batch(("u", "a", 3.0, 10)))
    assert store(engine, batch(("u", "a", 5.0, 10))) == UpsertCounts(0, 1, 0)
    assert stored(engine)[("u", "a")][0] == 5.0


def test_duplicates_within_a_batch_keep_the_winner(engine: Engine) -> None:
    rows = batch(("u", "a", 1.0, 10), ("u", "a", 2.0, 30), ("u", "a", 3.0, 20), ("u", "a", 4.0, 30))
    assert store(engine, rows) == UpsertCounts(1, 0, 3)
    assert stored(engine)[("u", "a")] == (4.0, T0 + timedelta(seconds=30))


def test_unicode_ids_round_trip(engine: Engine) -> None:
    names = ["Zoë", "用户", "🙂 smile", "a" * 128, 'O\'Brien "quoted" \\ back']
    store(engine, batch(*((name, name[::-1], 4.0, 1) for name in names)))
    assert set(stored(engine)) == {(name, name[::-1]) for name in names}


def test_ids_that_look_like_array_or_sql_syntax_round_trip(engine: Engine) -> None:
    names = ["{a,b}", "NULL", " padded ", "x,y", '"', "\\N", "a;b", "é\u2028f"]
    counts = store(engine, batch(*((name, name + "!", 2.0, 1) for name in names)))
    assert counts == UpsertCounts(len(names), 0, 0)
    assert set(stored(engine)) == {(name, name + "!") for name in names}
    assert store(engine, batch(*((name, name + "!", 3.0, 2) for name in names))).updated == 8


def test_a_failed_transaction_stores_nothing(engine: Engine) -> None:
    sessions = make_sessionmaker(engine, write=True)

    def fail_after_writing() -> None:
        with transaction(sessions) as session:
            upsert_ratings(session, batch(("u", "a", 3.0, 1), ("v", "b", 2.0, 1)), now=T0)
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        fail_after_writing()
    assert stored(engine) == {}
    with engine.connect() as connection:
        assert connection.execute(select(users.c.id)).all() == []


def test_concurrent_overlapping_batches_lose_and_duplicate_nothing(engine: Engine) -> None:
    # Both threads write the same 40 users x 25 items in opposite orders, 10 rounds each;
    # thread B's rows are always one second newer, so B's values must win everywhere.
    pairs = [(f"user{u}", f"item{i}") for u in range(40) for i in range(25)]
    errors: list[BaseException] = []
    start = threading.Barrier(2)

    def writer(value: float, offset: int, order: list[tuple[str, str]]) -> None:
        try:
            start.wait()
            for round_ in range(10):
                seconds = round_ * 10 + offset
                store(engine, batch(*((u, i, value, seconds) for u, i in order)))
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [
        threading.Thread(target=writer, args=(2.0, 0, pairs)),
        threading.Thread(target=writer, args=(5.0, 1, pairs[::-1])),
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    result = stored(engine)
    assert len(result) == len(pairs)
    assert all(value == (5.0, T0 + timedelta(seconds=91)) for value in result.values())
    with engine.connect() as connection:
        assert len(connection.execute(select(users.c.id)).all()) == 40
        assert len(connection.execute(select(items.c.id)).all()) == 25


def test_a_group_of_batches_stores_and_counts_as_one_after_another(engine: Engine) -> None:
    store(engine, batch(("u", "a", 2.0, 50)))
    group = [
        batch(("u", "a", 3.0, 50), ("u", "b", 1.0, 10)),
        batch(("u", "a", 4.0, 40), ("v", "c", 5.0, 10), ("v", "c", 4.0, 10)),
        batch(("u", "b", 2.0, 10), ("v", "c", 1.0, 5)),
    ]
    now = datetime.now(UTC)
    with transaction(make_sessionmaker(engine, write=True)) as session:
        counts = upsert_batches(session.connection(), group, [now] * len(group))
    assert counts == [
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


def test_a_group_that_changes_nothing_touches_no_history(engine: Engine) -> None:
    store(engine, batch(("u", "a", 2.0, 50)))
    now = datetime.now(UTC)
    with transaction(make_sessionmaker(engine, write=True)) as session:
        counts = upsert_batches(
            session.connection(), [batch(("u", "a", 1.0, 1)), batch(("u", "a", 1.0, 2))], [now] * 2
        )
    assert counts == [UpsertCounts(0, 0, 1), UpsertCounts(0, 0, 1)]
    assert history(engine, "u") == 1


def test_prepared_batches_store_what_unprepared_ones_store(engine: Engine) -> None:
    """`prepare_batch` (the importer's reader thread) changes how a batch is sent, not what."""
    rounds = [
        [("u", "a", 3.0, 10), ("u", "b", None, 10), ("v", "a", 1.0, 5)],
        [("u", "a", 4.0, 20), ("u", "a", 2.0, 20), ("v", "a", 1.5, 4), ("w", "c", 5.0, 1)],
        [("u", "b", 2.5, 10), ("w", "c", 0.5, 1), ("w", "c", 1.0, 0), ("x", "a", None, 3)],
    ]
    outcomes: dict[str, list[UpsertCounts]] = {}
    for prefix in ("plain-", "prepared-"):
        outcomes[prefix] = []
        for rows in rounds:
            prefixed = batch(
                *[(prefix + user, item, rating, at) for user, item, rating, at in rows]
            )
            if prefix == "prepared-":
                prepare_batch(prefixed, engine.dialect.name)
            outcomes[prefix].append(store(engine, prefixed))
    assert outcomes["plain-"] == outcomes["prepared-"]
    result = stored(engine)
    plain = {(u[len("plain-") :], i): v for (u, i), v in result.items() if u.startswith("plain-")}
    prepared = {(u[9:], i): v for (u, i), v in result.items() if u.startswith("prepared-")}
    assert plain == prepared
    assert prepared[("u", "a")] == (2.0, T0 + timedelta(seconds=20))  # equal time: the later row
    assert history(engine, "prepared-w") == history(engine, "plain-w") == 2
