"""`Client`: the service's calls as blocking methods that return typed replies."""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping, Sequence
from types import TracebackType
from typing import Any, TypeVar

import httpx

from mfserve_client import calls
from mfserve_client.errors import InvalidInputError, MfserveError
from mfserve_client.inputs import HistoryInput, RatingInput, Timestamp, chunks, rating_row
from mfserve_client.inputs import rating_rows as to_rows
from mfserve_client.models import (
    BatchRecommendation,
    FoldIn,
    Health,
    IngestResult,
    Item,
    Job,
    JobAccepted,
    JobStatus,
    ModelVersion,
    Readiness,
    Recommendation,
    Scores,
    Similar,
    UserAttributes,
    UserRating,
)
from mfserve_client.options import ClientOptions
from mfserve_client.pagination import Pager
from mfserve_client.retry import RetryPolicy
from mfserve_client.transport import default_headers, http_timeout, send
from mfserve_client.waiting import JobWait, serves

T = TypeVar("T")


class Client:
    """A blocking client of one mfserve service (or gateway); use it as a context manager or
    `close()` it. Safe to share between threads."""

    def __init__(
        self,
        base_url: str,
        api_key: str | None = None,
        *,
        timeout: float | httpx.Timeout | None = 10.0,
        retry: RetryPolicy | None = None,
        batch_size: int = 10_000,
        page_size: int = 100,
    ) -> None:
        """`api_key` goes out as `Authorization: Bearer <key>` (today the admin token);
        `timeout` is in seconds (None: wait forever); `batch_size` is the most ratings per
        request (the service's `MFSERVE_MAX_BATCH_ROWS`); `page_size` the rows per list page."""
        self.options = ClientOptions.of(base_url, retry, batch_size, page_size)
        self._http = httpx.Client(
            base_url=self.options.base_url,
            headers=default_headers(api_key),
            timeout=http_timeout(timeout),
        )

    def _send(self, call: calls.Call[T]) -> T:
        return send(self._http, self.options.retry, call)

    def close(self) -> None:
        """Close the connections."""
        self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    # ratings

    def post_ratings(self, ratings: Iterable[RatingInput]) -> IngestResult:
        """Store ratings given as dicts, tuples or `Rating`s, `batch_size` rows per request.

        Each request is stored all together or not at all; when one fails, those before it stay
        stored (the exception's `stored` counts them) and a 422's rows are numbered within the
        whole of `ratings`."""
        rows = to_rows(ratings)
        total = IngestResult(inserted=0, updated=0, ignored=0)
        for offset, batch in chunks(rows, self.options.batch_size):
            try:
                total += self._send(calls.post_ratings(batch))
            except MfserveError as error:
                if isinstance(error, InvalidInputError):
                    error.shift_rows(offset)
                error.stored = total
                raise
        return total

    def post_rating(
        self,
        user: str,
        item: str,
        rating: float | None = None,
        timestamp: Timestamp | None = None,
    ) -> IngestResult:
        """Store one rating (None: an implicit interaction; no timestamp: now)."""
        return self._send(calls.post_rating(rating_row((user, item, rating, timestamp))))

    def user_ratings(
        self, user: str, *, page_size: int | None = None, cursor: str | None = None
    ) -> Pager[UserRating]:
        """A user's ratings in a stable order, fetched page by page while iterating."""
        limit = page_size or self.options.page_size
        return Pager(lambda c: self._send(calls.user_ratings_page(user, limit, c)), cursor)

    def delete_rating(self, user: str, item: str) -> None:
        """Forget a user's rating of an item (`NotFoundError` when there is none)."""
        self._send(calls.delete_rating(user, item))

    def delete_user(self, user: str) -> None:
        """Delete a user and every rating of theirs (`NotFoundError` for an unknown user)."""
        self._send(calls.delete_user(user))

    # items

    def put_item(
        self,
        item: str,
        *,
        title: str | None = None,
        tags: Sequence[str] = (),
        attributes: Mapping[str, Any] | None = None,
    ) -> Item:
        """Create an item or replace all of its metadata (what is not given is cleared)."""
        return self._send(calls.put_item(item, title, tags, attributes))

    def get_item(self, item: str) -> Item:
        """An item's metadata (`NotFoundError` when no rating or `put_item` created it)."""
        return self._send(calls.get_item(item))

    def items(self, *, page_size: int | None = None, cursor: str | None = None) -> Pager[Item]:
        """Every item in a stable order, fetched page by page while iterating."""
        limit = page_size or self.options.page_size
        return Pager(lambda c: self._send(calls.items_page(limit, c)), cursor)

    def put_user(self, user: str, attributes: Mapping[str, Any] | None = None) -> UserAttributes:
        """Create a user or replace all of their attributes (strings, numbers, booleans)."""
        return self._send(calls.put_user(user, attributes))

    def get_user(self, user: str) -> UserAttributes:
        """A user's attributes (`NotFoundError` for an unknown user)."""
        return self._send(calls.get_user(user))

    # serving

    def recommend(
        self,
        user: str,
        n: int = 10,
        *,
        exclude_rated: bool = True,
        exclude: Iterable[str] = (),
        tags: Iterable[str] = (),
    ) -> Recommendation:
        """The top `n` items for a user (`NoModelError` before any model is served)."""
        return self._send(calls.recommend(user, n, exclude_rated, exclude, tags))

    def recommend_history(
        self,
        history: HistoryInput,
        n: int = 10,
        *,
        exclude_rated: bool = True,
        exclude: Iterable[str] = (),
        tags: Iterable[str] = (),
    ) -> Recommendation:
        """The top `n` items for a history that is not stored (an anonymous session)."""
        return self._send(calls.recommend_history(history, n, exclude_rated, exclude, tags))

    def recommend_batch(
        self,
        users: Iterable[str],
        n: int = 10,
        *,
        exclude_rated: bool = True,
        exclude: Iterable[str] = (),
        tags: Iterable[str] = (),
    ) -> BatchRecommendation:
        """The top `n` items for each of many users, in request order, from one model version."""
        return self._send(calls.recommend_batch(users, n, exclude_rated, exclude, tags))

    def scores(
        self,
        user: str | None = None,
        history: HistoryInput | None = None,
        *,
        items: Iterable[str],
    ) -> Scores:
        """Scores of `items` for a user or for a history (exactly one), in request order."""
        return self._send(calls.scores(user, history, items))

    def fold_in(self, history: HistoryInput) -> FoldIn:
        """The embedding (and bias) the served model gives a history; nothing is stored."""
        return self._send(calls.fold_in(history))

    def similar(self, item: str, n: int = 10) -> Similar:
        """The `n` items most similar to `item` by the cosine of their factors."""
        return self._send(calls.similar(item, n))

    # probes

    def health(self) -> Health:
        """Liveness: the process answers."""
        return self._send(calls.health())

    def readiness(self) -> Readiness:
        """Readiness and the model version served (not ready is a reply, not an error)."""
        return self._send(calls.readiness())

    def metrics(self) -> str:
        """The Prometheus metrics, as text."""
        return self._send(calls.metrics())

    # admin

    def retrain(
        self, algorithm: str | None = None, config: Mapping[str, Any] | None = None
    ) -> JobAccepted:
        """Queue a training job (the service's default algorithm and config when not given)."""
        return self._send(calls.retrain(algorithm, config))

    def jobs(
        self,
        *,
        status: JobStatus | str | None = None,
        page_size: int | None = None,
        cursor: str | None = None,
    ) -> Pager[Job]:
        """Training jobs, newest first (only those of `status` when given)."""
        limit = page_size or self.options.page_size
        return Pager(lambda c: self._send(calls.jobs_page(status, limit, c)), cursor)

    def job(self, job_id: int) -> Job:
        """One training job with its live progress, metrics or error."""
        return self._send(calls.job(job_id))

    def cancel_job(self, job_id: int) -> Job:
        """Cancel a job: a queued one at once, a running one after its epoch (409 if ended)."""
        return self._send(calls.cancel_job(job_id))

    def wait_for_job(
        self,
        job_id: int,
        *,
        timeout: float | None = None,
        poll_interval: float = 0.5,
        served: bool = True,
        raise_on_failure: bool = True,
    ) -> Job:
        """Poll a job until it ends and return its last state; with `served`, also until the
        answering API process serves the version it published.

        Raises `JobFailedError` when it failed or was cancelled (unless `raise_on_failure` is
        false) and `JobWaitTimeoutError` after `timeout` seconds."""
        wait = JobWait(timeout, raise_on_failure)
        job = self.job(job_id)
        while not wait.ended(job):
            wait.check_time(job)
            time.sleep(poll_interval)
            job = self.job(job_id)
        if served and job.status is JobStatus.SUCCEEDED:
            while not serves(self.readiness(), job):
                wait.check_time(job)
                time.sleep(poll_interval)
        return job

    def models(
        self, *, page_size: int | None = None, cursor: str | None = None
    ) -> Pager[ModelVersion]:
        """Published model versions, newest first."""
        limit = page_size or self.options.page_size
        return Pager(lambda c: self._send(calls.models_page(limit, c)), cursor)

    def model(self, version: int) -> ModelVersion:
        """One published model version."""
        return self._send(calls.model(version))

    def active_model(self) -> ModelVersion:
        """The active model version (`NotFoundError` before any was trained)."""
        return self._send(calls.active_model())

    def activate(self, version: int) -> ModelVersion:
        """Make a version active (rollback or roll forward); API processes swap to it."""
        return self._send(calls.activate(version))
