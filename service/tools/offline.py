"""Offline training and evaluation: `mfserve train --dataset ml-100k --model NAME`.

Protocol (the same in `bench/train.py`): explicit models are measured on a seeded random 90/10
rating split, implicit ones on a seeded 20% per-user holdout. Hyper-parameters (defaults) are
chosen by fitting on `split.train` and measuring on `split.validation`; the reported model is
fitted on the whole training part (`split.train_full`), or on `split.train` with
`split.validation` for models that stop early on it, and measured once on `split.test`, with
top-N lists that exclude each user's training items.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from tqdm import tqdm

from service.config import Settings
from service.ml.base import Recommender, TrainingProgress
from service.ml.catalog import CatalogError, create_model
from service.ml.data import Interactions
from service.ml.device import configure_threads
from service.ml.metrics import RANKING_K, evaluate_model
from service.ml.splits import Split, rating_holdout, user_holdout
from service.tools.datasets import DatasetError, load_ml100k

RATING_TEST_FRACTION = 0.1
"""Share of all ratings held out for testing explicit models (90/10)."""

USER_TEST_FRACTION = 0.2
"""Share of each user's items held out for testing implicit models."""


@dataclass(frozen=True)
class OfflineResult:
    """A fitted model, its split, test metrics and timings."""

    model: Recommender[Any]
    split: Split
    metrics: dict[str, float]
    fit_seconds: float
    epochs: int


def load_dataset(name: str, cache_dir: Path) -> Interactions:
    """Interactions (with ratings and timestamps) of a named dataset."""
    if name != "ml-100k":
        raise ValueError(f"unknown dataset {name!r}; known datasets: ml-100k")
    table = load_ml100k(cache_dir)
    return Interactions.from_ids(table.users, table.items, table.ratings, table.timestamps)


def split_for(data: Interactions, explicit: bool, seed: int) -> Split:
    """The evaluation split of a model kind: rating holdout if explicit, else per-user."""
    if explicit:
        return rating_holdout(data, test_fraction=RATING_TEST_FRACTION, seed=seed)
    return user_holdout(data, test_fraction=USER_TEST_FRACTION, seed=seed)


def fit_data(model: Recommender[Any], split: Split) -> tuple[Interactions, Interactions | None]:
    """Training data and validation slice for the final fit: models that stop early on a
    validation slice get `train` and `validation`; the others the whole training part."""
    if getattr(model.config, "early_stopping_patience", None) is not None:
        return split.train, split.validation
    return split.train_full, None


def fit_and_test(
    model: Recommender[Any],
    data: Interactions,
    seed: int,
    show_progress: bool = True,
    stream: TextIO | None = None,
) -> OfflineResult:
    """Split, fit on the whole training part with a progress bar, and measure on the test part."""
    split = split_for(data, model.explicit, seed)
    train, validation = fit_data(model, split)
    epochs = int(getattr(model.config, "epochs", 1))
    bar = tqdm(
        total=epochs,
        desc=f"training {model.name}",
        unit="epoch",
        disable=not show_progress,
        file=stream if stream is not None else sys.stderr,
    )
    done = [0]

    def report(progress: TrainingProgress) -> None:
        bar.total = progress.epochs
        bar.update(progress.epoch - done[0])
        done[0] = progress.epoch
        bar.set_postfix(loss=f"{progress.loss:.4f}")

    started = time.perf_counter()
    try:
        model.fit(train, progress=report, validation=validation)
    finally:
        bar.close()
    fit_seconds = time.perf_counter() - started
    metrics = evaluate_model(model, split.train_full, split.test, k=RANKING_K)
    return OfflineResult(model, split, metrics, fit_seconds, max(done[0], 1))


def format_table(rows: list[dict[str, str]], columns: list[str]) -> str:
    """A plain-text table with aligned columns."""
    widths = {c: max(len(c), *(len(r.get(c, "")) for r in rows)) for c in columns}
    lines = ["  ".join(c.ljust(widths[c]) for c in columns)]
    lines.append("  ".join("-" * widths[c] for c in columns))
    lines += ["  ".join(r.get(c, "").ljust(widths[c]) for c in columns) for r in rows]
    return "\n".join(lines)


def metrics_table(result: OfflineResult) -> str:
    """The test metrics of one offline run as a two-column table."""
    split = result.split
    rows = [
        {"metric": "train / test rows", "value": f"{len(split.train_full)} / {len(split.test)}"},
        {"metric": "fit seconds", "value": f"{result.fit_seconds:.2f}"},
        {"metric": "s/epoch", "value": f"{result.fit_seconds / result.epochs:.3f}"},
    ]
    for name, value in result.metrics.items():
        shown = f"{value:.0f}" if name == "users" else f"{value:.4f}"
        rows.append({"metric": "test users" if name == "users" else name, "value": shown})
    return format_table(rows, ["metric", "value"])


def run_train_command(
    settings: Settings,
    *,
    dataset: str,
    model_name: str,
    config: dict[str, Any],
    seed: int,
    output: Path | None = None,
) -> int:
    """`mfserve train`: train one model offline, print its test metrics, optionally save it."""
    configure_threads(None)
    config = dict(config)
    config.setdefault("seed", seed)
    try:
        model = create_model(model_name, config)
    except CatalogError as exc:
        print(f"mfserve train: {exc}", file=sys.stderr)
        return 2
    try:
        data = load_dataset(dataset, settings.cache_dir)
    except DatasetError as exc:
        print(f"mfserve train: {exc}", file=sys.stderr)
        return 1
    protocol = "90/10 rating split" if model.explicit else "20% per-user holdout"
    print(f"{dataset}: {len(data)} interactions, {protocol}, seed {seed}")
    result = fit_and_test(model, data, seed)
    print(f"{model.name} on {model.device}, config {model.config.model_dump_json()}")
    print(metrics_table(result))
    if output is not None:
        model.save(output)
        print(f"saved to {output}")
    return 0
