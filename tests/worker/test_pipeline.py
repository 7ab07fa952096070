"""The retrain pipeline as pure functions: interactions, holdout, evaluation, sanity gate."""

from __future__ import annotations

import math
from dataclasses import replace
from typing import Any

import numpy as np
import pytest
import torch

from service.ml.base import TrainingProgress
from service.ml.catalog import create_model
from service.worker.pipeline import (
    InsufficientDataError,
    build_interactions,
    check_gate,
    holdout,
    item_mean_rmse,
    train_and_evaluate,
)
from tests.support.synthetic import low_rank_ratings

FAST_ALS = {"epochs": 4, "embedding_size": 4, "device": "cpu"}


def test_explicit_interactions_drop_valueless_rows_and_unused_ids() -> None:
    data = low_rank_ratings(n_users=5, n_items=4, density=1.0)
    values = data.values.copy()
    values[data.users == 0] = np.nan  # user u0 has only implicit interactions
    data = replace(data, values=values, user_ids=[*data.user_ids, "ghost"])
    explicit = build_interactions(data, explicit=True)
    assert "u0" not in explicit.user_ids
    assert "ghost" not in explicit.user_ids
    assert len(explicit) == 16
    assert explicit.values is not None
    assert not np.isnan(explicit.values).any()
    implicit = build_interactions(data, explicit=False)
    assert len(implicit) == 20
    assert implicit.values is not None
    assert implicit.values[implicit.users == implicit.user_ids.index("u0")].tolist() == [1.0] * 4


def test_all_implicit_rows_give_no_values() -> None:
    data = low_rank_ratings(n_users=5, n_items=4, density=1.0)
    data = replace(data, values=np.full_like(data.values, np.nan))
    assert build_interactions(data, explicit=False).values is None
    assert len(build_interactions(data, explicit=True)) == 0


def test_holdout_needs_enough_rows() -> None:
    tiny = build_interactions(low_rank_ratings(n_users=1, n_items=1, density=1.0), explicit=True)
    with pytest.raises(InsufficientDataError, match="not enough ratings"):
        holdout(tiny, explicit=True, fraction=0.1, seed=1)


def test_train_and_evaluate_reports_metrics_progress_and_passes_gate() -> None:
    seen: list[TrainingProgress] = []
    outcome = train_and_evaluate(
        "als-biased",
        FAST_ALS,
        low_rank_ratings(n_users=80, n_items=50),
        validation_fraction=0.1,
        seed=3,
        gate_margin=0.05,
        progress=seen.append,
    )
    assert [p.epoch for p in seen] == [1, 2, 3, 4]
    assert outcome.gate.passed, outcome.gate.reason
    assert outcome.gate.metric == "rmse"
    assert outcome.metrics["rmse"] < outcome.baseline_metrics["rmse"]
    report = outcome.report()
    assert report["baseline_algorithm"] == "popular"
    assert report["gate"]["passed"] is True
    assert report["n_train"] + report["n_validation"] == len(low_rank_ratings(80, 50))
    assert outcome.baseline.name == "popular"
    assert "ndcg@10" in report["validation"]


def test_progress_exception_aborts_training() -> None:
    class StopError(Exception):
        pass

    def cancel(report: TrainingProgress) -> None:
        if report.epoch == 2:
            raise StopError

    with pytest.raises(StopError):
        train_and_evaluate(
            "als-biased",
            FAST_ALS,
            low_rank_ratings(),
            validation_fraction=0.1,
            seed=3,
            gate_margin=0.05,
            progress=cancel,
        )


def test_explicit_model_on_implicit_only_data_fails_clearly() -> None:
    data = low_rank_ratings()
    data = replace(data, values=np.full_like(data.values, np.nan))
    with pytest.raises(InsufficientDataError, match="needs explicit ratings"):
        train_and_evaluate(
            "als-biased", FAST_ALS, data, validation_fraction=0.1, seed=1, gate_margin=0.05
        )


def _fitted(name: str, config: dict[str, Any]) -> Any:
    model = create_model(name, config)
    model.fit(build_interactions(low_rank_ratings(), explicit=model.explicit))
    return model


def test_gate_refuses_non_finite_parameters() -> None:
    model = _fitted("als-biased", FAST_ALS)
    tensors = model.state_tensors()
    name = next(k for k, v in tensors.items() if v.is_floating_point() and v.numel())
    tensors[name] = tensors[name].clone()
    tensors[name].view(-1)[0] = torch.nan
    model.load_state_tensors(tensors)
    gate = check_gate(model, {"rmse": 0.5}, {"rmse": 1.0}, 0.05)
    assert not gate.passed
    assert "non-finite" in gate.reason


def test_gate_compares_with_the_baseline_within_the_margin() -> None:
    explicit = _fitted("als-biased", FAST_ALS)
    assert check_gate(explicit, {"rmse": 1.04}, {"rmse": 1.0}, 0.05).passed
    worse = check_gate(explicit, {"rmse": 1.06}, {"rmse": 1.0}, 0.05)
    assert not worse.passed
    assert "above the item-mean baseline" in worse.reason
    assert not check_gate(explicit, {"rmse": math.nan}, {"rmse": 1.0}, 0.05).passed

    implicit = _fitted("popular", {})
    assert check_gate(implicit, {"ndcg@10": 0.20}, {"ndcg@10": 0.21}, 0.05).passed
    low = check_gate(implicit, {"ndcg@10": 0.19}, {"ndcg@10": 0.21}, 0.05)
    assert not low.passed
    assert low.metric == "ndcg@10"
    assert "below the popularity baseline" in low.reason


def test_item_mean_rmse_beats_the_global_mean() -> None:
    data = build_interactions(low_rank_ratings(n_users=100), explicit=True)
    train, validation = holdout(data, explicit=True, fraction=0.2, seed=1)
    assert train.values is not None
    assert validation.values is not None
    global_rmse = float(np.sqrt(np.mean((validation.values - train.values.mean()) ** 2)))
    assert item_mean_rmse(train, validation) < global_rmse
