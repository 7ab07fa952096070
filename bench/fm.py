"""Factorization machines on MovieLens 100K with its metadata (genres, release year; age,
gender, occupation), against the same models without features, in one run.

1. `fm-explicit` RMSE on the seeded 90/10 rating split (`service.tools.offline.split_for`), with and
   without features. Each variant's hyper-parameters are chosen from a small grid by RMSE on the
   validation slice carved from the training part; every grid point is fitted on `train` with
   early stopping on that slice, and only the chosen model is measured on the test part.
2. `fm-implicit` nDCG@10 on the seeded 20% per-user holdout (defaults, fitted on the whole
   training part), with and without features, and `flexmf-implicit` for reference.
3. Cold items: a seeded 20% of the items is held out entirely; models train on the other items'
   interactions (metadata known for all items and users) and rank only the held-out items for
   every user who has interactions with them. nDCG@10 against a random ranking (mean of 20 seeded
   permutations) and against `fm-implicit` without features, whose held-out items all score the
   same (ties broken at random): a model without features cannot tell unseen items apart.

    .venv/bin/python bench/fm.py            # all three
    .venv/bin/python bench/fm.py --only explicit --no-grid   # defaults only: half the time
    .venv/bin/python bench/fm.py --only cold

With features, one fm-explicit fit gathers every user's and item's implicit-feedback set in
each batch; on 2 cores shared with other work (load average 10-12) it took about 20 minutes.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
for path in (REPO, REPO / "bench"):
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))

from fm_data import load_metadata  # noqa: E402

from service.ml.catalog import create_model  # noqa: E402
from service.ml.data import Interactions, Vocabulary  # noqa: E402
from service.ml.fm import FMScorer  # noqa: E402
from service.ml.metrics import (  # noqa: E402
    evaluate_ranking,
    evaluate_ratings,
    list_metrics,
    model_predict_fn,
    model_score_fn,
)
from service.tools.offline import format_table, load_dataset, split_for  # noqa: E402

NO_FEATURES = {
    "user_features": False,
    "item_features": False,
    "implicit_feedback": False,
    "item_implicit_feedback": False,
}
"""Ids only: the same model without any feature (a biased MF trained the same way)."""
REGULARIZATIONS = ("reg_user_id", "reg_item_id", "reg_user_features", "reg_item_features")
EXPLICIT_GRID: list[dict[str, Any]] = [
    dict.fromkeys((*REGULARIZATIONS, "reg_implicit"), strength) for strength in (0.2, 0.3)
]
"""Grid points over the defaults, each tried for both variants (no features: id terms only)."""
COLD_FRACTION = 0.2
RANDOM_REPEATS = 20


def log(message: str) -> None:
    """A progress line on stderr."""
    print(message, file=sys.stderr, flush=True)


def data_with_features(seed: int) -> Interactions:
    """ML-100K ratings with the metadata attached."""
    data = load_dataset("ml-100k", REPO / ".cache")
    return dataclasses.replace(data, features=load_metadata(REPO / ".cache"))


# ----- 1. explicit ------------------------------------------------------------------------------
def explicit_section(data: Interactions, seed: int, grid: bool) -> list[dict[str, str]]:
    """Per variant: the validation-chosen grid point, its validation and test RMSE."""
    split = split_for(data, explicit=True, seed=seed)
    rows = []
    for variant, extra in (("with features", {}), ("without features", NO_FEATURES)):
        best: tuple[float, Any, dict[str, Any], float] | None = None
        for point in EXPLICIT_GRID if grid else EXPLICIT_GRID[:1]:
            config = {**point, **extra, "seed": seed}
            started = time.perf_counter()
            model = create_model("fm-explicit", config)
            model.fit(split.train, validation=split.validation)
            seconds = time.perf_counter() - started
            validation = evaluate_ratings(model_predict_fn(model), split.validation)["rmse"]
            log(f"fm-explicit {variant} {point}: validation RMSE {validation:.4f} ({seconds:.0f}s)")
            if best is None or validation < best[0]:
                best = (validation, model, point, seconds)
        assert best is not None
        validation, model, point, seconds = best
        test = evaluate_ratings(model_predict_fn(model), split.test)
        rows.append(
            {
                "fm-explicit": variant,
                "chosen L2": str(point["reg_user_id"]),
                "epochs": str(getattr(model, "best_epoch", "")),
                "validation RMSE": f"{validation:.4f}",
                "test RMSE": f"{test['rmse']:.4f}",
                "test MAE": f"{test['mae']:.4f}",
                "fit s": f"{seconds:.0f}",
            }
        )
    return rows


# ----- 2. implicit ------------------------------------------------------------------------------
def implicit_section(data: Interactions, seed: int) -> list[dict[str, str]]:
    """nDCG@10 and Recall@10 of fm-implicit with/without features and flexmf-implicit."""
    split = split_for(data, explicit=False, seed=seed)
    rows = []
    systems: list[tuple[str, str, dict[str, Any]]] = [
        ("fm-implicit", "with features", {}),
        ("fm-implicit", "without features", NO_FEATURES),
        ("flexmf-implicit", "defaults", {}),
    ]
    for name, variant, extra in systems:
        started = time.perf_counter()
        model = create_model(name, {**extra, "seed": seed})
        model.fit(split.train_full)
        seconds = time.perf_counter() - started
        result = evaluate_ranking(model_score_fn(model), split.train_full, split.test)
        log(f"{name} {variant}: nDCG@10 {result['ndcg@10']:.4f} ({seconds:.0f}s)")
        rows.append(
            {
                "system": f"{name} ({variant})",
                "nDCG@10": f"{result['ndcg@10']:.4f}",
                "recall@10": f"{result['recall@10']:.4f}",
                "fit s": f"{seconds:.0f}",
            }
        )
    return rows


# ----- 3. cold items ----------------------------------------------------------------------------
def cold_split(data: Interactions, seed: int) -> tuple[Interactions, list[str], list[list[int]]]:
    """Training interactions of the warm items (warm vocabulary), the cold item ids, and per
    training user the positions (in the cold list) of the cold items they interacted with."""
    rng = np.random.default_rng(seed)
    n_cold = round(data.n_items * COLD_FRACTION)
    cold = np.sort(rng.choice(data.n_items, size=n_cold, replace=False))
    is_cold = np.zeros(data.n_items, dtype=bool)
    is_cold[cold] = True
    warm = np.flatnonzero(~is_cold)
    warm_position = np.full(data.n_items, -1, dtype=np.int64)
    warm_position[warm] = np.arange(len(warm))
    cold_position = np.full(data.n_items, -1, dtype=np.int64)
    cold_position[cold] = np.arange(len(cold))
    keep = ~is_cold[data.items]
    train = Interactions(
        users=data.users[keep],
        items=warm_position[data.items[keep]],
        values=None,
        user_ids=data.user_ids,
        item_ids=Vocabulary(data.item_ids.ids_of(warm)),
        features=data.features,
    )
    relevant: list[list[int]] = [[] for _ in range(data.n_users)]
    for user, item in zip(data.users[~keep], data.items[~keep], strict=True):
        relevant[int(user)].append(int(cold_position[item]))
    return train, data.item_ids.ids_of(cold), relevant


def ndcg_over(scores: torch.Tensor, relevant: list[list[int]], users: np.ndarray) -> float:
    """Mean nDCG@10 of each user's ranking of the cold items (rows of `scores` follow `users`)."""
    top = torch.topk(scores, 10, dim=1).indices
    truth = torch.zeros(scores.shape, dtype=torch.bool)
    for row, user in enumerate(users):
        truth[row, relevant[int(user)]] = True
    hits = truth.gather(1, top)
    counts = torch.as_tensor([len(relevant[int(u)]) for u in users])
    return float(list_metrics(top, hits, counts, k=10)["ndcg@10"].mean())


