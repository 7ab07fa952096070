"""One retrain, as pure functions: ratings arrays → interactions → holdout → fit → evaluate → gate.

Nothing here touches the database or HTTP: the worker loop reads a snapshot into `RatingsData`,
calls `train_and_evaluate`, and publishes what `write_model_artifact` wrote.

Evaluation holds out a seeded validation slice (random ratings for explicit models, a share of
each user's items for implicit ones), trains on the rest, and measures the model and the
popularity baseline on the same slice. The sanity gate then requires finite parameters and a
validation metric no worse than the baseline's by more than a relative margin: RMSE for explicit
models (baseline: the damped item-mean predictor, which is what popularity means for ratings),
nDCG@10 for implicit ones (baseline: `popular`).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch

from service.ml.artifacts import ArtifactInfo, SnapshotInfo, write_artifact
from service.ml.base import ProgressCallback, Recommender
from service.ml.catalog import create_model
from service.ml.data import IndexArray, Interactions, Vocabulary
from service.ml.features import FeatureData
from service.ml.metrics import (
    RANKING_K,
    evaluate_ranking,
    evaluate_ratings,
    model_predict_fn,
    model_score_fn,
)
from service.ml.splits import rating_holdout, user_holdout

BASELINE_ALGORITHM = "popular"
"""The baseline every model is compared with, also packed as the serving fallback."""

MAX_EVALUATION_USERS = 5000
"""Ranking metrics are averaged over at most this many validation users (a seeded sample)."""

ITEM_MEAN_DAMPING = 5.0
"""Pseudo-ratings at the global mean in the item-mean baseline of explicit models."""


class InsufficientDataError(ValueError):
    """The snapshot has too few usable ratings to train and validate a model."""


@dataclass(frozen=True)
class RatingsData:
    """A snapshot of the ratings as parallel arrays; `values` is NaN for implicit interactions.

    `users` and `items` index `user_ids` and `item_ids`, which may hold ids without ratings.
    """

    users: IndexArray
    items: IndexArray
    values: npt.NDArray[np.float32]
    user_ids: list[str]
    item_ids: list[str]
    info: SnapshotInfo
    features: FeatureData | None = None
    """Users' attributes and items' tags and attributes, for feature-aware models."""

    def __len__(self) -> int:
        return int(self.users.shape[0])


@dataclass(frozen=True)
class GateResult:
    """The sanity gate's verdict and the numbers it compared."""

    passed: bool
    metric: str
    value: float
    baseline: float
    margin: float
    higher_is_better: bool
    reason: str

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {
            "passed": self.passed,
            "metric": self.metric,
            "value": _json_float(self.value),
            "baseline": _json_float(self.baseline),
            "margin": self.margin,
            "higher_is_better": self.higher_is_better,
            "reason": self.reason,
        }


@dataclass(frozen=True)
class TrainingOutcome:
    """A trained model, its baseline (the serving fallback) and everything measured."""

    model: Recommender[Any]
    baseline: Recommender[Any]
    metrics: dict[str, float]
    baseline_metrics: dict[str, float]
    gate: GateResult
    n_train: int
    n_validation: int
    train_seconds: float
    device: str
    extra: dict[str, Any] = field(default_factory=dict)

    def report(self) -> dict[str, Any]:
        """The metrics document stored with the job and the version."""
        return {
            "validation": {k: _json_float(v) for k, v in self.metrics.items()},
            "baseline": {k: _json_float(v) for k, v in self.baseline_metrics.items()},
            "baseline_algorithm": BASELINE_ALGORITHM,
            "gate": self.gate.as_dict(),
            "n_train": self.n_train,
            "n_validation": self.n_validation,
            "train_seconds": round(self.train_seconds, 3),
            "device": self.device,
            **self.extra,
        }


def _json_float(value: float) -> float | None:
    return float(value) if math.isfinite(value) else None


