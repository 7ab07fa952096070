"""Group commit: concurrent rating writes of one process share a transaction and its commit."""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import Connection, Engine

from service.db import postgres_group
from service.db.session import WRITE_OPTION
from service.db.upsert import RatingBatch, UpsertCounts, upsert_batches

MAX_GROUP_ROWS = 20_000
"""Rows one group transaction takes at most; requests beyond wait for the next group."""

GATHER_SECONDS = 0.002
"""How long the writer lets a group fill while clients write concurrently (see `_run`)."""


_Waiter = Future[UpsertCounts] | asyncio.Future[UpsertCounts]


@dataclass(slots=True)
class _Request:
    """One validated batch waiting for its group; `waiter` is settled once its group ends.

    `loop` is the event loop of an asyncio waiter (None for a thread's future).
    """

    batch: RatingBatch
    now: datetime
    waiter: _Waiter
    loop: asyncio.AbstractEventLoop | None = None
    counts: UpsertCounts | None = None
    error: BaseException | None = None


class RatingWriter:
    """Writes validated batches in one writer thread; batches queued together commit together.

    A batch's future is settled only once the transaction holding it has committed (or
    failed), so an answer still means the data is durable. A group's batches are upserted as
    if one after another in arrival order (`upsert_batches`). While a group commits, the
    batches that arrive queue up and form the next group.
    """

    def __init__(
        self,
        engine: Engine,
        *,
        max_group_rows: int = MAX_GROUP_ROWS,
        gather_seconds: float = GATHER_SECONDS,
    ):
        self._engine = engine.execution_options(**{WRITE_OPTION: True})
        self._connection: Connection | None = None
        self._postgres = engine.dialect.name == "postgresql"
        self._group_writer: postgres_group.GroupWriter | None = None
        self._max_group_rows = max_group_rows
        self._gather_seconds = gather_seconds
        self._last_group_size = 0
        self._condition = threading.Condition()
        self._queue: list[_Request] = []
        self._writing = False
        self._closed = False
        self._thread: threading.Thread | None = None

    @property
    def queued(self) -> int:
        """How many batches wait for a group to take them."""
        with self._condition:
            return len(self._queue)

    @property
    def writing(self) -> bool:
        """Whether a group's transaction is under way."""
        with self._condition:
            return self._writing

    def submit(self, batch: RatingBatch, *, now: datetime) -> Future[UpsertCounts]:
        """Queue a batch (stored all or nothing); its future holds the counts once committed."""
        future: Future[UpsertCounts] = Future()
        self._enqueue(_Request(batch, now, future))
        return future

    async def store(self, batch: RatingBatch, *, now: datetime) -> UpsertCounts:
        """Store a batch and return its counts once committed, without blocking the loop."""
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[UpsertCounts] = loop.create_future()
        self._enqueue(_Request(batch, now, waiter, loop))
        return await waiter

    def write(self, batch: RatingBatch, *, now: datetime) -> UpsertCounts:
        """Store a batch and return its counts once committed (blocking)."""
        return self.submit(batch, now=now).result()

    def _enqueue(self, request: _Request) -> None:
        """Queue a request for the writer thread, starting the thread at first use."""
        with self._condition:
            if self._closed:
                raise RuntimeError("the rating writer is closed")
            self._queue.append(request)
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name="mfserve-rating-writer", daemon=True
                )
                self._thread.start()
            self._condition.notify()

    def close(self) -> None:
        """Write what is queued, then stop the writer thread."""
        with self._condition:
            self._closed = True
            self._condition.notify()
            thread = self._thread
        if thread is not None:
            thread.join()

    def _run(self) -> None:
        """The writer thread: take the queued batches as a group and write it, until closed."""
        try:
            self._write_until_closed()
        finally:
            self._drop_connection()

    def _write_until_closed(self) -> None:
        """Take the queued batches as a group and write it, until closed and drained."""
        while True:
            with self._condition:
                while not self._queue and not self._closed:
                    self._condition.wait()
                if not self._queue:
                    return
                # The last group shared a commit: its clients are sending their next requests.
                # Taking the first of them at once would write many small groups, each paying
                # a transaction's fixed cost; a moment's wait lets them arrive.
                gather = self._last_group_size > len(self._queue) and not self._closed
            if gather:
                time.sleep(self._gather_seconds)
            with self._condition:
                group = self._take_group()
                self._last_group_size = len(group)
                self._writing = True
            try:
                self._write_group(group)
            except BaseException as exc:  # a bug: still answer every waiting caller
                for request in group:
                    if request.counts is None and request.error is None:
                        request.error = exc
                raise
            finally:
                with self._condition:
                    self._writing = False
                _settle(group)

    def _take_group(self) -> list[_Request]:
        """The oldest queued batches, up to the row limit (at least one)."""
        rows = 0
        taken = 0
        for request in self._queue:
            if taken and rows + len(request.batch) > self._max_group_rows:
                break
            rows += len(request.batch)
            taken += 1
        group, self._queue = self._queue[:taken], self._queue[taken:]
        return group

    def _write_group(self, group: list[_Request]) -> None:
        """One transaction for the group; should it fail, each batch alone instead."""
        try:
            self._write_together(group)
        except Exception as exc:
            if len(group) == 1:
                group[0].error = exc
                return
            # Nothing of the group was committed: give every batch its own transaction, so
            # that one batch's failure cannot fail its neighbours.
            for request in group:
                try:
                    self._write_together([request])
                except Exception as exc:
                    request.error = exc

    def _write_together(self, group: list[_Request]) -> None:
        """Upsert the group's batches in one transaction; record their counts once committed."""
        # One connection for every group: a pool checkout (with its ping on PostgreSQL) and
        # a session per group cost more than a small group's own statements.
        if self._connection is None:
            self._connection = self._engine.connect()
        connection = self._connection
        batches = [request.batch for request in group]
        nows = [request.now for request in group]
        try:
            if self._postgres and sum(map(len, batches)) <= postgres_group.MAX_GROUP_ROWS:
                # Small groups, the many single ratings of concurrent clients: one round trip.
                if self._group_writer is None:
                    self._group_writer = postgres_group.GroupWriter(
                        connection.connection.driver_connection
                    )
                counts = self._group_writer.write(batches, nows)
            else:
                with connection.begin():
                    counts = upsert_batches(connection, batches, nows)
        except BaseException:
            self._drop_connection()  # it may be broken: the next transaction takes a new one
            raise
        for request, request_counts in zip(group, counts, strict=True):
            request.counts = request_counts

    def _drop_connection(self) -> None:
        """Close the writer's connection, if it has one (errors closing it do not matter)."""
        connection, self._connection = self._connection, None
        self._group_writer = None
        if connection is not None:
            with contextlib.suppress(Exception):
                connection.close()


def _settle(group: list[_Request]) -> None:
    """Hand each request its outcome: one call into each event loop for all of its waiters."""
    by_loop: dict[asyncio.AbstractEventLoop, list[_Request]] = {}
    for request in group:
        if request.loop is None:
            _settle_one(request)
        else:
            by_loop.setdefault(request.loop, []).append(request)
    for loop, requests in by_loop.items():
        with contextlib.suppress(RuntimeError):  # a closed loop: nobody waits any more
            loop.call_soon_threadsafe(_settle_all, requests)


def _settle_all(requests: list[_Request]) -> None:
    """Settle the waiters of one event loop (called in that loop)."""
    for request in requests:
        _settle_one(request)


def _settle_one(request: _Request) -> None:
    """Set the waiter's result or error, unless its caller gave up waiting (cancelled)."""
    waiter = request.waiter
    if waiter.cancelled():
        return
    if request.error is not None:
        waiter.set_exception(request.error)
    else:
        waiter.set_result(request.counts)  # type: ignore[arg-type]
