"""Activation notices over PostgreSQL LISTEN/NOTIFY: delivered on commit, and only then."""

from __future__ import annotations

import queue
import time

from sqlalchemy.orm import sessionmaker

from service.db.notifications import ActivationListener, notify_activation
from service.db.session import create_db_engine
from tests.support.postgres import PostgresServer


def test_activation_notice_arrives_after_commit_only(postgres_server: PostgresServer) -> None:
    url = postgres_server.create_database("notifications")
    received: queue.Queue[int] = queue.Queue()
    listener = ActivationListener(url, received.put)
    engine = create_db_engine(url)
    try:
        listener.start()
        time.sleep(1.0)  # the listener has connected and issued LISTEN
        sessions = sessionmaker(engine)
        with sessions() as session:
            notify_activation(session, 7)
            session.rollback()
        with sessions() as session:
            notify_activation(session, 8)
            time.sleep(0.5)
            assert received.empty()  # not before commit
            session.commit()
        assert received.get(timeout=5) == 8
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