def cold_scores(model: FMScorer[Any], data: Interactions, cold_ids: list[str]) -> torch.Tensor:
    """Scores (users, cold items) of every trained user over the cold items' feature vectors."""
    assert data.features is not None
    params = model.cold_item_parameters(data.features, cold_ids)
    embeddings, biases = model.user_parameters(torch.arange(model.n_users))
    return embeddings @ params.factors.T + params.bias + biases[:, None]


def cold_section(data: Interactions, seed: int) -> list[dict[str, str]]:
    """nDCG@10 over held-out items: fm-implicit with features, without, and random."""
    train, cold_ids, relevant = cold_split(data, seed)
    users = np.flatnonzero([len(r) > 0 for r in relevant])
    log(
        f"cold items: {len(cold_ids)} held out, {len(users)} test users, {len(train)} training rows"
    )
    generator = torch.Generator().manual_seed(seed)
    random = np.mean(
        [
            ndcg_over(torch.rand((len(users), len(cold_ids)), generator=generator), relevant, users)
            for _ in range(RANDOM_REPEATS)
        ]
    )
    rows = [{"ranking of held-out items": "random (mean of 20)", "nDCG@10": f"{random:.4f}"}]
    figures = {}
    for variant, extra in (("with features", {}), ("without features", NO_FEATURES)):
        started = time.perf_counter()
        model = create_model("fm-implicit", {**extra, "seed": seed})
        assert isinstance(model, FMScorer)
        model.fit(train)
        seconds = time.perf_counter() - started
        scores = cold_scores(model, train, cold_ids)[torch.as_tensor(users)]
        # ties (a model without features scores every unseen item the same) broken at random
        noise = torch.rand(scores.shape, generator=generator) * 1e-6
        figures[variant] = ndcg_over(scores + noise, relevant, users)
        log(f"fm-implicit {variant}: cold nDCG@10 {figures[variant]:.4f} ({seconds:.0f}s)")
        rows.append(
            {
                "ranking of held-out items": f"fm-implicit ({variant})",
                "nDCG@10": f"{figures[variant]:.4f}",
                "x random": f"{figures[variant] / random:.2f}",
                "fit s": f"{seconds:.0f}",
            }
        )
    rows[0]["x random"] = "1.00"
    return rows


