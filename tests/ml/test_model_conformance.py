"""One conformance suite that every catalog model passes (tiny seeded data, CPU).

Besides shapes, persistence, determinism and fold-in, every model must learn: beat its baseline
on held-out planted data by a stated margin (tests/ml/accuracy.py), which a model with frozen
factors fails; and `recommend` must rank by the model's own scores.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from service.ml.base import Recommender, TrainingProgress
from service.ml.catalog import (
    MODEL_NAMES,
    MODEL_TYPES,
    ModelConfigError,
    UnknownModelError,
    create_model,
    load_model,
    parse_config,
)
from service.ml.data import Interactions
from service.ml.splits import Split
from tests.ml.accuracy import check_accuracy, planted_split
from tests.ml.tiny_data import grouped_ratings

TINY_CONFIGS: dict[str, dict[str, Any]] = {
    "popular": {"device": "cpu"},
    "als-biased": {"embedding_size": 8, "epochs": 6, "device": "cpu"},
    "als-implicit": {"embedding_size": 8, "epochs": 6, "device": "cpu"},
    "flexmf-explicit": {"embedding_size": 8, "epochs": 15, "batch_size": 128, "device": "cpu"},
    "flexmf-implicit": {
        "embedding_size": 8,
        "epochs": 10,
        "batch_size": 256,
        "fold_in_regularization": 0.1,  # skips the (slow) fold-in calibration at the end of fit
        "device": "cpu",
    },
    "fm-explicit": {"embedding_size": 8, "epochs": 15, "batch_size": 128, "device": "cpu"},
    "fm-implicit": {"embedding_size": 8, "epochs": 10, "batch_size": 256, "device": "cpu"},
}
"""Small, fast configs; every other option keeps its default."""


class CancelledError(Exception):
    """Raised by a progress callback to cancel training."""


def test_every_catalog_model_has_a_tiny_config() -> None:
    assert set(TINY_CONFIGS) == set(MODEL_NAMES)


@pytest.fixture(scope="module")
def data() -> Interactions:
    return grouped_ratings()


REPORTS: dict[str, list[TrainingProgress]] = {}
"""Progress reports of each model's fixture fit."""


@pytest.fixture(scope="module", params=MODEL_NAMES)
def fitted(request: pytest.FixtureRequest, data: Interactions) -> Recommender[Any]:
    model = create_model(request.param, TINY_CONFIGS[request.param])
    REPORTS[model.name] = []
    model.fit(data, progress=REPORTS[model.name].append)
    return model


def _fit(name: str, data: Interactions, **overrides: Any) -> Recommender[Any]:
    model = create_model(name, {**TINY_CONFIGS[name], **overrides})
    model.fit(data)
    return model


def test_output_shapes(fitted: Recommender[Any], data: Interactions) -> None:
    users = torch.tensor([0, 3, 5])
    k = fitted.embedding_size
    embeddings, biases = fitted.user_parameters(users)
    assert embeddings.shape == (3, k)
    assert biases.shape == (3,)
    params = fitted.item_parameters()
    assert params.factors.shape == (data.n_items, k)
    assert params.bias.shape == (data.n_items,)
    assert fitted.score_users(users).shape == (3, data.n_items)
    assert fitted.score_users(users, torch.tensor([1, 2])).shape == (3, 2)
    top, scores = fitted.recommend(embeddings, biases, 5, exclude=[np.array([0, 1])] * 3)
    assert top.shape == scores.shape == (3, 5)
    assert not bool(torch.isin(top, torch.tensor([0, 1])).any())
    items, ratings = data.user_csr().row(0)
    vector = fitted.fold_in(items, ratings)
    assert vector.embedding.shape == (k,)
    assert fitted.score_user_vector(vector).shape == (data.n_items,)
    assert torch.isfinite(fitted.score_users(users)).all()


def test_unknown_ids_are_ignored(fitted: Recommender[Any], data: Interactions) -> None:
    assert fitted.user_ids.index("no-such-user") is None
    lookup = fitted.item_ids.indices(["i1", "no-such-item", "i2"])
    assert lookup.tolist() == [1, -1, 2]
    items, ratings = data.user_csr().row(2)
    assert ratings is not None
    noisy_items = np.concatenate([items, np.array([-1, -1], dtype=np.int64)])
    noisy_ratings = np.concatenate([ratings, np.array([5.0, 1.0], dtype=np.float32)])
    clean = fitted.fold_in(items, ratings)
    noisy = fitted.fold_in(noisy_items, noisy_ratings)
    torch.testing.assert_close(noisy.embedding, clean.embedding)
    assert noisy.bias == pytest.approx(clean.bias)


