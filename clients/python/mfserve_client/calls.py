"""Every call of the service as a description (method, path, query, body, how to read the reply),
shared by `Client` and `AsyncClient`, which only differ in how they send it."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar
from urllib.parse import quote

import httpx
from pydantic import BaseModel

from mfserve_client.inputs import HistoryInput, history_rows
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
    Page,
    Readiness,
    Recommendation,
    Scores,
    Similar,
    UserAttributes,
    UserRating,
)

T = TypeVar("T")
M = TypeVar("M", bound=BaseModel)

QueryValue = str | int | float | bool | None


@dataclass(frozen=True)
class Call(Generic[T]):
    """One HTTP request to make and how to turn its successful reply into `T`."""

    method: str
    path: str
    read: Callable[[httpx.Response], T]
    params: list[tuple[str, QueryValue]] = field(default_factory=list)
    body: Any = None
    idempotent: bool = False
    """Whether the request may be sent again after a 503 or a connection failure."""
    accept: frozenset[int] = frozenset()
    """Error statuses whose reply is read like a success (`/readyz`'s 503)."""


def segment(value: str, name: str) -> str:
    """An id as one percent-encoded path segment."""
    if not isinstance(value, str) or not value:
        raise ValueError(f"{name} must be a non-empty string, got {value!r}")
    if "/" in value:
        raise ValueError(f"{name} {value!r} contains '/', which cannot be addressed in a URL path")
    return quote(value, safe="")


def _model(cls: type[M]) -> Callable[[httpx.Response], M]:
    def read(response: httpx.Response) -> M:
        return cls.model_validate_json(response.content)

    return read


def _nothing(_response: httpx.Response) -> None:
    return None


def _text(response: httpx.Response) -> str:
    return response.text


def _page_params(limit: int, cursor: str | None) -> list[tuple[str, QueryValue]]:
    params: list[tuple[str, QueryValue]] = [("limit", limit)]
    if cursor is not None:
        params.append(("cursor", cursor))
    return params


def _filters(
    n: int, exclude_rated: bool, exclude: Iterable[str], tags: Iterable[str]
) -> dict[str, Any]:
    return {"n": n, "exclude_rated": exclude_rated, "exclude": list(exclude), "tags": list(tags)}


# ratings and items


def post_ratings(rows: list[dict[str, Any]]) -> Call[IngestResult]:
    """`POST /ratings` with a batch of rows (never retried: a write)."""
    return Call("POST", "/ratings", _model(IngestResult), body={"ratings": rows})


def post_rating(row: dict[str, Any]) -> Call[IngestResult]:
    """`POST /ratings` with one rating (never retried: a write)."""
    return Call("POST", "/ratings", _model(IngestResult), body=row)


def user_ratings_page(user: str, limit: int, cursor: str | None) -> Call[Page[UserRating]]:
    """`GET /users/{user}/ratings`: one page."""
    path = f"/users/{segment(user, 'user')}/ratings"
    read = _model(Page[UserRating])
    return Call("GET", path, read, _page_params(limit, cursor), idempotent=True)


def delete_rating(user: str, item: str) -> Call[None]:
    """`DELETE /users/{user}/ratings/{item}`."""
    path = f"/users/{segment(user, 'user')}/ratings/{segment(item, 'item')}"
    return Call("DELETE", path, _nothing, idempotent=True)


def delete_user(user: str) -> Call[None]:
    """`DELETE /users/{user}`."""
    return Call("DELETE", f"/users/{segment(user, 'user')}", _nothing, idempotent=True)


def put_item(
    item: str, title: str | None, tags: Sequence[str], attributes: Mapping[str, Any] | None
) -> Call[Item]:
    """`PUT /items/{item}`: replaces all of the item's metadata."""
    body = {"title": title, "tags": list(tags), "attributes": dict(attributes or {})}
    path = f"/items/{segment(item, 'item')}"
    return Call("PUT", path, _model(Item), body=body, idempotent=True)


def get_item(item: str) -> Call[Item]:
    """`GET /items/{item}`."""
    return Call("GET", f"/items/{segment(item, 'item')}", _model(Item), idempotent=True)


def items_page(limit: int, cursor: str | None) -> Call[Page[Item]]:
    """`GET /items`: one page."""
    return Call("GET", "/items", _model(Page[Item]), _page_params(limit, cursor), idempotent=True)


def put_user(user: str, attributes: Mapping[str, Any] | None) -> Call[UserAttributes]:
    """`PUT /users/{user}`: replaces all of the user's attributes."""
    body = {"attributes": dict(attributes or {})}
    path = f"/users/{segment(user, 'user')}"
    return Call("PUT", path, _model(UserAttributes), body=body, idempotent=True)


def get_user(user: str) -> Call[UserAttributes]:
    """`GET /users/{user}`."""
    path = f"/users/{segment(user, 'user')}"
    return Call("GET", path, _model(UserAttributes), idempotent=True)


# serving


def recommend(
    user: str, n: int, exclude_rated: bool, exclude: Iterable[str], tags: Iterable[str]
) -> Call[Recommendation]:
    """`GET /recommend/{user}`."""
    params: list[tuple[str, QueryValue]] = [("n", n)]
    if not exclude_rated:
        params.append(("exclude_rated", "false"))
    params += [("exclude", item) for item in exclude]
    params += [("tag", tag) for tag in tags]
    path = f"/recommend/{segment(user, 'user')}"
    return Call("GET", path, _model(Recommendation), params, idempotent=True)


def recommend_history(
    history: HistoryInput,
    n: int,
    exclude_rated: bool,
    exclude: Iterable[str],
    tags: Iterable[str],
) -> Call[Recommendation]:
    """`POST /recommend`: a read, so retried like a GET."""
    body = {"history": history_rows(history), **_filters(n, exclude_rated, exclude, tags)}
    return Call("POST", "/recommend", _model(Recommendation), body=body, idempotent=True)


def recommend_batch(
    users: Iterable[str], n: int, exclude_rated: bool, exclude: Iterable[str], tags: Iterable[str]
) -> Call[BatchRecommendation]:
    """`POST /recommend/batch`: a read, so retried like a GET."""
    body = {"users": list(users), **_filters(n, exclude_rated, exclude, tags)}
    return Call("POST", "/recommend/batch", _model(BatchRecommendation), body=body, idempotent=True)


def scores(user: str | None, history: HistoryInput | None, items: Iterable[str]) -> Call[Scores]:
    """`POST /scores` for a user or a history: a read, so retried like a GET."""
    if (user is None) == (history is None):
        raise ValueError("give exactly one of user or history")
    body: dict[str, Any] = {"items": list(items)}
    if user is not None:
        body["user"] = user
    if history is not None:
        body["history"] = history_rows(history)
    return Call("POST", "/scores", _model(Scores), body=body, idempotent=True)


def fold_in(history: HistoryInput) -> Call[FoldIn]:
    """`POST /foldin`: a read, so retried like a GET."""
    body = {"history": history_rows(history)}
    return Call("POST", "/foldin", _model(FoldIn), body=body, idempotent=True)


def similar(item: str, n: int) -> Call[Similar]:
    """`GET /items/{item}/similar`."""
    path = f"/items/{segment(item, 'item')}/similar"
    return Call("GET", path, _model(Similar), [("n", n)], idempotent=True)


# probes


def health() -> Call[Health]:
    """`GET /healthz`."""
    return Call("GET", "/healthz", _model(Health), idempotent=True)


def readiness() -> Call[Readiness]:
    """`GET /readyz`; its 503 (not ready) is read as a reply, not retried."""
    accept = frozenset({503})
    return Call("GET", "/readyz", _model(Readiness), idempotent=True, accept=accept)


def metrics() -> Call[str]:
    """`GET /metrics`: Prometheus text."""
    return Call("GET", "/metrics", _text, idempotent=True)


# admin


def retrain(algorithm: str | None, config: Mapping[str, Any] | None) -> Call[JobAccepted]:
    """`POST /admin/retrain` (never retried: it queues a job)."""
    body: dict[str, Any] = {}
    if algorithm is not None:
        body["algorithm"] = algorithm
    if config is not None:
        body["config"] = dict(config)
    return Call("POST", "/admin/retrain", _model(JobAccepted), body=body)


def jobs_page(status: JobStatus | str | None, limit: int, cursor: str | None) -> Call[Page[Job]]:
    """`GET /admin/jobs`: one page, newest first."""
    params = _page_params(limit, cursor)
    if status is not None:
        params.append(("status", str(status)))
    return Call("GET", "/admin/jobs", _model(Page[Job]), params, idempotent=True)


def job(job_id: int) -> Call[Job]:
    """`GET /admin/jobs/{job_id}`."""
    return Call("GET", f"/admin/jobs/{int(job_id)}", _model(Job), idempotent=True)


def cancel_job(job_id: int) -> Call[Job]:
    """`POST /admin/jobs/{job_id}/cancel` (never retried: 409 once the job ended)."""
    return Call("POST", f"/admin/jobs/{int(job_id)}/cancel", _model(Job))


def models_page(limit: int, cursor: str | None) -> Call[Page[ModelVersion]]:
    """`GET /models`: one page, newest first."""
    read = _model(Page[ModelVersion])
    return Call("GET", "/models", read, _page_params(limit, cursor), idempotent=True)


def model(version: int) -> Call[ModelVersion]:
    """`GET /models/{version}`."""
    return Call("GET", f"/models/{int(version)}", _model(ModelVersion), idempotent=True)


def active_model() -> Call[ModelVersion]:
    """`GET /models/active`."""
    return Call("GET", "/models/active", _model(ModelVersion), idempotent=True)


def activate(version: int) -> Call[ModelVersion]:
    """`POST /admin/models/{version}/activate` (never retried: it changes what is served)."""
    return Call("POST", f"/admin/models/{int(version)}/activate", _model(ModelVersion))