def main(argv: list[str] | None = None) -> int:
    """Run the chosen sections and print their tables."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", choices=["explicit", "implicit", "cold"], action="append")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument(
        "--no-grid", action="store_true", help="fm-explicit: the first grid point (defaults) only"
    )
    parser.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    sections = args.only or ["explicit", "implicit", "cold"]
    print(f"torch {torch.__version__}, threads {args.threads}, load {os.getloadavg()[0]:.2f}")
    data = data_with_features(args.seed)
    if "explicit" in sections:
        started = time.perf_counter()
        rows = explicit_section(data, args.seed, grid=not args.no_grid)
        print(f"\nfm-explicit, ML-100K 90/10 ratings ({time.perf_counter() - started:.0f}s)")
        print(format_table(rows, list(rows[0])), flush=True)
    if "implicit" in sections:
        started = time.perf_counter()
        rows = implicit_section(data, args.seed)
        print(f"\nTop-10, ML-100K 20% per-user holdout ({time.perf_counter() - started:.0f}s)")
        print(format_table(rows, list(rows[0])), flush=True)
    if "cold" in sections:
        started = time.perf_counter()
        rows = cold_section(data, args.seed)
        print(f"\nCold items: 20% of items held out ({time.perf_counter() - started:.0f}s)")
        print(format_table(rows, ["ranking of held-out items", "nDCG@10", "x random", "fit s"]))
    print(f"\nload average {os.getloadavg()[0]:.2f} at end")
    return 0


if __name__ == "__main__":
    sys.exit(main())
