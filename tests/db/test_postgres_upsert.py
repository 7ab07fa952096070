"""PostgreSQL's COPY path of large writes: the same rules as the array path, no orphans."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import Engine, func, select, text

from service.db.postgres_upsert import COPY_MIN_ROWS
from service.db.tables import ratings
from service.db.upsert import UpsertCounts
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
