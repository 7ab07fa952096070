"""Group commit: concurrent rating writes of one process share a transaction and its commit."""

from __future__ import annotations

import threading
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy.orm import Session, sessionmaker

from service.db.session import transaction
from service.db.upsert import RatingBatch, UpsertCounts, lock_group, upsert_ratings

MAX_GROUP_ROWS = 20_000
"""Rows one group transaction takes at most; requests beyond wait for the next group."""


@dataclass(slots=True)
class _Request:
    """One validated request waiting for its group: its outcome is set once its group ends."""

    batch: RatingBatch
    now: datetime
    counts: UpsertCounts | None = None
    error: BaseException | None = None
    done: bool = False


class RatingWriter:
    """Writes validated batches; writers that arrive together are committed together.

    A caller blocks until the transaction holding its batch has committed (or failed), so an
    answer still means the data is durable. Within a group the batches are upserted one after
    another in arrival order, exactly as separate transactions in that order would be. The
    first waiting caller leads: it writes everything queued so far while the others wait, and
    whoever queued during that commit forms the next group.
    """

    def __init__(self, sessions: sessionmaker[Session], *, max_group_rows: int = MAX_GROUP_ROWS):
        self._sessions = sessions
        self._max_group_rows = max_group_rows
        self._condition = threading.Condition()
        self._queue: list[_Request] = []
        self._leading = False

    @property
    def queued(self) -> int:
        """How many requests wait for a group to take them."""
        with self._condition:
            return len(self._queue)

    @property
    def writing(self) -> bool:
        """Whether a group's transaction is under way."""
        with self._condition:
            return self._leading

    def write(self, batch: RatingBatch, *, now: datetime) -> UpsertCounts:
        """Store a batch (all or nothing) and return its counts once it is committed."""
        request = _Request(batch, now)
        with self._condition:
            self._queue.append(request)
            while True:
                if request.done:
                    break
                if not self._leading:
                    self._leading = True
                    group = self._take_group()
                    self._condition.release()
                    try:
                        self._write_group(group)
                    finally:
                        self._condition.acquire()
                        self._leading = False
                        self._condition.notify_all()
                    continue
                self._condition.wait()
        if request.error is not None:
            raise request.error
        assert request.counts is not None
        return request.counts

    def _take_group(self) -> list[_Request]:
        """The oldest queued requests, up to the row limit (at least one)."""
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
        """One transaction for the group; should a write fail, each request alone instead."""
        try:
            self._write_together(group)
        except Exception as exc:
            if len(group) == 1:
                self._finish(group[0], error=exc)
                return
            # Nothing of the group was committed: give every request its own transaction,
            # so that one request's failure cannot fail its neighbours.
            for request in group:
                try:
                    self._write_together([request])
                except Exception as exc:
                    self._finish(request, error=exc)

    def _write_together(self, group: list[_Request]) -> None:
        """Upsert the group's batches in order in one transaction, then mark them done."""
        counts: list[UpsertCounts] = []
        with transaction(self._sessions) as session:
            if len(group) > 1:
                lock_group(session, [request.batch for request in group], now=group[0].now)
            for request in group:
                counts.append(upsert_ratings(session, request.batch, now=request.now))
        for request, request_counts in zip(group, counts, strict=True):
            self._finish(request, counts=request_counts)

    def _finish(
        self,
        request: _Request,
        *,
        counts: UpsertCounts | None = None,
        error: BaseException | None = None,
    ) -> None:
        """Record a request's outcome (counts or error); its caller returns it once woken."""
        request.counts = counts
        request.error = error
        request.done = True
