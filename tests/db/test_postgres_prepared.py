"""PostgreSQL's path for batches made ready ahead (`prepare_batch`, as `mfserve import` does):
the same upsert rules as every other path, and no orphans under concurrent user deletions."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import Engine, text

from service.db.session import make_sessionmaker, transaction
from service.db.upsert import RatingBatch, UpsertCounts, prepare_batch, upsert_ratings
from tests.db.test_rating_integrity import ORPHANS, race_writes_against_user_deletions
from tests.db.test_upsert import T0, batch, history, stored


@pytest.fixture(params=["postgresql"])
def backend(request: pytest.FixtureRequest) -> str:
    """The prepared path is PostgreSQL's: this module runs on PostgreSQL only."""
    return str(request.param)


def store(engine: Engine, rows: RatingBatch) -> UpsertCounts:
    """Store a batch the way the importer does: prepared first, then upserted."""
    prepare_batch(rows, engine.dialect.name)
    assert rows.prepared is not None
    with transaction(make_sessionmaker(engine, write=True)) as session:
        return upsert_ratings(session, rows, now=datetime.now(UTC))


def test_prepared_batches_keep_the_upsert_rules(engine: Engine) -> None:
    assert store(engine, batch(("u", "a", 3.0, 10), ("u", "b", None, 10))) == UpsertCounts(2, 0, 0)
    assert history(engine, "u") == 1
    assert store(engine, batch(("u", "a", 4.0, 20))) == UpsertCounts(0, 1, 0)
    assert store(engine, batch(("u", "a", 1.0, 15))) == UpsertCounts(0, 0, 1)
    assert history(engine, "u") == 2  # the ignored row changed nothing
    rows = batch(("v", "a", 1.0, 10), ("v", "a", 2.0, 30), ("v", "a", 3.0, 20), ("v", "a", 5.0, 30))
    assert store(engine, rows) == UpsertCounts(1, 0, 3)  # newest wins, ties: the later row
    assert store(engine, batch(("u", "b", 2.5, 10))) == UpsertCounts(0, 1, 0)  # equal: replaces
    assert stored(engine) == {
        ("u", "a"): (4.0, T0 + timedelta(seconds=20)),
        ("u", "b"): (2.5, T0 + timedelta(seconds=10)),
        ("v", "a"): (5.0, T0 + timedelta(seconds=30)),
    }


def test_a_large_prepared_batch_with_duplicates(engine: Engine) -> None:
    rows = [(f"u{n % 300}", f"i{n % 1_000}", float(1 + n % 5), n % 7) for n in range(12_000)]
    counts = store(engine, batch(*rows))
    winners: dict[tuple[str, str], tuple[float, int]] = {}
    for user, item, rating, seconds in rows:
        if (user, item) not in winners or seconds >= winners[(user, item)][1]:
            winners[(user, item)] = (rating, seconds)
    assert counts == UpsertCounts(len(winners), 0, len(rows) - len(winners))
    assert stored(engine) == {
        pair: (rating, T0 + timedelta(seconds=seconds))
        for pair, (rating, seconds) in winners.items()
    }


def test_prepared_ids_round_trip(engine: Engine) -> None:
    names = [
        "Zoë",
        "用户",
        "🙂 smile",
        "a" * 128,
        'O\'Brien "quoted" \\ back',
        "\\N",
        "x\\ty",
        "{a,b}",
    ]
    store(engine, batch(*[(name, name, 0.5 + n * 0.5, n) for n, name in enumerate(names)]))
    result = stored(engine)
    assert {(name, name) for name in names} == set(result)
    assert result[("\\N", "\\N")][0] == 3.0


def test_prepared_writes_and_user_deletions_leave_no_orphans(engine: Engine) -> None:
    race_writes_against_user_deletions(engine, rounds=40, prepared=True)


def test_users_and_items_created_meanwhile_are_asked_for_again(engine: Engine) -> None:
    """A user and an item another transaction creates while the batch's statement runs are
    missing from its result; they are found (and the user locked) by asking again."""
    with engine.connect() as other:
        other.execute(
            text(
                "INSERT INTO users (external_id, created_at, history_changed_at,"
                " history_version) VALUES ('late', now(), now(), 0)"
            )
        )
        other.execute(
            text(
                "INSERT INTO items (external_id, tags, attributes, created_at, updated_at)"
                " VALUES ('late item', '[]', '{}', now(), now())"
            )
        )
        results: list[UpsertCounts] = []
        rows = batch(("late", "late item", 4.0, 10), ("early", "late item", 3.0, 10))

        def write() -> None:
            results.append(store(engine, rows))

        writer = threading.Thread(target=write)
        writer.start()
        waiting = text(
            "SELECT count(*) FROM pg_stat_activity"
            " WHERE wait_event_type = 'Lock' AND datname = current_database()"
        )
        with engine.connect() as watcher:  # the batch waits for the uncommitted rows
            for _ in range(500):
                if watcher.execute(waiting).scalar_one():
                    break
                threading.Event().wait(0.01)
            else:
                pytest.fail("the batch never waited for the other transaction")
        other.commit()
        writer.join()
    assert results == [UpsertCounts(2, 0, 0)]
    assert set(stored(engine)) == {("late", "late item"), ("early", "late item")}
    assert history(engine, "late") == 1
    with engine.connect() as connection:
        assert connection.execute(ORPHANS).scalar_one() == 0
