"""Activation notices over PostgreSQL LISTEN/NOTIFY: delivered on commit, and only then."""

from __future__ import annotations

import queue
import time

import psycopg
from sqlalchemy.orm import sessionmaker

from service.db.notifications import ACTIVATION_CHANNEL, ActivationListener, notify_activation
from service.db.session import create_db_engine
from tests.support.postgres import PostgresServer

HANG_GUARD_S = 60.0
"""Only stops a hung test (a listener that never listens, a notice that never comes)."""


def _wait_listening(server: PostgresServer, database: str) -> None:
    """Return once a backend of `database` has run the listener's LISTEN."""
    dsn = f"host=127.0.0.1 port={server.port} user=postgres dbname=postgres"
    deadline = time.monotonic() + HANG_GUARD_S
    with psycopg.connect(dsn, autocommit=True) as connection:
        while not connection.execute(
            "SELECT 1 FROM pg_stat_activity WHERE datname = %s AND query = %s",
            (database, f"LISTEN {ACTIVATION_CHANNEL}"),
        ).fetchall():
            assert time.monotonic() < deadline, "the listener never issued LISTEN"
            time.sleep(0.05)


def test_activation_notice_arrives_after_commit_only(postgres_server: PostgresServer) -> None:
    url = postgres_server.create_database("notifications")
    received: queue.Queue[int] = queue.Queue()
    listener = ActivationListener(url, received.put)
    engine = create_db_engine(url)
    try:
        listener.start()
        _wait_listening(postgres_server, "notifications")
        sessions = sessionmaker(engine)
        with sessions() as session:
            notify_activation(session, 7)
            session.rollback()
        with sessions() as session:
            notify_activation(session, 8)
            time.sleep(0.5)
            assert received.empty()  # not before commit
            session.commit()
        assert received.get(timeout=HANG_GUARD_S) == 8
        assert received.empty()  # the rolled-back notice never arrives
    finally:
        listener.stop()
        engine.dispose()
        postgres_server.drop_database("notifications")


def test_notify_is_a_no_op_on_sqlite(tmp_path: object) -> None:
    engine = create_db_engine(f"sqlite:///{tmp_path}/plain.db")
    try:
        with sessionmaker(engine)() as session:
            notify_activation(session, 1)  # no error, nothing sent
    finally:
        engine.dispose()
