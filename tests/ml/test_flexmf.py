"""FlexMF-specific tests: configs, training, sampling (WARP), fold-in, persistence."""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from service.ml.base import TrainingProgress
from service.ml.data import Interactions, Vocabulary
from service.ml.flexmf import (
    FlexMFExplicit,
    FlexMFExplicitConfig,
    FlexMFImplicit,
    FlexMFImplicitConfig,
)
from service.ml.flexmf.sampling import NegativeSampler, rank_weight
from service.ml.splits import rating_holdout
from tests.ml.accuracy import item_mean_rmse, model_rmse


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    """Tiny tensors: extra intra-op threads only add synchronization (badly so on busy hosts)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def _vocab(prefix: str, n: int) -> Vocabulary:
    return Vocabulary([f"{prefix}{i}" for i in range(n)])


def explicit_data(n_users: int = 80, n_items: int = 50, seed: int = 3) -> Interactions:
    """Ratings 1..5 from a rank-3 model plus noise on a random half of the pairs."""
    rng = np.random.default_rng(seed)
    user_f, item_f = rng.normal(size=(n_users, 3)), rng.normal(size=(n_items, 3))
    scores = 3.3 + 0.7 * user_f @ item_f.T + rng.normal(scale=0.5, size=n_items)
    users, items = np.nonzero(rng.random((n_users, n_items)) < 0.5)
    values = np.clip(np.round(scores[users, items]), 1, 5).astype(np.float32)
    return Interactions(
        users=users.astype(np.int64),
        items=items.astype(np.int64),
        values=values,
        user_ids=_vocab("u", n_users),
        item_ids=_vocab("i", n_items),
    )


def implicit_data(n_users: int = 120, n_items: int = 80, seed: int = 5) -> Interactions:
    """Four user groups, each consuming mostly its own quarter of the items, popularity-skewed."""
    rng = np.random.default_rng(seed)
    users: list[int] = []
    items: list[int] = []
    quarter = n_items // 4
    weights = 1.0 / np.arange(1, quarter + 1)
    weights /= weights.sum()
    for user in range(n_users):
        group = user % 4
        own = rng.choice(quarter, size=12, replace=False, p=weights) + group * quarter
        other = rng.choice(n_items, size=2, replace=False)
        chosen = np.unique(np.concatenate([own, other]))
        users.extend([user] * len(chosen))
        items.extend(chosen.tolist())
    return Interactions(
        users=np.asarray(users, dtype=np.int64),
        items=np.asarray(items, dtype=np.int64),
        values=None,
        user_ids=_vocab("u", n_users),
        item_ids=_vocab("i", n_items),
    )


def _top(scores: torch.Tensor, n: int = 10) -> set[int]:
    return set(torch.topk(scores, n).indices.tolist())


def _fold_in_overlap(
    model: FlexMFExplicit | FlexMFImplicit, data: Interactions, users: range
) -> float:
    csr = data.user_csr()
    overlaps = []
    for user in users:
        items, values = csr.row(user)
        vector = model.fold_in(items, values)
        trained = model.score_users(torch.tensor([user]))[0]
        overlaps.append(len(_top(trained) & _top(model.score_user_vector(vector))))
    return float(np.mean(overlaps))


# ----- configs ----------------------------------------------------------------------------------
def test_configs_resolve_loss_dependent_defaults() -> None:
    assert FlexMFImplicitConfig(loss="warp").selected_negative_strategy() == "misranked"
    assert FlexMFImplicitConfig().selected_negative_strategy() == "uniform"
    assert FlexMFImplicitConfig(loss="logistic").selected_user_bias()
    assert not FlexMFImplicitConfig(loss="pairwise").selected_user_bias()
    with pytest.raises(ValueError, match="misranked"):
        FlexMFImplicitConfig(loss="warp", negative_strategy="uniform")
    with pytest.raises(ValueError, match="extra"):
        FlexMFExplicitConfig.model_validate({"embedding_sise": 3})


# ----- explicit ---------------------------------------------------------------------------------
@pytest.mark.parametrize("reg_method", ["L2", "AdamW"])
def test_explicit_learns_ratings(reg_method: str) -> None:
    """Held-out RMSE well below the item means' (measured on seeds 1-3: L2 0.51-0.55, AdamW
    0.42-0.48, item means 1.07-1.12; the bound is 0.7 times the item means)."""
    split = rating_holdout(explicit_data(), test_fraction=0.2, validation_fraction=0.0, seed=1)
    data = split.train
    config = FlexMFExplicitConfig(
        embedding_size=8,
        epochs=30,
        batch_size=256,
        learning_rate=0.02,
        reg_method=reg_method,
        fold_in_regularization=0.1,
    )
    model = FlexMFExplicit(config)
    model.fit(data)
    assert model.losses[-1] < model.losses[0]
    users, items = torch.as_tensor(data.users), torch.as_tensor(data.items)
    predicted = model.score_users(users[:1], items[:5])
    assert predicted.shape == (1, 5)
    mean = float(np.mean(data.values))  # type: ignore[arg-type]
    assert model.global_bias == pytest.approx(mean, rel=1e-5)
    assert model_rmse(model, split.test) <= 0.7 * item_mean_rmse(split.train, split.test)


def test_explicit_sigmoid_range_keeps_outputs_in_range() -> None:
    data = explicit_data()
    model = FlexMFExplicit(FlexMFExplicitConfig(embedding_size=8, epochs=5, sigmoid_range=True))
    model.fit(data)
    scores = model.score_users(torch.arange(data.n_users))
    assert float(scores.min()) > 0.5
    assert float(scores.max()) < 5.5
    vector = model.fold_in(np.array([0, 1, 2]), np.array([5.0, 4.0, 1.0], dtype=np.float32))
    assert torch.isfinite(vector.embedding).all()


def test_explicit_early_stopping_keeps_best_epoch() -> None:
    data = explicit_data()
    rng = np.random.default_rng(0)
    mask = rng.random(len(data)) < 0.8
    config = FlexMFExplicitConfig(
        embedding_size=16,
        epochs=60,
        batch_size=128,
        learning_rate=0.05,
        lr_schedule="constant",
        regularization=0.0,
        bias_regularization=0.0,
        uniform_regularization=0.0,
        early_stopping_patience=2,
        fold_in_regularization=0.1,
    )
    model = FlexMFExplicit(config)
    model.fit(data.subset(mask), validation=data.subset(~mask))
    assert len(model.losses) < 60  # overfits without regularization, so it stops early
    assert model.best_epoch == len(model.losses) - 2


def test_explicit_fold_in_matches_trained_user() -> None:
    data = explicit_data()
    model = FlexMFExplicit(FlexMFExplicitConfig(embedding_size=8, epochs=20, batch_size=256))
    model.fit(data)
    assert _fold_in_overlap(model, data, range(0, 80, 4)) >= 7.0
    # unknown items (negative indices) are ignored
    items, values = data.user_csr().row(0)
    base = model.fold_in(items, values)
    assert values is not None
    padded = model.fold_in(np.r_[items, -1], np.r_[values, np.float32(1.0)])
    torch.testing.assert_close(base.embedding, padded.embedding)
    empty = model.fold_in(np.array([-1], dtype=np.int64))
    assert float(empty.embedding.abs().sum()) == 0.0


# ----- training loop ----------------------------------------------------------------------------
def test_progress_reports_each_epoch_and_can_cancel() -> None:
    data = implicit_data()
    reports: list[TrainingProgress] = []
    config = FlexMFImplicitConfig(
        embedding_size=4, epochs=3, batch_size=256, fold_in_regularization=1.0
    )
    model = FlexMFImplicit(config)
    model.fit(data, progress=reports.append)
    assert [r.epoch for r in reports] == [1, 2, 3]
    assert all(r.epochs == 3 and math.isfinite(r.loss) and r.elapsed_s >= 0 for r in reports)

    class CancelledError(Exception):
        pass

    def cancel(report: TrainingProgress) -> None:
        if report.epoch == 2:
            raise CancelledError

    with pytest.raises(CancelledError):
        FlexMFImplicit(FlexMFImplicitConfig(embedding_size=4, epochs=5)).fit(data, cancel)


@pytest.mark.parametrize(
    "overrides",
    [
        {},
        {"reg_method": "AdamW"},
        {"loss": "warp"},
        {"loss": "pairwise", "negative_strategy": "popular"},
        {"loss": "logistic", "negative_strategy": "misranked", "negative_count": 2},
    ],
)
def test_implicit_training_is_deterministic(overrides: dict[str, object]) -> None:
    data = implicit_data()
    config = FlexMFImplicitConfig.model_validate(
        {"embedding_size": 8, "epochs": 3, "batch_size": 256, "fold_in_regularization": 1.0}
        | overrides
    )
    first, second = FlexMFImplicit(config), FlexMFImplicit(config)
    first.fit(data)
    second.fit(data)
    for name, tensor in first.state_tensors().items():
        assert torch.equal(tensor, second.state_tensors()[name]), name
    other = FlexMFImplicit(config.model_copy(update={"seed": config.seed + 1}))
    other.fit(data)
    assert not torch.equal(
        first.state_tensors()["item_factors"], other.state_tensors()["item_factors"]
    )


@pytest.mark.parametrize("model_type", [FlexMFExplicit, FlexMFImplicit])
def test_save_load_gives_identical_scores(
    model_type: type[FlexMFExplicit] | type[FlexMFImplicit], tmp_path: Path
) -> None:
    data = explicit_data()
    model = model_type(model_type.config_type(embedding_size=6, epochs=2))  # type: ignore[arg-type]
    model.fit(data)
    model.save(tmp_path / "m")
    loaded = model_type.load(tmp_path / "m")
    users = torch.arange(data.n_users)
    assert torch.equal(model.score_users(users), loaded.score_users(users))
    items, values = data.user_csr().row(1)
    folded, refolded = model.fold_in(items, values), loaded.fold_in(items, values)
    torch.testing.assert_close(folded.embedding, refolded.embedding)
    assert loaded.config == model.config


# ----- sampling ---------------------------------------------------------------------------------
def test_sampler_excludes_positives_and_follows_popularity() -> None:
    data = implicit_data()
    users, items = torch.as_tensor(data.users), torch.as_tensor(data.items)
    generator = torch.Generator().manual_seed(1)
    uniform = NegativeSampler(users, items, data.n_items, "uniform", generator)
    batch = users[:512]
    negatives = uniform.sample(batch, 8)
    assert negatives.shape == (512, 8)
    # a bounded number of redraws: positives become rare (18% of items are a user's positives)
    assert float(uniform.is_positive(batch, negatives).double().mean()) < 0.01
    popular = NegativeSampler(users, items, data.n_items, "popular", generator, False)
    drawn = torch.bincount(popular.sample(users, 20).flatten(), minlength=data.n_items)
    counts = torch.bincount(items, minlength=data.n_items)
    correlation = torch.corrcoef(torch.stack([drawn.double(), counts.double()]))[0, 1]
    assert float(correlation) > 0.95


def test_misranked_sampler_counts_draws_and_weights_by_rank() -> None:
    n_items = 101
    factors = torch.zeros(n_items, 1)
    factors[7] = 1.0  # the only item that outscores the positive
    users = torch.zeros(2000, dtype=torch.long)
    generator = torch.Generator().manual_seed(0)
    sampler = NegativeSampler(users[:1], torch.tensor([0]), n_items, "uniform", generator)
    chosen, draws, found = sampler.misranked(
        users, torch.ones(2000, 1), torch.full((2000,), 0.5), factors, None, 0.0, 3000
    )
    assert bool(found.all())
    assert bool((chosen == 7).all())
    # geometric draws with success probability 1/101: mean ≈ 101, never fewer than one
    assert 80 < float(draws.double().mean()) < 125
    weights = rank_weight(n_items, draws)
    assert float(weights.max()) <= sum(1 / k for k in range(1, n_items)) + 1e-4
    first_draw = rank_weight(n_items, torch.tensor([1]))
    assert float(first_draw) == pytest.approx(sum(1 / k for k in range(1, 101)), rel=1e-5)
    # a positive nothing outscores: the sampler gives up after max_draws, weight 0 in WARP
    _, draws, found = sampler.misranked(
        users[:10], torch.ones(10, 1), torch.full((10,), 2.0), factors, None, 0.0, 40
    )
    assert not bool(found.any())
    assert bool((draws == 40).all())


def test_warp_draws_more_as_it_learns_and_trains_unlike_bpr() -> None:
    data = implicit_data()
    base = {"embedding_size": 8, "epochs": 8, "batch_size": 128, "seed": 11}
    base["fold_in_regularization"] = 1.0
    warp = FlexMFImplicit(FlexMFImplicitConfig.model_validate({**base, "loss": "warp"}))
    warp.fit(data)
    stats = warp.sampler_stats
    assert len(stats) == 8
    # once the model ranks positives high, misranked candidates are rare: several draws each
    assert stats[-1].mean_draws > 2.0
    assert stats[-1].mean_draws > stats[0].mean_draws
    # updates are weighted by the estimated rank, so the mean weight falls as draws grow
    assert stats[-1].mean_weight < stats[0].mean_weight
    bpr = FlexMFImplicit(FlexMFImplicitConfig.model_validate({**base, "loss": "pairwise"}))
    bpr.fit(data)
    assert bpr.sampler_stats == []
    difference = warp.state_tensors()["item_factors"] - bpr.state_tensors()["item_factors"]
    assert float(difference.abs().max()) > 0.1


@pytest.mark.parametrize("loss", ["logistic", "pairwise", "warp"])
def test_implicit_fold_in_reproduces_trained_top10(loss: str) -> None:
    data = implicit_data()
    config = FlexMFImplicitConfig.model_validate(
        {"embedding_size": 8, "epochs": 15, "batch_size": 128, "loss": loss}
    )
    model = FlexMFImplicit(config)
    model.fit(data)
    assert _fold_in_overlap(model, data, range(0, 120, 6)) >= 7.0
    items, _ = data.user_csr().row(3)
    first, again = model.fold_in(items), model.fold_in(items)
    assert torch.equal(first.embedding, again.embedding)


def test_fold_in_calibration_is_the_same_on_one_thread() -> None:
    data = implicit_data()
    config = FlexMFImplicitConfig.model_validate({"embedding_size": 8, "epochs": 3})
    model = FlexMFImplicit(config)
    model.fit(data)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)  # the calibration's users one after another
        one = model._calibration_overlaps(data)
        torch.set_num_threads(3)  # on three Python threads
        many = model._calibration_overlaps(data)
    finally:
        torch.set_num_threads(threads)
    assert one is not None
    assert many is not None
    assert one.tolist() == many.tolist()
    assert int(one.sum()) > 0


# ----- acceptance on MovieLens 100K -------------------------------------------------------------
def _ml100k() -> Interactions:
    from service.tools.datasets import load_ml100k

    table = load_ml100k(Path(".cache"))
    return Interactions.from_ids(table.users, table.items, table.ratings, table.timestamps)


@pytest.mark.slow
def test_ml100k_explicit_default_rmse() -> None:
    from service.ml.metrics import evaluate_ratings, model_predict_fn
    from service.ml.splits import rating_holdout

    split = rating_holdout(_ml100k())
    model = FlexMFExplicit()
    model.fit(split.train, validation=split.validation)
    # reaches 0.893; a bias-only model 0.932
    assert evaluate_ratings(model_predict_fn(model), split.test)["rmse"] <= 0.900


@pytest.mark.slow
def test_ml100k_implicit_default_ndcg() -> None:
    from service.ml.metrics import evaluate_ranking, model_score_fn
    from service.ml.splits import user_holdout

    split = user_holdout(_ml100k())
    model = FlexMFImplicit()
    model.fit(split.train_full)
    result = evaluate_ranking(model_score_fn(model), split.train_full, split.test)
    assert result["ndcg@10"] >= 0.36  # reaches 0.376; popular 0.222
