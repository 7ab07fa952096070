"""Tiny seeded interaction data for the model tests."""

from __future__ import annotations

import numpy as np

from service.ml.data import Interactions, Vocabulary


def grouped_ratings(
    n_users: int = 80, n_items: int = 60, groups: int = 4, per_user: int = 14, seed: int = 7
) -> Interactions:
    """Users in groups that mostly rate their own group's items (popularity-skewed), with ratings
    1..5 from a rank-3 model plus noise, so both explicit and implicit models learn something."""
    rng = np.random.default_rng(seed)
    user_f = rng.normal(size=(n_users, 3))
    item_f = rng.normal(size=(n_items, 3))
    item_bias = rng.normal(scale=0.5, size=n_items)
    span = n_items // groups
    weights = 1.0 / np.arange(1, span + 1)
    weights /= weights.sum()
    users: list[int] = []
    items: list[int] = []
    for user in range(n_users):
        own = rng.choice(span, size=per_user - 2, replace=False, p=weights) + (user % groups) * span
        chosen = np.unique(np.concatenate([own, rng.choice(n_items, size=2, replace=False)]))
        users.extend([user] * len(chosen))
        items.extend(chosen.tolist())
    user_index = np.asarray(users, dtype=np.int64)
    item_index = np.asarray(items, dtype=np.int64)
    raw = 3.4 + 0.6 * (user_f[user_index] * item_f[item_index]).sum(axis=1)
    raw += item_bias[item_index] + rng.normal(scale=0.3, size=len(users))
    return Interactions(
        users=user_index,
        items=item_index,
        values=np.clip(np.round(raw), 1, 5).astype(np.float32),
        user_ids=Vocabulary([f"u{i}" for i in range(n_users)]),
        item_ids=Vocabulary([f"i{i}" for i in range(n_items)]),
    )
