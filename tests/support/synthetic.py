"""Small seeded rating data for worker, artifact and registry tests."""

from __future__ import annotations

from datetime import UTC, datetime

import numpy as np

from service.ml.artifacts import SnapshotInfo
from service.worker.pipeline import RatingsData


def low_rank_ratings(
    n_users: int = 60, n_items: int = 40, density: float = 0.5, seed: int = 7
) -> RatingsData:
    """Ratings 1..5 from a rank-3 model plus noise, on a seeded random subset of pairs."""
    rng = np.random.default_rng(seed)
    user_f = rng.normal(size=(n_users, 3))
    item_f = rng.normal(size=(n_items, 3))
    item_bias = rng.normal(scale=0.7, size=n_items)
    scores = (
        3.2 + user_f @ item_f.T * 0.6 + item_bias + rng.normal(scale=0.3, size=(n_users, n_items))
    )
    mask = rng.random((n_users, n_items)) < density
    users, items = np.nonzero(mask)
    values = np.clip(np.round(scores[users, items] * 2) / 2, 0.5, 5.0).astype(np.float32)
    user_ids = [f"u{i}" for i in range(n_users)]
    info = SnapshotInfo(
        taken_at=datetime(2026, 1, 1, tzinfo=UTC),
        n_ratings=len(users),
        n_users=n_users,
        n_items=n_items,
        newest_rating_at=datetime(2025, 12, 31, tzinfo=UTC),
        stored_until=datetime(2026, 1, 1, tzinfo=UTC),
        history_versions=dict.fromkeys(user_ids, 1),
    )
    return RatingsData(
        users=users.astype(np.int64),
        items=items.astype(np.int64),
        values=values,
        user_ids=user_ids,
        item_ids=[f"i{j}" for j in range(n_items)],
        info=info,
    )
