"""Group commit of `POST /ratings`: concurrent requests share a transaction, each on its own."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine, func, select, text

from service.db.session import WRITE_OPTION
from service.db.tables import ratings
from service.db.upsert import RatingBatch, UpsertCounts
from service.domain.group_commit import RatingWriter
from tests.support.server import ApiProcess


def stored_count(engine: Engine) -> int:
    with engine.connect() as connection:
        return int(connection.execute(select(func.count()).select_from(ratings)).scalar_one())


HANG_GUARD_S = 120.0
"""Only stops a hung test; no waiting time is promised by it."""


def wait_for(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + HANG_GUARD_S
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.01)


@contextmanager
def writers_blocked(engine: Engine) -> Iterator[None]:
    """Hold the write lock the API's rating transactions need until the block ends."""
    with engine.execution_options(**{WRITE_OPTION: True}).connect() as connection:
        connection.begin()  # SQLite: BEGIN IMMEDIATE, the one write lock
        if engine.dialect.name == "postgresql":
            connection.exec_driver_sql("LOCK TABLE ratings IN EXCLUSIVE MODE")
        try:
            yield
        finally:
            connection.rollback()


def test_concurrent_single_ratings_are_all_stored(api_server: ApiProcess, engine: Engine) -> None:
    def post_many(client_index: int) -> list[int]:
        with httpx.Client(base_url=api_server.base_url, timeout=60) as http:
            return [
                http.post(
                    "/ratings",
                    json={"user": f"u{client_index}", "item": f"i{n}", "rating": 3.0},
                ).status_code
                for n in range(20)
            ]

    with ThreadPoolExecutor(32) as pool:
        statuses = [code for codes in pool.map(post_many, range(32)) for code in codes]
    assert statuses == [201] * 640
    assert stored_count(engine) == 640


def test_one_group_keeps_request_order_and_isolates_an_invalid_request(
    client: TestClient, engine: Engine
) -> None:
    writer = client.app_state["service"].rating_writer
    assert isinstance(writer, RatingWriter)
    replies: dict[str, httpx.Response] = {}

    def post(name: str, body: dict[str, Any]) -> threading.Thread:
        def run() -> None:
            replies[name] = client.post("/ratings", json=body)

        thread = threading.Thread(target=run)
        thread.start()
        return thread

    pair = {"user": "alice", "item": "tt1"}
    threads = []
    with writers_blocked(engine):
        # The first request's transaction waits for the lock; the next ones queue behind it
        # in a known order and then form one group.
        threads.append(post("first", {"user": "bob", "item": "tt9", "rating": 1.0}))
        wait_for(lambda: writer.writing and writer.queued == 0, "the first group to start")
        for queued, (name, body) in enumerate(
            [
                ("earlier", {**pair, "rating": 2.0, "timestamp": 1_000}),
                ("later", {**pair, "rating": 4.0, "timestamp": 1_000}),
                ("older", {**pair, "rating": 1.0, "timestamp": 999}),
                ("neighbour", {"user": "carol", "item": "tt2", "rating": 5.0}),
            ],
            start=1,
        ):
            threads.append(post(name, body))
            wait_for(lambda n=queued: writer.queued == n, f"{name} to be queued")  # type: ignore[misc]
        invalid = client.post("/ratings", json={"user": "dave", "item": "tt3", "rating": 99})
        assert invalid.status_code == 422, invalid.text
        assert writer.queued == 4  # the group is still waiting, unharmed
    for thread in threads:
        thread.join(60)
    assert {name: reply.status_code for name, reply in replies.items()} == dict.fromkeys(
        ["first", "earlier", "later", "older", "neighbour"], 201
    )
    assert replies["earlier"].json() == {"inserted": 1, "updated": 0, "ignored": 0}
    assert replies["later"].json() == {"inserted": 0, "updated": 1, "ignored": 0}
    assert replies["older"].json() == {"inserted": 0, "updated": 0, "ignored": 1}
    assert replies["neighbour"].json() == {"inserted": 1, "updated": 0, "ignored": 0}
    stored = client.get("/users/alice/ratings").json()["items"]
    assert [(entry["item"], entry["rating"]) for entry in stored] == [("tt1", 4.0)]
    assert client.get("/users/dave/ratings").status_code == 404
    assert stored_count(engine) == 3


def test_kill_9_under_load_loses_no_acknowledged_rating(
    api_server: ApiProcess, engine: Engine
) -> None:
    acknowledged: list[tuple[str, str]] = []
    lock = threading.Lock()
    stop = threading.Event()

    def post_until_stopped(client_index: int) -> None:
        with httpx.Client(base_url=api_server.base_url, timeout=30) as http:
            for n in range(100_000):
                if stop.is_set():
                    return
                key = (f"k{client_index}", f"i{n}")
                try:
                    reply = http.post("/ratings", json={"user": key[0], "item": key[1]})
                except httpx.HTTPError:
                    return  # the server died under this request: not acknowledged
                if reply.status_code == 201:
                    with lock:
                        acknowledged.append(key)

    with ThreadPoolExecutor(16) as pool:
        futures = [pool.submit(post_until_stopped, index) for index in range(16)]
        wait_for(lambda: len(acknowledged) >= 300, "300 acknowledged ratings")
        api_server.process.kill()
        api_server.process.wait()
        stop.set()
        for future in futures:
            future.result()
    with engine.connect() as connection:
        rows = connection.execute(
            text(
                "SELECT u.external_id, i.external_id FROM ratings r"
                " JOIN users u ON u.id = r.user_id JOIN items i ON i.id = r.item_id"
            )
        ).all()
    stored = {(user, item) for user, item in rows}
    missing = [key for key in acknowledged if key not in stored]
    assert not missing, f"{len(missing)} acknowledged ratings lost, e.g. {missing[:5]}"


@pytest.mark.parametrize("backend", ["postgresql"])
def test_a_group_the_server_refuses_is_retried_request_by_request(engine: Engine) -> None:
    # Validation cannot catch everything the server refuses; here an id over the column's
    # length (PostgreSQL checks it, SQLite does not) fails the one-round-trip group write.
    def one(user: str, item: str) -> RatingBatch:
        return RatingBatch([user], [item], [3.0], [datetime(2024, 1, 1, tzinfo=UTC)])

    now = datetime.now(UTC)
    writer = RatingWriter(engine)
    try:
        with writers_blocked(engine):
            first = writer.submit(one("u0", "i0"), now=now)
            wait_for(lambda: writer.writing and writer.queued == 0, "the first group to start")
            group = [one("u1", "i1"), one("x" * 300, "i2"), one("u3", "i3")]
            futures = [writer.submit(rows, now=now) for rows in group]
        assert first.result(HANG_GUARD_S) == UpsertCounts(1, 0, 0)
        assert futures[0].result(HANG_GUARD_S) == UpsertCounts(1, 0, 0)
        with pytest.raises(Exception, match="too long"):
            futures[1].result(HANG_GUARD_S)
        assert futures[2].result(HANG_GUARD_S) == UpsertCounts(1, 0, 0)
    finally:
        writer.close()
    assert stored_count(engine) == 3