def build_interactions(data: RatingsData, explicit: bool) -> Interactions:
    """Interactions over the users and items that have ratings; explicit drops valueless rows.

    Implicit models get the rating values where any exist (valueless rows count as 1.0), and no
    values when none exist.
    """
    has_value = ~np.isnan(data.values)
    if explicit:
        keep = has_value
        users, items, values = data.users[keep], data.items[keep], data.values[keep]
    else:
        users, items = data.users, data.items
        values = np.where(has_value, data.values, np.float32(1.0)).astype(np.float32)
    user_index, user_codes = np.unique(users, return_inverse=True)
    item_index, item_codes = np.unique(items, return_inverse=True)
    no_values = not explicit and not bool(has_value.any())
    return Interactions(
        users=user_codes.astype(np.int64).ravel(),
        items=item_codes.astype(np.int64).ravel(),
        values=None if no_values else values.astype(np.float32),
        user_ids=Vocabulary([data.user_ids[int(i)] for i in user_index]),
        item_ids=Vocabulary([data.item_ids[int(i)] for i in item_index]),
        features=data.features,
    )


def holdout(
    data: Interactions, explicit: bool, fraction: float, seed: int
) -> tuple[Interactions, Interactions]:
    """Train and validation parts: random ratings (explicit) or a share of each user's items."""
    if explicit:
        split = rating_holdout(data, test_fraction=0.0, validation_fraction=fraction, seed=seed)
    else:
        split = user_holdout(data, test_fraction=0.0, validation_fraction=fraction, seed=seed)
    if len(split.train) == 0 or len(split.validation) == 0:
        raise InsufficientDataError(
            f"not enough ratings to train and validate: {len(data)} usable rows give "
            f"{len(split.train)} for training and {len(split.validation)} for validation"
        )
    return split.train, split.validation


def _sample_users(validation: Interactions, max_users: int, seed: int) -> Interactions:
    users = np.unique(validation.users)
    if users.shape[0] <= max_users:
        return validation
    chosen = np.random.default_rng(seed).choice(users, size=max_users, replace=False)
    return validation.subset(np.isin(validation.users, chosen))


def evaluate(
    model: Recommender[Any],
    train: Interactions,
    validation: Interactions,
    seed: int = 42,
    max_users: int = MAX_EVALUATION_USERS,
) -> dict[str, float]:
    """Ranking metrics on (a sample of) the validation users, and rating metrics when explicit."""
    sample = _sample_users(validation, max_users, seed)
    result = evaluate_ranking(model_score_fn(model), train, sample, k=RANKING_K)
    if model.explicit and validation.values is not None:
        result.update(evaluate_ratings(model_predict_fn(model), validation))
    return result


def item_mean_rmse(
    train: Interactions, validation: Interactions, damping: float = ITEM_MEAN_DAMPING
) -> float:
    """RMSE of predicting each validation rating by its item's damped mean training rating."""
    if train.values is None or validation.values is None:
        raise ValueError("item-mean RMSE needs explicit ratings")
    values = train.values.astype(np.float64)
    mean = float(values.mean())
    sums = np.bincount(train.items, weights=values - mean, minlength=train.n_items)
    counts = np.bincount(train.items, minlength=train.n_items)
    offsets = sums / (counts + damping)
    predicted = mean + offsets[validation.items]
    diff = predicted - validation.values.astype(np.float64)
    return float(np.sqrt(np.mean(diff * diff)))


def parameters_finite(model: Recommender[Any]) -> bool:
    """Whether every learned tensor is free of NaN and infinity."""
    return all(
        bool(torch.isfinite(tensor).all())
        for tensor in model.state_tensors().values()
        if tensor.is_floating_point()
    )


def check_gate(
    model: Recommender[Any],
    metrics: dict[str, float],
    baseline_metrics: dict[str, float],
    margin: float,
) -> GateResult:
    """Finite parameters, and the validation metric within `margin` (relative) of the baseline's."""
    if model.explicit and "rmse" in metrics:
        metric, higher = "rmse", False
    else:
        metric, higher = f"ndcg@{RANKING_K}", True
    value = metrics.get(metric, math.nan)
    baseline = baseline_metrics.get(metric, math.nan)

    def verdict(passed: bool, reason: str) -> GateResult:
        return GateResult(passed, metric, value, baseline, margin, higher, reason)

    if not parameters_finite(model):
        return verdict(False, "the model has non-finite parameters (NaN or infinity)")
    if not math.isfinite(value):
        return verdict(False, f"validation {metric} is not a finite number ({value})")
    if not math.isfinite(baseline):
        return verdict(True, f"no finite baseline {metric}; only finiteness was checked")
    if higher:
        limit = baseline * (1.0 - margin)
        if value < limit:
            return verdict(
                False,
                f"validation {metric} {value:.4f} is below the popularity baseline's "
                f"{baseline:.4f} by more than the margin {margin:g} (limit {limit:.4f})",
            )
    else:
        limit = baseline * (1.0 + margin)
        if value > limit:
            return verdict(
                False,
                f"validation {metric} {value:.4f} is above the item-mean baseline's "
                f"{baseline:.4f} by more than the margin {margin:g} (limit {limit:.4f})",
            )
    return verdict(True, f"validation {metric} {value:.4f} vs baseline {baseline:.4f}")


