"""The client's serving and model calls against a real API process whose worker trained a small
model on seeded ratings (posted through the client), on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from mfserve_client import (
    AsyncClient,
    Client,
    InvalidInputError,
    Job,
    JobFailedError,
    JobStatus,
    JobWaitTimeoutError,
    NotFoundError,
    Rating,
)

from tests.client.conftest import QUICK_CONFIG, TOKEN, service_env
from tests.support.server import ApiProcess, run_api_process
from tests.support.synthetic import low_rank_ratings

N_USERS, N_ITEMS = 60, 40
T0 = datetime(2026, 1, 1, tzinfo=UTC)


def seeded_ratings() -> list[Rating]:
    """Ratings of a rank-3 model for about half of all (user, item) pairs, in the past."""
    data = low_rank_ratings(n_users=N_USERS, n_items=N_ITEMS, seed=7)
    return [
        Rating(data.user_ids[u], data.item_ids[i], float(v), T0 + timedelta(minutes=k))
        for k, (u, i, v) in enumerate(zip(data.users, data.items, data.values, strict=True))
    ]


def parity(j: int) -> str:
    """The tag of item `i{j}`."""
    return "even" if j % 2 == 0 else "odd"


@dataclass(frozen=True)
class Trained:
    """The module's server and the job that trained its first model."""

    server: ApiProcess
    job: Job
    rated: dict[str, set[str]]


@pytest.fixture(scope="module")
def trained(module_database_url: str, module_artifacts: Path) -> Iterator[Trained]:
    """An API process with its worker, seeded through the client and serving a trained model."""
    env = service_env(module_artifacts)
    with (
        run_api_process(module_database_url, env=env, with_worker=True) as server,
        Client(server.base_url, api_key=TOKEN) as api,
    ):
        ratings = seeded_ratings()
        assert api.post_ratings(ratings).inserted == len(ratings)
        for j in range(N_ITEMS):
            api.put_item(f"i{j}", title=f"Item {j}", tags=[parity(j)])
        accepted = api.retrain("als-biased", QUICK_CONFIG)
        job = api.wait_for_job(accepted.job_id, timeout=120, poll_interval=0.1)
        rated: dict[str, set[str]] = {}
        for rating in ratings:
            rated.setdefault(rating.user, set()).add(rating.item)
        yield Trained(server, job, rated)


@pytest.fixture
def api(trained: Trained) -> Iterator[Client]:
    """A client of the trained server, with the admin token."""
    with Client(trained.server.base_url, api_key=TOKEN) as client:
        yield client


def test_wait_for_job_returns_the_finished_job_once_its_version_is_served(
    trained: Trained, api: Client
) -> None:
    job = trained.job
    assert job.status is JobStatus.SUCCEEDED
    assert job.version == 1
    assert job.progress.epoch == job.progress.epochs == QUICK_CONFIG["epochs"]
    assert job.metrics is not None
    assert job.metrics["gate"]["passed"]
    assert api.readiness().model_version == job.version


def test_recommend_for_a_user(trained: Trained, api: Client) -> None:
    rec = api.recommend("u0", n=5)
    assert (rec.user, rec.model_version, rec.source) == ("u0", trained.job.version, "model")
    assert len(rec.items) == 5
    assert not set(rec.item_ids) & trained.rated["u0"]  # rated items are left out
    scores = [entry.score for entry in rec.items]
    assert scores == sorted(scores, reverse=True)

    everything = api.recommend("u0", n=N_ITEMS, exclude_rated=False)
    assert set(everything.item_ids) >= trained.rated["u0"]
    without = api.recommend("u0", n=5, exclude=rec.item_ids[:2])
    assert not set(without.item_ids) & set(rec.item_ids[:2])
    even = api.recommend("u0", n=5, tags=["even"])
    assert even.items
    assert all(int(item[1:]) % 2 == 0 for item in even.item_ids)
    assert api.recommend("a-newcomer", n=3).source == "popular"
    with pytest.raises(InvalidInputError) as caught:
        api.recommend("u0", n=0)
    assert caught.value.errors[0].field == "query.n"


def test_a_user_who_rated_since_the_snapshot_is_folded_in(api: Client) -> None:
    api.post_rating("u1", "i39", 5.0)
    assert api.recommend("u1", n=3).source == "foldin"


def test_recommend_for_a_history(api: Client) -> None:
    for history in ([("i1", 5.0), ("i2", 4.0)], {"i1": 5.0, "i2": 4.0}):
        rec = api.recommend_history(history, n=4)
        assert (rec.user, rec.source, len(rec.items)) == (None, "foldin", 4)
        assert not {"i1", "i2"} & set(rec.item_ids)
    # items without ratings are implicit interactions, which an explicit model cannot fold in
    implicit = api.recommend_history(["i1", "i2"], n=4)
    assert (implicit.source, len(implicit.items)) == ("popular", 4)
    assert not {"i1", "i2"} & set(implicit.item_ids)
    odd = api.recommend_history([{"item": "i1", "rating": 5}], n=3, tags=["odd"])
    assert all(int(item[1:]) % 2 == 1 for item in odd.item_ids)


def test_recommend_for_many_users(trained: Trained, api: Client) -> None:
    batch = api.recommend_batch(["u0", "a-newcomer", "u0"], n=3)
    assert batch.model_version == trained.job.version
    assert [r.user for r in batch.results] == ["u0", "a-newcomer", "u0"]
    assert [r.source for r in batch.results] == ["model", "popular", "model"]
    assert batch.results[0].item_ids == api.recommend("u0", n=3).item_ids
    with pytest.raises(InvalidInputError):
        api.recommend_batch([], n=3)


