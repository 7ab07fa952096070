"""The client's ratings, items, probes and admin calls against a real API process with no worker
(jobs stay queued, nothing is served), on SQLite and PostgreSQL.

The module's server refuses batches over 50 rows and bodies over 300 kB, so that the client's
batch splitting and the 413 show with small data. Each test uses ids of its own."""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
from mfserve_client import (
    NO_RETRIES,
    AsyncClient,
    AuthenticationError,
    Client,
    ConflictError,
    IngestResult,
    InvalidInputError,
    JobStatus,
    NoModelError,
    NotFoundError,
    PayloadTooLargeError,
    PermissionDeniedError,
    Rating,
    RetryPolicy,
    calls,
)

from tests.client.conftest import TOKEN, service_env
from tests.support.server import ApiProcess, run_api_process

BATCH = 50


@pytest.fixture(scope="module")
def data_server(module_database_url: str, module_artifacts: Path) -> Iterator[ApiProcess]:
    """An API process without a worker, with small batch and body limits."""
    env = service_env(
        module_artifacts,
        MFSERVE_MAX_BATCH_ROWS=str(BATCH),
        MFSERVE_MAX_BODY_BYTES="300000",
    )
    with run_api_process(module_database_url, env=env) as server:
        yield server


@pytest.fixture
def api(data_server: ApiProcess) -> Iterator[Client]:
    """A client with the admin token and the server's batch limit."""
    with Client(data_server.base_url, api_key=TOKEN, batch_size=BATCH) as client:
        yield client


def test_post_ratings_as_dicts_tuples_and_ratings(api: Client) -> None:
    when = datetime(2024, 5, 1, 12, tzinfo=UTC)
    result = api.post_ratings(
        [
            {"user": "d1-alice", "item": "tt1", "rating": 4.5, "timestamp": when},
            ("d1-alice", "tt2"),
            ("d1-alice", "tt3", 3.0),
            ("d1-alice", "tt4", 2.0, 1714564800),
            Rating("d1-alice", "tt5", 5.0, "2024-05-01T12:00:00Z"),
        ]
    )
    assert result == IngestResult(inserted=5, updated=0, ignored=0)
    stored = {r.item: r for r in api.user_ratings("d1-alice")}
    assert sorted(stored) == ["tt1", "tt2", "tt3", "tt4", "tt5"]
    assert stored["tt1"].rating == 4.5
    assert stored["tt1"].timestamp == when
    assert stored["tt2"].rating is None  # an implicit interaction
    assert stored["tt4"].timestamp == when
    assert stored["tt5"].timestamp == when

    # one rating; a newer one replaces, an older one is ignored
    assert api.post_rating("d1-alice", "tt1", 2.0, when + timedelta(hours=1)).updated == 1
    assert api.post_rating("d1-alice", "tt1", 1.0, when).ignored == 1
    assert {r.item: r.rating for r in api.user_ratings("d1-alice")}["tt1"] == 2.0


def test_long_lists_are_cut_into_batches_of_the_servers_limit(
    api: Client, data_server: ApiProcess
) -> None:
    rows = [("d2-user", f"item{k}", 1 + k % 5) for k in range(2 * BATCH + 20)]
    with Client(data_server.base_url) as unsplit:
        with pytest.raises(InvalidInputError) as refused:
            unsplit.post_ratings(rows)  # one request of 120 rows: over the limit
        assert refused.value.errors[0].field == "body"
        assert str(BATCH) in refused.value.errors[0].message
    assert api.post_ratings(rows) == IngestResult(inserted=len(rows), updated=0, ignored=0)
    assert len(list(api.user_ratings("d2-user"))) == len(rows)


def test_invalid_rows_are_named_with_their_index(api: Client) -> None:
    rows = [("d3-user", f"item{k}", 3.0) for k in range(6)]
    rows[1] = ("d3-user", "item1", 9.0)
    rows[4] = ("d3-user", "", 3.0)
    with pytest.raises(InvalidInputError) as caught:
        api.post_ratings(rows)
    error = caught.value
    assert (error.status_code, error.code, error.error_count) == (422, "invalid_input", 2)
    assert sorted(error.rows) == [1, 4]
    assert error.rows[1][0].field == "rating"
    assert "9" in error.rows[1][0].message
    assert error.rows[4][0].field == "item"
    assert error.stored == IngestResult(inserted=0, updated=0, ignored=0)
    assert "row 1 rating" in str(error)
    with pytest.raises(NotFoundError):
        list(api.user_ratings("d3-user"))  # the batch stored nothing, not even the user


