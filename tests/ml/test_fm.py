"""Factorization machines: feature encoding, the exact factor form, cold items and users,
persistence, determinism and learning from planted feature structure."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from service.ml.catalog import create_model, load_model
from service.ml.data import Interactions, Vocabulary
from service.ml.features import (
    FeatureConfigError,
    FeatureData,
    FeatureEncoder,
    FeatureSelection,
)
from service.ml.fm import FMExplicit, FMImplicit, FMScorer
from service.ml.splits import rating_holdout

GROUPS = 4


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


# ----- feature encoding -------------------------------------------------------------------------
def _features() -> FeatureData:
    return FeatureData(
        user_attributes={
            "a": {"age": 20, "gender": "F", "student": True},
            "b": {"age": 40, "gender": "M", "student": False},
            "c": {"age": 30.0, "gender": "M"},
        },
        item_tags={"x": ["drama", "war"], "y": ["comedy"], "z": []},
        item_attributes={"x": {"year": 1994, "lang": "en"}, "y": {"year": 2004}},
    )


def test_encoding_of_categories_numbers_booleans_and_tags() -> None:
    encoder = FeatureEncoder.fit(_features(), FeatureSelection())
    user = encoder.user
    assert set(user.categories) == {"gender=F", "gender=M", "student=true", "student=false"}
    index, mean, std = user.numeric["age"]
    assert (mean, std) == pytest.approx((30.0, float(np.std([20, 40, 30]))))
    indices, values = encoder.encode_user({"age": 40, "gender": "F", "student": True})
    encoded = dict(zip(indices, values, strict=True))
    assert encoded[index] == pytest.approx(10.0 / std)
    assert encoded[user.categories["gender=F"]] == 1.0
    assert encoded[user.categories["student=true"]] == 1.0
    # unknown values and attributes, and numbers where strings were seen, are ignored
    assert encoder.encode_user({"gender": "X", "shoe": 42, "age": "old"}) == ([], [])
    item_indices, _ = encoder.encode_item(["war", "nope"], {"year": 1994, "lang": "en"})
    names = [encoder.item.names[i] for i in item_indices]
    assert sorted(names) == ["#war", "lang=en", "year"]


def test_bucketed_numbers_and_subsets() -> None:
    selection = FeatureSelection(
        numeric="bucket", buckets=2, user_attributes=["age"], item_tags=["drama"]
    )
    encoder = FeatureEncoder.fit(_features(), selection)
    assert encoder.user.names == ["age#0", "age#1"]
    assert encoder.user.names[encoder.encode_user({"age": 21})[0][0]] == "age#0"
    assert encoder.user.names[encoder.encode_user({"age": 39})[0][0]] == "age#1"
    assert encoder.item.names[0] == "#drama"
    assert "#comedy" not in encoder.item.categories
    assert {"year#0", "year#1", "lang=en"} <= set(encoder.item.names)


def test_unknown_feature_names_are_clear_errors() -> None:
    with pytest.raises(FeatureConfigError, match=r"unknown user attribute 'agee'.*age, gender"):
        FeatureEncoder.fit(_features(), FeatureSelection(user_attributes=["agee"]))
    with pytest.raises(FeatureConfigError, match="unknown item attribute 'colour'"):
        FeatureEncoder.fit(_features(), FeatureSelection(item_attributes=["colour"]))
    with pytest.raises(FeatureConfigError, match="unknown item tag 'horror'"):
        FeatureEncoder.fit(_features(), FeatureSelection(item_tags=["horror"]))
    data = planted_implicit()
    model = create_model("fm-implicit", {"features": {"user_attributes": ["nope"]}})
    with pytest.raises(FeatureConfigError, match="'nope'"):
        model.fit(data)


def test_encoder_json_round_trip() -> None:
    encoder = FeatureEncoder.fit(_features(), FeatureSelection(numeric="bucket", buckets=3))
    again = FeatureEncoder.from_json(encoder.to_json())
    assert again == encoder
    assert again.encode_item(["war"], {"year": 2000}) == encoder.encode_item(
        ["war"], {"year": 2000}
    )


def test_subsets_and_splits_keep_features() -> None:
    data = planted_implicit()
    assert data.subset(np.arange(10)).features is data.features
    explicit = dataclasses.replace(data, values=np.ones(len(data), dtype=np.float32))
    assert rating_holdout(explicit).train_full.features is data.features


# ----- planted data -----------------------------------------------------------------------------
N_USERS, N_ITEMS, N_COLD = 120, 80, 16


def planted_features(n_users: int = N_USERS, n_items: int = N_ITEMS) -> FeatureData:
    """Item i carries tag g<i mod 4>; user u has attribute group g<u mod 4>, plus noise."""
    rng = np.random.default_rng(11)
    return FeatureData(
        user_attributes={
            f"u{u}": {"group": f"g{u % GROUPS}", "age": float(rng.integers(18, 60))}
            for u in range(n_users)
        },
        item_tags={f"i{i}": [f"g{i % GROUPS}", f"t{rng.integers(5)}"] for i in range(n_items)},
        item_attributes={f"i{i}": {"year": int(rng.integers(1950, 2000))} for i in range(n_items)},
    )


def planted_implicit(seed: int = 5) -> Interactions:
    """Users of group g consume mostly the warm items tagged g; the last N_COLD items are cold
    (no interactions, not in the vocabulary)."""
    rng = np.random.default_rng(seed)
    warm = N_ITEMS - N_COLD
    users, items = [], []
    for user in range(N_USERS):
        own = [i for i in range(warm) if i % GROUPS == user % GROUPS]
        chosen = set(rng.choice(own, size=8, replace=False).tolist())
        chosen |= set(rng.choice(warm, size=2, replace=False).tolist())
        users += [user] * len(chosen)
        items += sorted(chosen)
    return Interactions(
        users=np.asarray(users, dtype=np.int64),
        items=np.asarray(items, dtype=np.int64),
        values=None,
        user_ids=Vocabulary([f"u{u}" for u in range(N_USERS)]),
        item_ids=Vocabulary([f"i{i}" for i in range(warm)]),
        features=planted_features(),
    )


def planted_explicit(seed: int = 3) -> Interactions:
    """Ratings high where the user's group matches the item's tag, on random warm pairs."""
    rng = np.random.default_rng(seed)
    warm = N_ITEMS - N_COLD
    users, items = np.nonzero(rng.random((N_USERS, warm)) < 0.3)
    match = (users % GROUPS) == (items % GROUPS)
    values = np.clip(np.round(2.5 + 2.0 * match + rng.normal(scale=0.5, size=len(users))), 1, 5)
    return Interactions(
        users=users.astype(np.int64),
        items=items.astype(np.int64),
        values=values.astype(np.float32),
        user_ids=Vocabulary([f"u{u}" for u in range(N_USERS)]),
        item_ids=Vocabulary([f"i{i}" for i in range(warm)]),
        features=planted_features(),
    )


COLD_IDS = [f"i{i}" for i in range(N_ITEMS - N_COLD, N_ITEMS)]
IMPLICIT_CONFIG: dict[str, Any] = {
    "embedding_size": 8, "epochs": 15, "batch_size": 128, "learning_rate": 0.03, "device": "cpu",
}  # fmt: skip
EXPLICIT_CONFIG: dict[str, Any] = {
    "embedding_size": 8, "epochs": 20, "batch_size": 256, "learning_rate": 0.02, "device": "cpu",
    **dict.fromkeys(
        ("reg_user_id", "reg_item_id", "reg_user_features", "reg_item_features", "reg_implicit"),
        0.05,
    ),
}  # fmt: skip
"""Small data: weaker L2 than the ML-100K defaults."""


def _fit(name: str, data: Interactions, **overrides: Any) -> FMScorer[Any]:
    base = IMPLICIT_CONFIG if name == "fm-implicit" else EXPLICIT_CONFIG
    model = create_model(name, {**base, **overrides})
    assert isinstance(model, FMScorer)
    model.fit(data)
    return model


@pytest.fixture(scope="module")
def implicit_model() -> FMScorer[Any]:
    return _fit("fm-implicit", planted_implicit(), implicit_feedback=True)


# ----- the factor form equals the FM formula ----------------------------------------------------
def _direct_fm(model: FMScorer[Any], data: Interactions, user: int, item: int) -> float:
    """w0 + Σ w x + Σ_{j<l} <v_j, v_l> x_j x_l over the concatenated user and item features."""
    user_table, item_table = (
        model.state_tensors()["user_table"],
        model.state_tensors()["item_table"],
    )
    table = torch.cat([user_table, item_table]).double()
    x = torch.zeros(len(table), dtype=torch.float64)
    u_layout, i_layout = model.user_layout, model.item_layout
    assert data.features is not None
    if u_layout.ids:
        x[user] = 1.0
    indices, values = model.encoder.encode_user(data.features.user_attributes.get(f"u{user}"))
    for j, v in zip(indices, values, strict=True):
        x[u_layout.feature_offset + j] += v
    history = np.unique(data.user_csr().row(user)[0])
    if u_layout.implicit:
        x[u_layout.implicit_offset + history] += 1.0 / np.sqrt(len(history))
    shift = u_layout.size
    item_id = data.item_ids.id_of(item)
    if i_layout.ids:
        x[shift + item] = 1.0
    indices, values = model.encoder.encode_item(
        data.features.item_tags.get(item_id, ()), data.features.item_attributes.get(item_id)
    )
    for j, v in zip(indices, values, strict=True):
        x[shift + i_layout.feature_offset + j] += v
    raters = np.unique(data.item_csr().row(item)[0])
    if i_layout.implicit:
        x[shift + i_layout.implicit_offset + raters] += 1.0 / np.sqrt(len(raters))
    k = table.shape[1] - 1
    v_mat, w = table[:, :k], table[:, k]
    linear = float(w @ x)
    summed = v_mat.T @ x
    pairwise = 0.5 * float(summed @ summed - ((v_mat.square().sum(1)) * x.square()).sum())
    return model.global_bias + linear + pairwise


@pytest.mark.parametrize("name", ["fm-explicit", "fm-implicit"])
def test_factor_form_equals_the_fm_formula(name: str) -> None:
    data = planted_explicit()
    if name == "fm-implicit":
        data = dataclasses.replace(data, values=None)
    # large random initial parameters and one epoch: arbitrary tables, every group present
    model = _fit(
        name, data, epochs=1, init_scale=0.5, implicit_feedback=True, item_implicit_feedback=True
    )
    user_layout, item_layout = model.user_layout, model.item_layout
    assert min(user_layout.ids, user_layout.features, user_layout.implicit) > 0
    assert min(item_layout.ids, item_layout.features, item_layout.implicit) > 0
    rng = np.random.default_rng(0)
    users = rng.integers(N_USERS, size=25)
    items = rng.integers(N_ITEMS - N_COLD, size=25)
    scores = model.score_users(torch.as_tensor(users))
    for row, (user, item) in enumerate(zip(users, items, strict=True)):
        direct = _direct_fm(model, data, int(user), int(item))
        assert float(scores[row, item]) == pytest.approx(direct, abs=1e-5)


# ----- cold items and users ---------------------------------------------------------------------
def _group_hits(scores: torch.Tensor, group: int, n: int = 4) -> int:
    """How many of the top-n cold items carry the group's tag."""
    top = torch.topk(scores, n).indices.tolist()
    return sum(int(COLD_IDS[i][1:]) % GROUPS == group for i in top)