def test_save_then_load_gives_identical_scores(fitted: Recommender[Any], tmp_path: Path) -> None:
    fitted.save(tmp_path / "model")
    loaded = load_model(tmp_path / "model")
    assert type(loaded) is type(fitted)
    assert loaded.config == fitted.config
    assert loaded.user_ids == fitted.user_ids
    assert loaded.item_ids == fitted.item_ids
    users = torch.arange(fitted.n_users)
    assert torch.equal(loaded.score_users(users), fitted.score_users(users).cpu())
    assert list((tmp_path / "model").glob("*.pkl")) == []


def test_same_seed_gives_same_scores(fitted: Recommender[Any], data: Interactions) -> None:
    again = _fit(fitted.name, data)
    users = torch.arange(data.n_users)
    assert torch.equal(again.score_users(users), fitted.score_users(users))


def _top10(scores: torch.Tensor) -> set[int]:
    return set(torch.topk(scores, 10).indices.tolist())


def test_fold_in_of_a_training_history(fitted: Recommender[Any], data: Interactions) -> None:
    csr = data.user_csr()
    overlaps = []
    for user in range(0, data.n_users, 4):
        items, ratings = csr.row(user)
        vector = fitted.fold_in(items, ratings)
        trained, trained_bias = fitted.user_parameters(torch.tensor([user]))
        if fitted.name.startswith("als-"):
            # the last half-sweep solved users against the final item factors: exactly with
            # Cholesky (als-biased), approximately with a few warm-started CG steps (als-implicit
            # default; its exact variant is checked in test_als.py)
            tolerance = 1e-3 if fitted.name == "als-biased" else 0.1
            scale = float(trained[0].norm()) + 1e-6
            assert float((vector.embedding - trained[0]).norm()) / scale < tolerance
            if vector.has_bias:
                assert vector.bias == pytest.approx(float(trained_bias[0]), abs=1e-3)
        folded_scores = fitted.score_user_vector(vector)
        trained_scores = fitted.score_users(torch.tensor([user]))[0]
        overlaps.append(len(_top10(folded_scores) & _top10(trained_scores)))
    assert float(np.mean(overlaps)) >= 7.0


def test_progress_is_reported_and_can_cancel(data: Interactions, fitted: Recommender[Any]) -> None:
    reports = REPORTS[fitted.name]
    assert reports, "progress was never called"
    assert [r.epoch for r in reports] == list(range(1, len(reports) + 1))
    assert all(np.isfinite(r.loss) and r.elapsed_s >= 0 for r in reports)
    assert reports[-1].epoch <= reports[-1].epochs

    def cancel(progress: TrainingProgress) -> None:
        raise CancelledError(f"cancelled after epoch {progress.epoch}")

    with pytest.raises(CancelledError):
        create_model(fitted.name, TINY_CONFIGS[fitted.name]).fit(data, progress=cancel)


def test_similar_items(fitted: Recommender[Any]) -> None:
    if fitted.embedding_size == 0:
        with pytest.raises(ValueError, match="no item factors"):
            fitted.similar_items(0, 5)
        return
    items, sims = fitted.similar_items(0, 5)
    assert items.shape == sims.shape == (5,)
    assert 0 not in items.tolist()
    assert bool((sims[:-1] >= sims[1:]).all())


def test_unknown_model_name_is_a_value_error() -> None:
    with pytest.raises(UnknownModelError, match="unknown model 'nope'") as info:
        create_model("nope", {})
    assert isinstance(info.value, ValueError)


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_bad_config_names_the_field(name: str) -> None:
    with pytest.raises(ModelConfigError, match="no_such_option") as info:
        create_model(name, {"no_such_option": 1})
    assert isinstance(info.value, ValueError)
    with pytest.raises(ModelConfigError, match="seed"):
        create_model(name, {"seed": "not a number"})


# ----- accuracy: every model learns the planted structure ---------------------------------------
@pytest.fixture(scope="module")
def split() -> Split:
    return planted_split()