def test_an_invalid_row_in_a_later_batch_keeps_the_earlier_batches(api: Client) -> None:
    rows = [("d4-user", f"item{k}", 3.0) for k in range(2 * BATCH + 20)]
    bad = BATCH + 25
    rows[bad] = ("d4-user", f"item{bad}", -1.0)
    with pytest.raises(InvalidInputError) as caught:
        api.post_ratings(rows)
    assert sorted(caught.value.rows) == [bad]  # numbered within the whole list
    assert caught.value.stored == IngestResult(inserted=BATCH, updated=0, ignored=0)
    assert len(list(api.user_ratings("d4-user"))) == BATCH


def test_ratings_of_other_shapes_are_refused_before_sending(api: Client) -> None:
    with pytest.raises(TypeError, match="tuple"):
        api.post_ratings([("only-a-user",)])
    with pytest.raises(TypeError, match="dict or a tuple"):
        api.post_ratings([42])  # type: ignore[list-item]


def test_user_ratings_page_by_page(api: Client) -> None:
    api.post_ratings([("d5-user", f"item{k:02d}", 1 + k % 5) for k in range(7)])
    pager = api.user_ratings("d5-user", page_size=3)
    pages = list(pager.pages())
    assert [len(page.items) for page in pages] == [3, 3, 1]
    assert [page.next_cursor is None for page in pages] == [False, False, True]
    every = [r.item for r in pager]
    assert every == [r.item for page in pages for r in page.items]
    assert sorted(every) == [f"item{k:02d}" for k in range(7)]
    # a pager restarts on each iteration; one may start from a cursor
    assert [r.item for r in pager] == every
    rest = api.user_ratings("d5-user", page_size=3, cursor=pages[0].next_cursor)
    assert [r.item for r in rest] == every[3:]


def test_delete_a_rating_and_a_user(api: Client) -> None:
    api.post_ratings([("d6-user", "a"), ("d6-user", "b")])
    api.delete_rating("d6-user", "a")
    assert [r.item for r in api.user_ratings("d6-user")] == ["b"]
    with pytest.raises(NotFoundError) as caught:
        api.delete_rating("d6-user", "a")
    assert (caught.value.status_code, caught.value.code) == (404, "not_found")
    api.delete_user("d6-user")
    with pytest.raises(NotFoundError):
        api.delete_user("d6-user")
    with pytest.raises(NotFoundError):
        list(api.user_ratings("d6-user"))


def test_ids_are_percent_encoded_in_paths(api: Client) -> None:
    user, item = "Zoë #1?&x=y", "100% ünïcode"
    api.post_ratings([(user, item, 4.0)])
    assert [r.item for r in api.user_ratings(user)] == [item]
    assert api.get_item(item).item == item
    api.delete_rating(user, item)
    with pytest.raises(ValueError, match="'/'"):
        api.delete_user("a/b")


def test_items_put_get_and_list(api: Client) -> None:
    created = api.put_item("d7-i1", title="One", tags=["drama"], attributes={"year": 1994})
    assert (created.item, created.title, created.tags, created.attributes) == (
        "d7-i1",
        "One",
        ["drama"],
        {"year": 1994},
    )
    replaced = api.put_item("d7-i1", tags=["comedy"])  # absent fields are cleared
    assert (replaced.title, replaced.tags, replaced.attributes) == (None, ["comedy"], {})
    assert api.get_item("d7-i1") == replaced
    for k in range(2, 6):
        api.put_item(f"d7-i{k}")
    pages = list(api.items(page_size=2).pages())
    assert len(pages) >= 3
    assert all(len(page.items) == 2 for page in pages[:-1])
    listed = [item.item for item in api.items(page_size=2)]
    assert listed == [item.item for page in pages for item in page.items]
    assert len(set(listed)) == len(listed)
    assert {f"d7-i{k}" for k in range(1, 6)} <= set(listed)
    assert listed == [item.item for item in api.items(page_size=1000)]
    with pytest.raises(NotFoundError, match="unknown item"):
        api.get_item("d7-no-such-item")
    with pytest.raises(InvalidInputError) as caught:
        api.put_item("d7-i1", tags=[""])
    assert caught.value.errors[0].field is not None