def _cold_hits(model: FMScorer[Any]) -> float:
    cold = model.cold_item_parameters(planted_features(), COLD_IDS)
    hits = []
    for user in range(0, N_USERS, 3):
        emb, _ = model.user_parameters(torch.tensor([user]))
        scores = emb[0] @ cold.factors.T + cold.bias
        hits.append(_group_hits(scores, user % GROUPS))
    return float(np.mean(hits))


def test_cold_items_are_ranked_from_their_features(implicit_model: FMScorer[Any]) -> None:
    cold = implicit_model.cold_item_parameters(planted_features(), COLD_IDS)
    assert cold.factors.shape == (N_COLD, implicit_model.embedding_size)
    assert cold.bias.shape == (N_COLD,)
    with_features = _cold_hits(implicit_model)
    without = _cold_hits(_fit("fm-implicit", planted_implicit(), item_features=False))
    assert with_features >= 3.0  # of 4, where chance is 1
    assert with_features > without + 1.0


def test_cold_users_get_lists_that_differ_by_attribute(implicit_model: FMScorer[Any]) -> None:
    hits = []
    lists = []
    for group in range(GROUPS):
        vector = implicit_model.cold_user_vector({"group": f"g{group}"})
        scores = implicit_model.score_user_vector(vector)
        hits.append(sum(i % GROUPS == group for i in torch.topk(scores, 8).indices.tolist()))
        lists.append(torch.topk(scores, 8).indices.tolist())
    assert min(hits) >= 6
    assert len({tuple(top) for top in lists}) == GROUPS
    plain = implicit_model.cold_user_vector(None)
    assert float(plain.embedding.abs().sum()) == 0.0


