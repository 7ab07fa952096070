"""Side information read with a ratings snapshot, and users' attributes in the database."""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import Engine

from service.db import queries
from service.db.session import make_sessionmaker, transaction
from service.db.snapshot import read_ratings_snapshot
from service.db.upsert import RatingBatch, upsert_ratings
from service.db.user_attributes import (
    attributes_fingerprint,
    get_user_attributes,
    put_user_attributes,
)

NOW = datetime(2026, 3, 1, tzinfo=UTC)


def test_a_snapshot_reads_tags_and_attributes_when_asked(engine: Engine) -> None:
    writes = make_sessionmaker(engine, write=True)
    with transaction(writes) as session:
        batch = RatingBatch(
            users=["u1", "u2"], items=["a", "b"], ratings=[4.0, 3.0], event_times=[NOW, NOW]
        )
        upsert_ratings(session, batch, now=NOW)
        queries.put_item(
            session, "a", title="A", tags=["x", "y"], attributes={"year": 1999}, now=NOW
        )
        queries.put_item(session, "cold", title=None, tags=["x"], attributes={}, now=NOW)
        put_user_attributes(session, "u1", {"age": 30, "pro": True}, now=NOW)
        put_user_attributes(session, "u2", {}, now=NOW)
    assert read_ratings_snapshot(engine).features is None
    features = read_ratings_snapshot(engine, with_features=True).features
    assert features is not None
    assert features.item_tags == {"a": ["x", "y"], "cold": ["x"]}
    assert features.item_attributes == {"a": {"year": 1999}}
    assert features.user_attributes == {"u1": {"age": 30, "pro": True}}
    assert features.summary() == {"users_with_attributes": 1, "items_with_features": 2}


def test_put_replaces_and_the_fingerprint_follows(engine: Engine) -> None:
    writes = make_sessionmaker(engine, write=True)
    with engine.connect() as connection:
        empty = attributes_fingerprint(connection)
    with transaction(writes) as session:
        _, created = put_user_attributes(session, "v", {"a": 1}, now=NOW)
        assert created
        _, created = put_user_attributes(session, "v", {"b": "x"}, now=NOW)
        assert not created
    with transaction(make_sessionmaker(engine)) as session:
        found = get_user_attributes(session, "v")
        assert found is not None
        assert found.attributes == {"b": "x"}
        assert get_user_attributes(session, "w") is None
    with engine.connect() as connection:
        assert attributes_fingerprint(connection) != empty