def test_user_attributes_put_and_get(api: Client) -> None:
    stored = api.put_user("attr-user", {"age": 41, "country": "DE", "pro": False})
    assert stored.attributes == {"age": 41, "country": "DE", "pro": False}
    assert api.get_user("attr-user").attributes == stored.attributes
    with pytest.raises(InvalidInputError):
        api.put_user("attr-user", {"nested": {"no": 1}})
    with pytest.raises(NotFoundError):
        api.get_user("never-seen")


def test_a_body_over_the_limit_is_payload_too_large(api: Client) -> None:
    with pytest.raises(PayloadTooLargeError) as caught:
        api.put_item("d8-big", attributes={"blob": "x" * 400_000})
    assert (caught.value.status_code, caught.value.code) == (413, "payload_too_large")


def test_probes(api: Client) -> None:
    assert api.health().status == "ok"
    readiness = api.readiness()
    assert readiness.ready
    assert readiness.database == "ok"
    assert readiness.model_version is None
    assert "mfserve_" in api.metrics()


def test_serving_calls_before_any_model_raise_no_model_after_retrying(
    data_server: ApiProcess, caplog: pytest.LogCaptureFixture
) -> None:
    policy = RetryPolicy(max_retries=2, backoff=0.01)
    with (
        Client(data_server.base_url, retry=policy) as api,
        caplog.at_level(logging.INFO, logger="mfserve_client"),
    ):
        with pytest.raises(NoModelError) as caught:
            api.recommend("anyone")
        assert (caught.value.status_code, caught.value.code) == (503, "no_model")
        assert len(caplog.records) == 2  # two retries, then the error
        for call in (
            lambda: api.recommend_history(["x"]),
            lambda: api.recommend_batch(["anyone"]),
            lambda: api.scores("anyone", items=["x"]),
            lambda: api.fold_in({"x": 4.0}),
            lambda: api.similar("x"),
        ):
            with pytest.raises(NoModelError):
                call()
    with pytest.raises(ValueError, match="exactly one"):
        api.scores(items=["x"])


def test_admin_calls_need_the_token(data_server: ApiProcess) -> None:
    with Client(data_server.base_url) as anonymous, pytest.raises(AuthenticationError) as caught:
        anonymous.retrain()
    assert (caught.value.status_code, caught.value.code) == (401, "unauthorized")
    with Client(data_server.base_url, api_key="wrong") as wrong:
        with pytest.raises(PermissionDeniedError) as refused:
            list(wrong.jobs())
        assert (refused.value.status_code, refused.value.code) == (403, "forbidden")
        with pytest.raises(PermissionDeniedError):
            wrong.active_model()


def test_retrain_jobs_and_cancel(api: Client) -> None:
    accepted = [api.retrain("als-biased", {"epochs": 2}), api.retrain(), api.retrain("popular")]
    assert all(job.status is JobStatus.QUEUED for job in accepted)
    ids = [job.job_id for job in accepted]
    job = api.job(ids[0])
    assert (job.algorithm, job.config, job.requested_by) == ("als-biased", {"epochs": 2}, "admin")
    assert job.progress.epoch is None
    assert api.job(ids[1]).algorithm == "als-biased"  # the configured default

    # newest first, across pages
    pages = list(api.jobs(page_size=2).pages())
    listed = [j.job_id for page in pages for j in page.items]
    assert len(pages) >= 2
    assert listed == sorted(listed, reverse=True)
    assert set(ids) <= set(listed)

    cancelled = [api.cancel_job(job_id) for job_id in ids]  # queued: cancelled at once
    assert all(j.status is JobStatus.CANCELLED for j in cancelled)
    assert set(ids) <= {j.job_id for j in api.jobs(status=JobStatus.CANCELLED)}
    assert not set(ids) & {j.job_id for j in api.jobs(status="queued")}
    with pytest.raises(ConflictError) as caught:
        api.cancel_job(ids[0])
    assert (caught.value.status_code, caught.value.code) == (409, "conflict")
    with pytest.raises(NotFoundError):
        api.job(999_999)


def test_bad_retrains_name_the_field(api: Client) -> None:
    with pytest.raises(InvalidInputError) as caught:
        api.retrain("no-such-algorithm")
    assert caught.value.errors[0].field == "algorithm"
    with pytest.raises(InvalidInputError) as caught:
        api.retrain("als-biased", {"epochs": -1})
    assert caught.value.errors