def test_fold_in_uses_attributes_and_history(implicit_model: FMScorer[Any]) -> None:
    history = np.array([0, 4, 8], dtype=np.int64)  # group 0's items
    both = implicit_model.fold_in(history, attributes={"group": "g0"})
    only_history = implicit_model.fold_in(history)
    assert not torch.equal(both.embedding, only_history.embedding)
    top = torch.topk(implicit_model.score_user_vector(both), 8).indices.tolist()
    assert sum(i % GROUPS == 0 for i in top) >= 7


def test_explicit_cold_items_beat_a_model_without_features() -> None:
    data = planted_explicit()
    errors = {}
    for item_features in (True, False):
        model = _fit("fm-explicit", data, item_features=item_features)
        cold = model.cold_item_parameters(planted_features(), COLD_IDS)
        emb, bias = model.user_parameters(torch.arange(N_USERS))
        predicted = model.transform_scores(
            emb @ cold.factors.T + bias[:, None] + cold.bias + cold.global_bias
        )
        match = (np.arange(N_USERS)[:, None] % GROUPS) == (
            np.arange(N_ITEMS - N_COLD, N_ITEMS)[None, :] % GROUPS
        )
        truth = torch.as_tensor(2.5 + 2.0 * match)
        errors[item_features] = float(torch.sqrt(((predicted - truth) ** 2).mean()))
    assert errors[True] < 0.7 * errors[False]


