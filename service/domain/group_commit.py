"""Group commit: concurrent rating writes of one process share a transaction and its commit."""

from __future__ import annotations

import asyncio
import threading
from concurrent.futures import Future
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy.orm import Session, sessionmaker

from service.db.session import transaction
from service.db.upsert import RatingBatch, UpsertCounts, upsert_batches

MAX_GROUP_ROWS = 20_000
"""Rows one group transaction takes at most; requests beyond wait for the next group."""


@dataclass(slots=True)
class _Request:
    """One validated batch waiting for its group; `outcome` is settled once its group ends."""

    batch: RatingBatch
    now: datetime
    outcome: Future[UpsertCounts]


class RatingWriter:
    """Writes validated batches in one writer thread; batches queued together commit together.

    A batch's future is settled only once the transaction holding it has committed (or
    failed), so an answer still means the data is durable. A group's batches are upserted as
    if one after another in arrival order (`upsert_batches`). While a group commits, the
    batches that arrive queue up and form the next group.
    """

    def __init__(self, sessions: sessionmaker[Session], *, max_group_rows: int = MAX_GROUP_ROWS):
        self._sessions = sessions
        self._max_group_rows = max_group_rows
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
        request = _Request(batch, now, Future())
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
        return request.outcome

    async def store(self, batch: RatingBatch, *, now: datetime) -> UpsertCounts:
        """Store a batch and return its counts once committed, without blocking the loop."""
        return await asyncio.wrap_future(self.submit(batch, now=now))

    def write(self, batch: RatingBatch, *, now: datetime) -> UpsertCounts:
        """Store a batch and return its counts once committed (blocking)."""
        return self.submit(batch, now=now).result()

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
        while True:
            with self._condition:
                while not self._queue and not self._closed:
                    self._condition.wait()
                if not self._queue:
                    return
                group = self._take_group()
                self._writing = bool(group)
            try:
                if group:
                    self._write_group(group)
            finally:
                for request in group:
                    if not request.outcome.done():  # only after an error that is a bug
                        request.outcome.set_exception(RuntimeError("the rating write failed"))
                with self._condition:
                    self._writing = False

    def _take_group(self) -> list[_Request]:
        """The oldest queued batches, up to the row limit (at least one), not cancelled."""
        rows = 0
        taken = 0
        for request in self._queue:
            if taken and rows + len(request.batch) > self._max_group_rows:
                break
            rows += len(request.batch)
            taken += 1
        group, self._queue = self._queue[:taken], self._queue[taken:]
        return [request for request in group if request.outcome.set_running_or_notify_cancel()]

    def _write_group(self, group: list[_Request]) -> None:
        """One transaction for the group; should it fail, each batch alone instead."""
        try:
            self._write_together(group)
        except Exception as exc:
            if len(group) == 1:
                group[0].outcome.set_exception(exc)
                return
            # Nothing of the group was committed: give every batch its own transaction, so
            # that one batch's failure cannot fail its neighbours.
            for request in group:
                try:
                    self._write_together([request])
                except Exception as exc:
                    request.outcome.set_exception(exc)

    def _write_together(self, group: list[_Request]) -> None:
        """Upsert the group's batches in one transaction, then settle their futures."""
        with transaction(self._sessions) as session:
            counts = upsert_batches(
                session.connection(),
                [request.batch for request in group],
                [request.now for request in group],
            )
        for request, request_counts in zip(group, counts, strict=True):
            request.outcome.set_result(request_counts)
