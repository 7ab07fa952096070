"""Set-up of the serving tests: seeded ratings and tags, a small trained model, serving it."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any, ClassVar

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from pydantic import BaseModel
from sqlalchemy import Engine

from service.api.state import ServiceState
from service.app import create_app
from service.config import Settings, load_settings
from service.db.session import create_db_engine
from service.db.snapshot import read_ratings_snapshot
from service.ml.als import BiasedALS, BiasedALSConfig
from service.ml.artifacts import SnapshotInfo
from service.ml.base import ItemParameters, Recommender, UserVector
from service.ml.data import IndexArray, Interactions, ValueArray, Vocabulary
from service.registry import ServedModel

N_USERS = 40
N_ITEMS = 30
T0 = datetime(2026, 1, 1, tzinfo=UTC)


def item_tags(j: int) -> list[str]:
    """Tags of item `i{j}`: parity, and "tri" for multiples of three."""
    tags = ["even" if j % 2 == 0 else "odd"]
    if j % 3 == 0:
        tags.append("tri")
    return tags


def seed_rows(seed: int = 3) -> list[dict[str, Any]]:
    """Ratings of a rank-2 model (0.5-step, 1..5) for about half of all (user, item) pairs."""
    rng = np.random.default_rng(seed)
    user_f = rng.normal(size=(N_USERS, 2))
    item_f = rng.normal(size=(N_ITEMS, 2))
    bias = rng.normal(scale=0.6, size=N_ITEMS)
    rows = []
    for u in range(N_USERS):
        for j in range(N_ITEMS):
            if rng.random() < 0.5 and j != N_ITEMS - 1:  # i29 exists but is never rated
                value = float(
                    np.clip(np.round((3.0 + user_f[u] @ item_f[j] + bias[j]) * 2) / 2, 1, 5)
                )
                stamp = (T0 + timedelta(minutes=u * N_ITEMS + j)).isoformat()
                rows.append({"user": f"u{u}", "item": f"i{j}", "rating": value, "timestamp": stamp})
    return rows


def seed_database(client: TestClient) -> None:
    """Store the seeded ratings and every item's tags through the HTTP API."""
    response = client.post("/ratings", json={"ratings": seed_rows()})
    assert response.status_code == 201, response.text
    for j in range(N_ITEMS):
        response = client.put(f"/items/i{j}", json={"tags": item_tags(j)})
        assert response.status_code in (200, 201), response.text


class PopularConfig(BaseModel):
    """No hyper-parameters."""


class CountPopular(Recommender[PopularConfig]):
    """A stand-in popularity fallback: zero-width factors, rating counts as item biases, and a
    vocabulary in its own (reversed) order so that translation between models is exercised."""

    name: ClassVar[str] = "popular-test"
    config_type: ClassVar[type[BaseModel]] = PopularConfig

    def __init__(self, config: PopularConfig | None = None) -> None:
        super().__init__(config)
        self._bias = torch.zeros(0)

    def fit(self, data: Interactions, progress: Any = None, validation: Any = None) -> None:
        """Count each item's ratings."""
        order = list(reversed(data.item_ids.ids))
        counts = np.bincount(data.items, minlength=data.n_items).astype(np.float32)
        self.item_ids = Vocabulary(order)
        self.user_ids = data.user_ids
        self._bias = torch.as_tensor(counts[data.item_ids.indices(order)])

    def user_parameters(self, users: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Zero-width embeddings."""
        return torch.zeros((len(users), 0)), torch.zeros(len(users))

    def item_parameters(self) -> ItemParameters:
        """Counts as biases."""
        return ItemParameters(torch.zeros((len(self._bias), 0)), self._bias, 0.0)

    def fold_in(self, items: IndexArray, ratings: ValueArray | None = None) -> UserVector:
        """Nothing to fold."""
        return UserVector(torch.zeros(0), 0.0, False)

    def state_tensors(self) -> dict[str, torch.Tensor]:
        """The counts."""
        return {"bias": self._bias}

    def load_state_tensors(self, tensors: dict[str, torch.Tensor]) -> None:
        """Restore the counts."""
        self._bias = tensors["bias"]


def train_served(
    engine: Engine, version: int = 1, *, fallback: bool = True, with_snapshot: bool = True
) -> ServedModel:
    """Train a small `als-biased` model on the database's ratings, served as the registry would."""
    snapshot = read_ratings_snapshot(engine)
    data = Interactions(
        users=snapshot.users,
        items=snapshot.items,
        values=snapshot.values,
        user_ids=Vocabulary(snapshot.user_ids),
        item_ids=Vocabulary(snapshot.item_ids),
    )
    model = BiasedALS(BiasedALSConfig(embedding_size=4, epochs=6, device="cpu", seed=1))
    model.fit(data)
    popular = None
    if fallback:
        popular = CountPopular()
        popular.fit(data)
    info = SnapshotInfo(
        taken_at=snapshot.taken_at,
        n_ratings=len(snapshot),
        n_users=len(snapshot.user_ids),
        n_items=len(snapshot.item_ids),
        history_versions=snapshot.history_versions,
    )
    return ServedModel(
        version=version,
        algorithm=model.name,
        sha256="0" * 64,
        model=model,
        fallback=popular,
        snapshot=info if with_snapshot else None,
        loaded_at=datetime.now(UTC),
    )


def service_state(client: TestClient) -> ServiceState:
    """The lifespan's state of a running TestClient."""
    state = client.app_state["service"]
    assert isinstance(state, ServiceState)
    return state


def serve(client: TestClient, served: ServedModel) -> None:
    """Make `served` the model this app serves (as the registry's swap would)."""
    registry = service_state(client).registry
    assert registry is not None
    registry.set_current(served)


def user_history(client: TestClient, user: str) -> tuple[list[str], list[float]]:
    """A user's rated items and ratings as stored (through the API)."""
    entries = client.get(f"/users/{user}/ratings?limit=1000").json()["items"]
    return [e["item"] for e in entries], [float(e["rating"]) for e in entries]


def serving_settings(settings: Settings, **overrides: Any) -> Settings:
    """The test's settings with serving options changed."""
    return load_settings(**{**settings.model_dump(), "item_refresh_interval": 0.05, **overrides})


@pytest.fixture
def serving_client(settings: Settings) -> Iterator[TestClient]:
    """A TestClient on seeded ratings and tags, not serving any model yet."""
    with TestClient(create_app(serving_settings(settings))) as client:
        seed_database(client)
        yield client


@pytest.fixture
def serving_db(settings: Settings) -> Iterator[Engine]:
    """An engine on the test's database."""
    engine = create_db_engine(settings.database_url)
    yield engine
    engine.dispose()


@pytest.fixture
def served(serving_client: TestClient, serving_db: Engine) -> ServedModel:
    """A model trained on the seeded ratings, served by `serving_client`."""
    model = train_served(serving_db)
    serve(serving_client, model)
    return model