def test_scores_of_items_for_a_user_and_for_a_history(api: Client) -> None:
    scored = api.scores("u0", items=["i1", "i2", "no-such-item"])
    assert [entry.item for entry in scored.scores] == ["i1", "i2", "no-such-item"]
    assert scored.unknown_items == ["no-such-item"]
    by_item = scored.as_dict()
    assert by_item["no-such-item"] is None
    assert isinstance(by_item["i1"], float)
    for_history = api.scores(history=[("i3", 4.0)], items=["i1"])
    assert for_history.scores[0].score is not None
    with pytest.raises(ValueError, match="exactly one"):
        api.scores("u0", [("i3", 4.0)], items=["i1"])


def test_fold_in_and_similar_items(api: Client) -> None:
    folded = api.fold_in([("i1", 5.0), ("xyz", None)])
    assert len(folded.embedding) == QUICK_CONFIG["embedding_size"]
    assert folded.bias is not None
    assert folded.unknown_items == ["xyz"]
    similar = api.similar("i1", n=3)
    assert similar.item == "i1"
    assert len(similar.items) == 3
    assert "i1" not in [entry.item for entry in similar.items]
    with pytest.raises(NotFoundError):
        api.similar("no-such-item")


HANG_GUARD_S = 120.0
"""Only stops a hung test (a version never served); no promise is timed."""


def _wait_served(api: Client, version: int) -> None:
    deadline = time.monotonic() + HANG_GUARD_S
    while api.readiness().model_version != version:
        assert time.monotonic() < deadline, f"hung waiting for version {version} to be served"
        time.sleep(0.1)


def test_versions_listing_and_rollback(trained: Trained, api: Client) -> None:
    first = trained.job.version
    assert first is not None
    second_job = api.wait_for_job(api.retrain("als-biased", QUICK_CONFIG).job_id, timeout=120)
    second = second_job.version
    assert second == first + 1
    assert api.active_model().version == second

    pages = list(api.models(page_size=1).pages())
    assert [[v.version for v in page.items] for page in pages] == [[second], [first]]
    assert [v.version for v in api.models()] == [second, first]
    old = api.model(first)
    assert (old.algorithm, old.config["epochs"], old.active) == ("als-biased", 3, False)
    assert old.snapshot.n_ratings > 0

    rolled_back = api.activate(first)
    assert (rolled_back.version, rolled_back.active) == (first, True)
    _wait_served(api, first)
    assert api.recommend("u0").model_version == first
    api.activate(second)
    _wait_served(api, second)
    assert api.active_model().served
    with pytest.raises(NotFoundError):
        api.activate(999)


def test_waiting_for_a_job_that_is_cancelled_or_too_slow(api: Client) -> None:
    long_job = api.retrain("als-biased", {**QUICK_CONFIG, "epochs": 10_000}).job_id
    with pytest.raises(JobWaitTimeoutError) as slow:
        api.wait_for_job(long_job, timeout=0.0)
    assert slow.value.job.job_id == long_job
    api.cancel_job(long_job)
    with pytest.raises(JobFailedError) as failed:
        api.wait_for_job(long_job, timeout=120, poll_interval=0.1)
    assert failed.value.job.status is JobStatus.CANCELLED
    ended = api.wait_for_job(long_job, raise_on_failure=False)
    assert ended.status is JobStatus.CANCELLED
    assert ended.version is None


async def _async_serving_calls(trained: Trained) -> None:
    async with AsyncClient(trained.server.base_url, api_key=TOKEN) as api:
        version = (await api.readiness()).model_version
        rec = await api.recommend("u2", n=4, exclude=["i0"], tags=["odd"])
        assert (rec.user, rec.model_version, len(rec.items)) == ("u2", version, 4)
        assert all(int(item[1:]) % 2 == 1 for item in rec.item_ids)
        anonymous = await api.recommend_history({"i1": 5.0}, n=2)
        assert (anonymous.user, anonymous.source) == (None, "foldin")
        batch = await api.recommend_batch(["u2", "u3"], n=2)
        assert [r.user for r in batch.results] == ["u2", "u3"]
        scores = await api.scores(history=[("i1", 5.0)], items=["i2", "nope"])
        assert scores.unknown_items == ["nope"]
        assert len((await api.fold_in(["i1"])).embedding) == QUICK_CONFIG["embedding_size"]
        assert len((await api.similar("i2", n=2)).items) == 2

        job = await api.wait_for_job((await api.retrain("als-biased", QUICK_CONFIG)).job_id)
        assert job.status is JobStatus.SUCCEEDED
        assert (await api.readiness()).model_version == job.version
        active = await api.active_model()
        assert active.version == job.version
        listed = [v.version async for v in api.models(page_size=1)]
        assert listed == sorted(listed, reverse=True)
        assert listed[0] == job.version
        assert (await api.model(listed[-1])).version == listed[-1]
        assert (await api.activate(active.version)).active
        assert job.job_id in [j.job_id async for j in api.jobs(status=JobStatus.SUCCEEDED)]
        long_job = (await api.retrain("als-biased", {**QUICK_CONFIG, "epochs": 10_000})).job_id
        await api.cancel_job(long_job)
        with pytest.raises(JobFailedError):
            await api.wait_for_job(long_job, poll_interval=0.1)
        with pytest.raises(NotFoundError):
            await api.similar("no-such-item")


def test_async_client_serving_and_model_calls(trained: Trained) -> None:
    asyncio.run(_async_serving_calls(trained))