ACCURACY_CONFIGS: dict[str, dict[str, Any]] = {
    **TINY_CONFIGS,
    # 15 epochs of 9 batches at the default rate stay near the item means on this little data
    "flexmf-explicit": {**TINY_CONFIGS["flexmf-explicit"], "epochs": 30, "learning_rate": 0.05},
    # the ML-100K defaults' L2 (0.2 per group) keeps this little data near the mean
    "fm-explicit": {
        **TINY_CONFIGS["fm-explicit"],
        "epochs": 30,
        "learning_rate": 0.05,
        **dict.fromkeys(("reg_user_id", "reg_item_id", "reg_implicit"), 0.05),
    },
}
"""The tiny configs, with more training where they are too short to learn the planted data."""


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_model_beats_its_baseline_on_held_out_data(name: str, split: Split) -> None:
    """Implicit models beat `popular` on nDCG@10, explicit ones the item means on RMSE, by the
    margins of tests/ml/accuracy.py (`popular` ranks as the training counts do)."""
    model = create_model(name, ACCURACY_CONFIGS[name])
    model.fit(split.train)
    check_accuracy(model, split)


def _frozen(model_type: type[Recommender[Any]]) -> type[Recommender[Any]]:
    """A subclass whose fitted factors are put back to seeded random initial values: the biases
    (where the model has them) are learned, the factors are not."""

    def fit(self: Recommender[Any], data: Interactions, *args: Any, **kwargs: Any) -> None:
        model_type.fit(self, data, *args, **kwargs)
        generator = torch.Generator().manual_seed(0)
        tensors = dict(self.state_tensors())
        for key, tensor in tensors.items():
            if "factors" in key or "embedding" in key:
                noise = torch.randn(tensor.shape, generator=generator, dtype=tensor.dtype)
                tensors[key] = 0.1 * noise.to(tensor.device)
        self.load_state_tensors(tensors)

    return type(f"Frozen{model_type.__name__}", (model_type,), {"fit": fit})


BROKEN_MODELS = [_frozen(entry_type) for entry_type in MODEL_TYPES if entry_type.name != "popular"]
"""Every factor model of the catalog with its factors frozen at their initial values."""


@pytest.mark.parametrize("broken_type", BROKEN_MODELS, ids=lambda t: t.name)
def test_the_accuracy_check_fails_a_model_that_learned_nothing(
    broken_type: type[Recommender[Any]], split: Split
) -> None:
    broken = broken_type(parse_config(broken_type.name, ACCURACY_CONFIGS[broken_type.name]))
    broken.fit(split.train)
    with pytest.raises(AssertionError, match="learned too little"):
        check_accuracy(broken, split)


def test_recommend_ranks_by_the_models_own_scores(
    fitted: Recommender[Any], data: Interactions
) -> None:
    """`recommend` returns the n best-scoring items not excluded, best first, with the scores
    that `score_users` gives them; an n beyond the catalog lists every item not excluded, and a
    row with fewer items to offer is padded with index -1 at -inf."""
    users = torch.tensor([0, 7, 13])
    embeddings, biases = fitted.user_parameters(users)
    scores = fitted.score_users(users)
    exclude = [data.user_csr().row(int(u))[0] for u in users]
    top, values = fitted.recommend(embeddings, biases, 8, exclude=exclude)
    for row, excluded in enumerate(exclude):
        allowed = torch.ones(data.n_items, dtype=torch.bool)
        allowed[torch.as_tensor(excluded)] = False
        torch.testing.assert_close(values[row], scores[row, top[row]])
        assert bool((values[row][:-1] >= values[row][1:]).all())
        assert not bool(torch.isin(top[row], torch.as_tensor(excluded)).any())
        left_out = allowed.clone()
        left_out[top[row]] = False
        assert float(scores[row][left_out].max()) <= float(values[row][-1])
    every, every_value = fitted.recommend(embeddings, biases, data.n_items + 5, exclude=exclude)
    offered = [data.n_items - len(set(excluded.tolist())) for excluded in exclude]
    assert every.shape == (3, max(offered))
    for row, excluded in enumerate(exclude):
        listed = every[row, : offered[row]].tolist()
        assert set(listed) == set(range(data.n_items)) - set(excluded.tolist())
        assert bool(torch.isfinite(every_value[row, : offered[row]]).all())
        assert set(every[row, offered[row] :].tolist()) <= {-1}
        assert bool(torch.isneginf(every_value[row, offered[row] :]).all())