def test_model_calls_before_any_model(api: Client) -> None:
    assert list(api.models()) == []
    with pytest.raises(NotFoundError):
        api.active_model()
    with pytest.raises(NotFoundError):
        api.model(1)
    with pytest.raises(NotFoundError):
        api.activate(1)


def test_every_operation_of_the_openapi_document_has_a_call(data_server: ApiProcess) -> None:
    document = httpx.get(f"{data_server.base_url}/openapi.json").json()
    operations = {
        (method.upper(), path) for path, methods in document["paths"].items() for method in methods
    }
    built = [
        calls.post_ratings([]),
        calls.user_ratings_page("u", 10, None),
        calls.delete_rating("u", "i"),
        calls.delete_user("u"),
        calls.put_item("i", None, (), None),
        calls.get_item("i"),
        calls.items_page(10, None),
        calls.put_user("u", None),
        calls.get_user("u"),
        calls.recommend("u", 10, True, (), ()),
        calls.recommend_history([], 10, True, (), ()),
        calls.recommend_batch(["u"], 10, True, (), ()),
        calls.scores("u", None, ["i"]),
        calls.fold_in([]),
        calls.similar("i", 10),
        calls.health(),
        calls.readiness(),
        calls.retrain(None, None),
        calls.jobs_page(None, 10, None),
        calls.job(1),
        calls.cancel_job(1),
        calls.models_page(10, None),
        calls.model(1),
        calls.active_model(),
        calls.activate(1),
    ]

    def covered(method: str, template: str) -> bool:
        pattern = re.sub(r"\{[^}]+\}", "[^/]+", template)
        return any(c.method == method and re.fullmatch(pattern, c.path) for c in built)

    missing = sorted(op for op in operations if not covered(*op))
    assert not missing, f"operations without a client call: {missing}"
    assert len(operations) == 25


async def _async_data_calls(base_url: str) -> None:
    async with AsyncClient(base_url, api_key=TOKEN, batch_size=BATCH) as api:
        rows = [("a1-user", f"item{k:03d}", 1 + k % 5) for k in range(2 * BATCH + 5)]
        assert (await api.post_ratings(rows)).inserted == len(rows)
        assert (await api.post_rating("a1-user", "item000", 5.0)).updated == 1
        pages = [page async for page in api.user_ratings("a1-user", page_size=40).pages()]
        assert [len(page.items) for page in pages] == [40, 40, 25]
        listed = [r.item async for r in api.user_ratings("a1-user", page_size=40)]
        assert listed == [r.item for page in pages for r in page.items]
        bad = [*rows[:BATCH], ("a1-user", "late", 7.0)]
        with pytest.raises(InvalidInputError) as caught:
            await api.post_ratings(bad)
        assert sorted(caught.value.rows) == [BATCH]
        await api.delete_rating("a1-user", "item000")
        with pytest.raises(NotFoundError):
            await api.delete_rating("a1-user", "item000")
        await api.delete_user("a1-user")
        with pytest.raises(NotFoundError):
            await api.user_ratings("a1-user").to_list()

        assert (await api.put_item("a1-item", title="T", tags=["x"])).tags == ["x"]
        assert (await api.get_item("a1-item")).title == "T"
        assert "a1-item" in [item.item async for item in api.items(page_size=3)]
        assert (await api.health()).status == "ok"
        assert (await api.readiness()).ready
        assert "mfserve_" in await api.metrics()

        job_id = (await api.retrain("popular")).job_id
        assert (await api.job(job_id)).status is JobStatus.QUEUED
        assert job_id in [job.job_id async for job in api.jobs(status="queued", page_size=1)]
        assert (await api.cancel_job(job_id)).status is JobStatus.CANCELLED
        with pytest.raises(ConflictError):
            await api.cancel_job(job_id)
        assert await api.models().to_list() == []
        with pytest.raises(NotFoundError):
            await api.active_model()
        with pytest.raises(NotFoundError):
            await api.model(1)
        with pytest.raises(NotFoundError):
            await api.activate(1)
    async with AsyncClient(base_url, retry=NO_RETRIES) as anonymous:
        with pytest.raises(NoModelError):
            await anonymous.recommend("anyone")
        with pytest.raises(AuthenticationError):
            await anonymous.retrain()


def test_async_client_data_and_admin_calls(data_server: ApiProcess) -> None:
    asyncio.run(_async_data_calls(data_server.base_url))
