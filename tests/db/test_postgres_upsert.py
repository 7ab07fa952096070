"""PostgreSQL's COPY path of large writes: the same rules as the array path, no orphans."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import Engine, func, select, text

from service.db import postgres_stage
from service.db.postgres_upsert import COPY_MIN_ROWS
from service.db.session import make_sessionmaker, transaction
from service.db.tables import ratings
from service.db.upsert import UpsertCounts, upsert_batches
from tests.db.test_rating_integrity import race_writes_against_user_deletions
from tests.db.test_upsert import T0, batch, history, store, stored


@pytest.fixture(params=["postgresql"])
def backend(request: pytest.FixtureRequest) -> str:
    """COPY is PostgreSQL's: this module runs on PostgreSQL only (nothing is skipped)."""
    return str(request.param)


@pytest.fixture
def pg_engine(engine: Engine) -> Engine:
    assert engine.dialect.name == "postgresql"
    return engine


def test_large_batch_keeps_the_upsert_rules(pg_engine: Engine) -> None:
    size = COPY_MIN_ROWS + 500
    existing = batch(("u0", "i0", 2.0, 50), ("u0", "i1", 2.0, 50))
    assert store(pg_engine, existing) == UpsertCounts(2, 0, 0)
    rows = [(f"u{n % 50}", f"i{n}", 3.0, 10) for n in range(size)]
    rows += [("u0", "i0", 4.0, 50), ("u0", "i1", 4.0, 49)]  # equal time: replaces; older: not
    rows += [("u7", "i7", 5.0, 10)]  # a later duplicate in the batch wins its tie
    counts = store(pg_engine, batch(*rows))
    # (u0, i0) existed and is replaced; the batch's older (u0, i0) and (u0, i1) rows and its
    # first (u7, i7) row change nothing.
    assert counts == UpsertCounts(size - 1, 1, 3)
    result = stored(pg_engine)
    assert len(result) == size + 1
    assert result[("u0", "i0")] == (4.0, T0 + timedelta(seconds=50))
    assert result[("u0", "i1")] == (2.0, T0 + timedelta(seconds=50))
    assert result[("u7", "i7")] == (5.0, T0 + timedelta(seconds=10))
    assert history(pg_engine, "u3") == 1


def test_every_copied_rating_has_its_user_and_item(pg_engine: Engine) -> None:
    store(pg_engine, batch(*[(f"u{n % 97}", f"i{n % 1001}", 1.0, n) for n in range(5_000)]))
    orphans = text(
        "SELECT count(*) FROM ratings r LEFT JOIN users u ON u.id = r.user_id"
        " LEFT JOIN items i ON i.id = r.item_id WHERE u.id IS NULL OR i.id IS NULL"
    )
    with pg_engine.connect() as connection:
        assert connection.execute(orphans).scalar_one() == 0
        assert connection.execute(select(func.count()).select_from(ratings)).scalar_one() > 4_000


@pytest.fixture
def staged(pg_engine: Engine, monkeypatch: pytest.MonkeyPatch) -> Engine:
    """Every single batch takes the staging path (ids resolved on the server)."""
    monkeypatch.setattr(postgres_stage, "STAGE_MIN_ROWS", 1)
    return pg_engine


def test_staged_batches_keep_the_upsert_rules(staged: Engine) -> None:
    assert store(staged, batch(("u", "a", 3.0, 10), ("u", "b", None, 10))) == UpsertCounts(2, 0, 0)
    assert history(staged, "u") == 1
    assert store(staged, batch(("u", "a", 4.0, 20))) == UpsertCounts(0, 1, 0)
    assert store(staged, batch(("u", "a", 1.0, 15))) == UpsertCounts(0, 0, 1)
    assert history(staged, "u") == 2  # the ignored row changed nothing
    rows = batch(("v", "a", 1.0, 10), ("v", "a", 2.0, 30), ("v", "a", 3.0, 20), ("v", "a", 5.0, 30))
    assert store(staged, rows) == UpsertCounts(1, 0, 3)
    assert store(staged, batch(("u", "b", 2.5, 10))) == UpsertCounts(0, 1, 0)  # equal: replaces
    assert stored(staged) == {
        ("u", "a"): (4.0, T0 + timedelta(seconds=20)),
        ("u", "b"): (2.5, T0 + timedelta(seconds=10)),
        ("v", "a"): (5.0, T0 + timedelta(seconds=30)),
    }


def test_staged_ids_round_trip(staged: Engine) -> None:
    names = ["Zoë", "用户", "🙂 smile", "a" * 128, 'O\'Brien "quoted" \\ back', "\\N", "x\\ty"]
    store(staged, batch(*[(name, name, 0.1 + n, n) for n, name in enumerate(names)]))
    result = stored(staged)
    assert {(name, name) for name in names} == set(result)
    assert result[("\\N", "\\N")][0] == 5.1


def test_staged_writes_and_user_deletions_leave_no_orphans(staged: Engine) -> None:
    race_writes_against_user_deletions(staged, rounds=40)


def test_a_group_of_batches_over_the_copy_size_keeps_the_rules(pg_engine: Engine) -> None:
    first = batch(*[(f"u{n % 40}", f"i{n}", 1.0, 10) for n in range(COPY_MIN_ROWS)])
    second = batch(("u0", "i0", 2.0, 10), ("u1", "i1", 2.0, 5), ("u1", "i1", 3.0, 20))
    with transaction(make_sessionmaker(pg_engine, write=True)) as session:
        counts = upsert_batches(session.connection(), [first, second], [T0, T0])
    assert counts == [UpsertCounts(COPY_MIN_ROWS, 0, 0), UpsertCounts(0, 2, 1)]
    result = stored(pg_engine)
    assert len(result) == COPY_MIN_ROWS
    assert result[("u0", "i0")] == (2.0, T0 + timedelta(seconds=10))
    assert result[("u1", "i1")] == (3.0, T0 + timedelta(seconds=20))
    assert history(pg_engine, "u1") == 1