def train_and_evaluate(
    algorithm: str,
    config: dict[str, Any],
    data: RatingsData,
    *,
    validation_fraction: float,
    seed: int,
    gate_margin: float,
    progress: ProgressCallback | None = None,
) -> TrainingOutcome:
    """Fit `algorithm` on a holdout of the snapshot, evaluate it and the baseline, apply the gate.

    Raises `InsufficientDataError` when the snapshot cannot be split, and lets a progress
    callback's exception (cancel) through unchanged.
    """
    model = create_model(algorithm, config)
    explicit = model.explicit
    interactions = build_interactions(data, explicit)
    if len(interactions) == 0:
        kind = "explicit ratings" if explicit else "interactions"
        raise InsufficientDataError(f"{algorithm} needs {kind}, and the database holds none")
    train, validation = holdout(interactions, explicit, validation_fraction, seed)
    started = time.perf_counter()
    model.fit(train, progress=progress, validation=validation)
    train_seconds = time.perf_counter() - started
    metrics = evaluate(model, train, validation, seed=seed)

    baseline = model if algorithm == BASELINE_ALGORITHM else create_model(BASELINE_ALGORITHM, {})
    if baseline is not model:
        baseline.fit(train)
    baseline_metrics = evaluate(baseline, train, validation, seed=seed)
    if explicit and validation.values is not None:
        baseline_metrics["rmse"] = item_mean_rmse(train, validation)
    gate = check_gate(model, metrics, baseline_metrics, gate_margin)
    return TrainingOutcome(
        model=model,
        baseline=baseline,
        metrics=metrics,
        baseline_metrics=baseline_metrics,
        gate=gate,
        n_train=len(train),
        n_validation=len(validation),
        train_seconds=train_seconds,
        device=str(model.device),
    )


def refit_config(model: Recommender[Any]) -> dict[str, Any]:
    """The config to refit a gated model with on the whole snapshot: its own, with `epochs` set
    to the best validation epoch where early stopping ended training sooner."""
    config: dict[str, Any] = model.config.model_dump(mode="json")
    best = getattr(model, "best_epoch", None)
    if isinstance(best, int) and 0 < best < int(config.get("epochs", 0)):
        config["epochs"] = best
    return config


def refit(
    outcome: TrainingOutcome,
    data: RatingsData,
    *,
    progress: ProgressCallback | None = None,
) -> TrainingOutcome:
    """The outcome with its model refitted on every usable rating of the snapshot (same
    algorithm and seed; `refit_config`): the validation metrics stay those of the gated fit.

    The refitted model is what `mfserve train` fits offline on the same data with the same
    config, so the two score alike.
    """
    interactions = build_interactions(data, outcome.model.explicit)
    model = create_model(outcome.model.name, refit_config(outcome.model))
    started = time.perf_counter()
    model.fit(interactions, progress=progress)
    seconds = time.perf_counter() - started
    baseline = model
    if outcome.baseline is not outcome.model:
        baseline = create_model(BASELINE_ALGORITHM, {})
        baseline.fit(interactions)
    refitted = {"n_ratings": len(interactions), "seconds": round(seconds, 3)}
    if not parameters_finite(model):
        raise ValueError("the refitted model has non-finite parameters (NaN or infinity)")
    return replace(
        outcome,
        model=model,
        baseline=baseline,
        device=str(model.device),
        extra={**outcome.extra, "refit": refitted},
    )


def write_model_artifact(
    outcome: TrainingOutcome, artifact_dir: Path, snapshot: SnapshotInfo, job_id: int | None = None
) -> ArtifactInfo:
    """Write the model (with the baseline as its fallback) and the snapshot into one artifact,
    named `job<id>-<algorithm>-<sha256 prefix>.mfmodel`."""
    fallback = None if outcome.baseline is outcome.model else outcome.baseline
    stem = outcome.model.name if job_id is None else f"job{job_id}-{outcome.model.name}"
    return write_artifact(
        outcome.model, artifact_dir, fallback=fallback, stem=stem, snapshot=snapshot
    )