# ----- persistence and determinism --------------------------------------------------------------
def test_save_and_load_without_pickle_gives_identical_scores(
    implicit_model: FMScorer[Any], tmp_path: Path
) -> None:
    implicit_model.save(tmp_path / "fm")
    assert sorted(p.suffix for p in (tmp_path / "fm").iterdir()) == [
        ".json", ".json", ".json", ".safetensors",
    ]  # fmt: skip
    loaded = load_model(tmp_path / "fm")
    assert isinstance(loaded, FMImplicit)
    users = torch.arange(N_USERS)
    assert torch.equal(loaded.score_users(users), implicit_model.score_users(users))
    features = planted_features()
    assert torch.equal(
        loaded.cold_item_parameters(features, COLD_IDS).factors,
        implicit_model.cold_item_parameters(features, COLD_IDS).factors,
    )
    attributes = {"group": "g2", "age": 33}
    assert torch.equal(
        loaded.cold_user_vector(attributes).embedding,
        implicit_model.cold_user_vector(attributes).embedding,
    )
    history = np.array([1, 5, 9], dtype=np.int64)
    assert torch.equal(
        loaded.fold_in(history, attributes=attributes).embedding,
        implicit_model.fold_in(history, attributes=attributes).embedding,
    )


def test_explicit_save_load_keeps_the_range(tmp_path: Path) -> None:
    model = _fit("fm-explicit", planted_explicit(), epochs=3, sigmoid_range=True)
    assert isinstance(model, FMExplicit)
    model.save(tmp_path / "fm")
    loaded = load_model(tmp_path / "fm")
    users = torch.arange(N_USERS)
    assert torch.equal(loaded.score_users(users), model.score_users(users))
    scores = loaded.score_users(users)
    assert float(scores.min()) > 0.5
    assert float(scores.max()) < 5.5


def test_same_seed_gives_same_model() -> None:
    data = planted_explicit()
    first = _fit("fm-explicit", data, epochs=3)
    second = _fit("fm-explicit", data, epochs=3)
    other = _fit("fm-explicit", data, epochs=3, seed=7)
    users = torch.arange(N_USERS)
    assert torch.equal(first.score_users(users), second.score_users(users))
    assert not torch.equal(first.score_users(users), other.score_users(users))
