"""Fixtures of the worker tests: a database holding small seeded ratings."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import Engine

from service.db.session import make_sessionmaker, transaction
from service.db.upsert import RatingBatch, upsert_ratings
from tests.support.synthetic import low_rank_ratings

T0 = datetime(2026, 2, 1, tzinfo=UTC)


def store_ratings(engine: Engine, n_users: int = 60, n_items: int = 40, seed: int = 7) -> int:
    """Store seeded low-rank ratings through the ingest upsert; returns how many."""
    data = low_rank_ratings(n_users=n_users, n_items=n_items, seed=seed)
    batch = RatingBatch(
        users=[data.user_ids[u] for u in data.users],
        items=[data.item_ids[i] for i in data.items],
        ratings=[float(v) for v in data.values],
        event_times=[T0 + timedelta(minutes=k) for k in range(len(data))],
    )
    with transaction(make_sessionmaker(engine, write=True)) as session:
        upsert_ratings(session, batch, now=datetime.now(UTC))
    return len(data)


@pytest.fixture
def rated_engine(engine: Engine) -> Engine:
    """The test's engine, on a database holding seeded ratings."""
    store_ratings(engine)
    return engine
