"""Training time, peak memory and accuracy of every model, and of LensKit and `implicit` peers.

Speed: each system trains on MovieLens 100K and on seeded synthetic data of 1M and 5M interactions
(power-law item popularity and user activity, ratings 1..5 from a latent model) with 64 factors
and the same number of epochs (`--epochs`), each run in a fresh subprocess so that its peak memory
(max RSS; CUDA peak allocation on a GPU) is its own. Seconds per epoch are the whole `fit` time
(setup included) divided by the epochs, and each peer's ratio ours/peer comes from the same run.
Each timing runs `--repeats` times (3 by default), in rounds that go through every system once,
and the table gives each system's median run with its fastest and slowest fit: a 1M fit lasts
about a second, so one run each would let a single slow process decide a ratio.

Accuracy (with `--peers`, or `--accuracy`): every system with its default hyper-parameters on
ML-100K, explicit models on the seeded 90/10 rating split, implicit ones on the 20% per-user
holdout, fitted on the whole training part and measured with `service.ml.metrics` for all.

Peers live in a separate virtualenv that also has this project, so that every system runs in
one environment (CPU torch; install torch first so pip cannot pull a CUDA build):

    python -m venv .venv-peers
    .venv-peers/bin/pip install torch==2.13.0
    .venv-peers/bin/pip install -e . lenskit==2025.8.1 implicit
    .venv-peers/bin/python bench/train.py --peers

Without peers: `.venv/bin/python bench/train.py --sizes 100k,1m --epochs 3`.

The factorization machines with ML-100K's metadata are measured by `bench/fm.py`, which `--fm`
runs from here: `fm-explicit` RMSE with and without features (hyper-parameters chosen on the
validation slice), `fm-implicit` nDCG@10, and the cold-item ranking against random and against
the same model without features:

    .venv/bin/python bench/train.py --fm
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from service.ml.data import Interactions, Vocabulary  # noqa: E402
from service.ml.metrics import (  # noqa: E402
    PredictFn,
    ScoreFn,
    evaluate_ranking,
    evaluate_ratings,
    model_predict_fn,
    model_score_fn,
)
from service.tools.offline import fit_data, format_table, load_dataset, split_for  # noqa: E402

OURS = ("popular", "als-biased", "als-implicit", "flexmf-explicit", "flexmf-implicit")
PEERS = (
    "lenskit-biasedmf",
    "lenskit-implicitmf",
    "lenskit-flexmf-explicit",
    "lenskit-flexmf-implicit",
    "implicit-als",
    "implicit-bpr",
)
PEER_OF: dict[str, tuple[str, ...]] = {
    "als-biased": ("lenskit-biasedmf",),
    "als-implicit": ("lenskit-implicitmf", "implicit-als"),
    "flexmf-explicit": ("lenskit-flexmf-explicit",),
    "flexmf-implicit": ("lenskit-flexmf-implicit", "implicit-bpr"),
}
EXPLICIT = {"als-biased", "flexmf-explicit", "lenskit-biasedmf", "lenskit-flexmf-explicit"}
SYNTHETIC = {"1m": (1_000_000, 20_000, 8_000), "5m": (5_000_000, 100_000, 25_000)}
"""Size name → (interactions, users, items)."""
TASTE_SYNTHETIC = {"25m": (25_000_000, 250_000, 50_000)}
"""Size name → (interactions, users, items) of the taste-structured generator."""
GENRES = 40
"""Latent genres of the taste-structured generator."""
FACTORS = 64


# ----- data -------------------------------------------------------------------------------------
def synthetic(n: int, n_users: int, n_items: int, seed: int) -> Interactions:
    """Unique (user, item) pairs with power-law popularity and activity, ratings 1..5."""
    rng = np.random.default_rng(seed)
    item_weight = 1.0 / np.arange(1, n_items + 1) ** 0.9
    item_weight = rng.permutation(item_weight / item_weight.sum())
    activity = rng.lognormal(mean=0.0, sigma=1.0, size=n_users)
    activity /= activity.sum()
    codes = np.zeros(0, dtype=np.int64)
    while codes.shape[0] < n:
        draw = int((n - codes.shape[0]) * 1.3) + 1000
        users = rng.choice(n_users, size=draw, p=activity)
        items = rng.choice(n_items, size=draw, p=item_weight)
        codes = np.unique(np.concatenate([codes, users * n_items + items]))
    codes = rng.permutation(codes)[:n]
    users, items = codes // n_items, codes % n_items
    user_f = rng.normal(size=(n_users, 8)).astype(np.float32)
    item_f = rng.normal(size=(n_items, 8)).astype(np.float32)
    raw = 3.5 + 0.4 * (user_f[users] * item_f[items]).sum(axis=1)
    raw += rng.normal(scale=0.7, size=n).astype(np.float32)
    return Interactions(
        users=users.astype(np.int64),
        items=items.astype(np.int64),
        values=np.clip(np.round(raw), 1, 5).astype(np.float32),
        user_ids=Vocabulary([f"u{i}" for i in range(n_users)]),
        item_ids=Vocabulary([f"i{i}" for i in range(n_items)]),
    )


def taste_synthetic(n: int, n_users: int, n_items: int, seed: int) -> Interactions:
    """Unique pairs where users pick items by taste: each item has a genre and a power-law
    popularity within it, each user a few favourite genres; 80% of a user's picks come from
    their genres, the rest from overall popularity. Ratings favour the user's own genres."""
    rng = np.random.default_rng(seed)
    item_genre = rng.integers(0, GENRES, n_items)
    popularity = 1.0 / rng.permutation(np.arange(1, n_items + 1)) ** 0.9
    # items of each genre, most popular first, with their cumulative popularity per genre
    by_genre = np.lexsort((-popularity, item_genre))
    genre_start = np.searchsorted(item_genre[by_genre], np.arange(GENRES + 1))
    cumulative = np.zeros(n_items)
    for g in range(GENRES):
        part = popularity[by_genre[genre_start[g] : genre_start[g + 1]]]
        cumulative[genre_start[g] : genre_start[g + 1]] = np.cumsum(part) / part.sum()
    favourites = rng.integers(0, GENRES, (n_users, 3))
    favourite_weight = rng.dirichlet(np.ones(3), n_users).cumsum(axis=1)
    activity = rng.lognormal(mean=0.0, sigma=1.0, size=n_users)
    activity /= activity.sum()
    overall = popularity / popularity.sum()
    codes = np.zeros(0, dtype=np.int64)
    new_per_draw = 0.7
    while codes.shape[0] < n:
        # heavy users repeat their genres' items, so draw for the last round's yield of new pairs
        draw = int((n - codes.shape[0]) / max(new_per_draw, 0.05) * 1.1) + 1000
        users = rng.choice(n_users, size=draw, p=activity)
        slot = (rng.random(draw)[:, None] > favourite_weight[users]).sum(axis=1).clip(max=2)
        genre = favourites[users, slot]
        start, stop = genre_start[genre], genre_start[genre + 1]
        position = start + cumulative_rank(cumulative, start, stop, rng.random(draw))
        items = by_genre[np.minimum(position, stop - 1)]
        popular = rng.random(draw) < 0.2
        items[popular] = rng.choice(n_items, size=int(popular.sum()), p=overall)
        before = codes.shape[0]
        codes = np.unique(np.concatenate([codes, users * n_items + items]))
        new_per_draw = (codes.shape[0] - before) / draw
    codes = rng.permutation(codes)[:n]
    users, items = codes // n_items, codes % n_items
    match = (favourites[users] == item_genre[items][:, None]).any(axis=1)
    raw = 3.0 + 1.0 * match + rng.normal(scale=0.8, size=n)
    return Interactions(
        users=users.astype(np.int64),
        items=items.astype(np.int64),
        values=np.clip(np.round(raw), 1, 5).astype(np.float32),
        user_ids=Vocabulary([f"u{i}" for i in range(n_users)]),
        item_ids=Vocabulary([f"i{i}" for i in range(n_items)]),
    )


def cumulative_rank(
    cumulative: np.ndarray, start: np.ndarray, stop: np.ndarray, uniform: np.ndarray
) -> np.ndarray:
    """Offset within [start, stop) where each uniform draw falls in that genre's cumulative
    popularity (a vectorised inverse-CDF draw per row; genres are few, so loop over them)."""
    offset = np.zeros(len(start), dtype=np.int64)
    for begin in np.unique(start):
        rows = np.flatnonzero(start == begin)
        end = int(stop[rows[0]])
        offset[rows] = np.searchsorted(cumulative[begin:end], uniform[rows])
    return offset


def dataset(size: str, seed: int) -> Interactions:
    """ML-100K (`100k`) or a synthetic set of the named size."""
    if size == "100k":
        return load_dataset("ml-100k", REPO / ".cache")
    if size in TASTE_SYNTHETIC:
        return taste_synthetic(*TASTE_SYNTHETIC[size], seed)
    n, n_users, n_items = SYNTHETIC[size]
    return synthetic(n, n_users, n_items, seed)


# ----- systems ----------------------------------------------------------------------------------
class Trained:
    """A fitted system as the shared metric code sees it."""

    def __init__(self, score: ScoreFn, predict: PredictFn | None) -> None:
        self.score = score
        self.predict = predict


def fit_ours(name: str, data: Interactions, split: Any, overrides: dict[str, Any]) -> Trained:
    """Fit one of our models (timing runs: on `data`; accuracy runs: on the split)."""
    from service.ml.catalog import create_model

    model = create_model(name, overrides)
    if split is None:
        model.fit(data)
    else:
        train, validation = fit_data(model, split)
        model.fit(train, validation=validation)
    return Trained(model_score_fn(model), model_predict_fn(model) if model.explicit else None)


def _lenskit_dataset(data: Interactions) -> Any:
    import pandas as pd
    from lenskit.data import from_interactions_df

    frame = pd.DataFrame(
        {
            "user_id": np.asarray(data.user_ids.ids, dtype=object)[data.users],
            "item_id": np.asarray(data.item_ids.ids, dtype=object)[data.items],
        }
    )
    if data.values is not None:
        frame["rating"] = data.values
    return from_interactions_df(frame, user_col="user_id", item_col="item_id")


def _lenskit_scorer(name: str, overrides: dict[str, Any]) -> Any:
    from lenskit.als import BiasedMFScorer, ImplicitMFScorer
    from lenskit.flexmf import FlexMFExplicitScorer, FlexMFImplicitScorer

    kinds: dict[str, Any] = {
        "lenskit-biasedmf": BiasedMFScorer,
        "lenskit-implicitmf": ImplicitMFScorer,
        "lenskit-flexmf-explicit": FlexMFExplicitScorer,
        "lenskit-flexmf-implicit": FlexMFImplicitScorer,
    }
    return kinds[name](**overrides)


def fit_lenskit(name: str, data: Interactions, overrides: dict[str, Any], seed: int) -> Trained:
    """Fit a LensKit scorer; scores come from its own `__call__`, one user at a time."""
    from lenskit.data import ItemList
    from lenskit.training import TrainingOptions

    scorer = _lenskit_scorer(name, overrides)
    scorer.train(_lenskit_dataset(data), TrainingOptions(rng=seed))
    all_items = ItemList(item_ids=np.asarray(data.item_ids.ids, dtype=object))
    user_ids = data.user_ids.ids
    item_ids = np.asarray(data.item_ids.ids, dtype=object)

    def score(users: torch.Tensor) -> torch.Tensor:
        rows = []
        for user in users.tolist():
            scores = scorer(query=user_ids[user], items=all_items).scores()
            rows.append(np.nan_to_num(scores, nan=-np.inf))
        return torch.as_tensor(np.stack(rows), dtype=torch.float32)

    def predict(users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        out = np.zeros(users.shape[0], dtype=np.float32)
        user_np, item_np = users.numpy(), items.numpy()
        for user in np.unique(user_np):
            rows = np.flatnonzero(user_np == user)
            wanted = ItemList(item_ids=item_ids[item_np[rows]])
            scores = scorer(query=user_ids[int(user)], items=wanted).scores()
            out[rows] = np.nan_to_num(scores, nan=float(np.nanmean(scores)))
        return torch.as_tensor(out)

    return Trained(score, predict if name in EXPLICIT else None)


def fit_implicit(name: str, data: Interactions, overrides: dict[str, Any], seed: int) -> Trained:
    """Fit an `implicit` model on the binary user-item matrix; scores are factor products."""
    from implicit.cpu.als import AlternatingLeastSquares
    from implicit.cpu.bpr import BayesianPersonalizedRanking
    from scipy.sparse import csr_matrix

    matrix = csr_matrix(
        (np.ones(len(data), dtype=np.float32), (data.users, data.items)),
        shape=(data.n_users, data.n_items),
    )
    kind = AlternatingLeastSquares if name == "implicit-als" else BayesianPersonalizedRanking
    model = kind(random_state=seed, **overrides)
    model.fit(matrix, show_progress=False)
    user_factors = torch.as_tensor(np.asarray(model.user_factors))
    item_factors = torch.as_tensor(np.asarray(model.item_factors))

    def score(users: torch.Tensor) -> torch.Tensor:
        return user_factors[users] @ item_factors.T

    return Trained(score, None)


def timing_overrides(name: str, epochs: int, threads: int) -> dict[str, Any]:
    """Options of a timing run: 64 factors and `epochs` epochs for every system."""
    if name in OURS:
        return {} if name == "popular" else {"embedding_size": FACTORS, "epochs": epochs}
    if name.startswith("lenskit-"):
        return {"embedding_size": FACTORS, "epochs": epochs}
    if name == "implicit-als":
        return {"factors": FACTORS, "iterations": epochs, "num_threads": threads}
    return {"factors": FACTORS - 1, "iterations": epochs, "num_threads": threads}


def accuracy_overrides(name: str, threads: int) -> dict[str, Any]:
    """Options of an accuracy run: each system's defaults (thread count only)."""
    return {"num_threads": threads} if name.startswith("implicit-") else {}


def fit_system(
    name: str, data: Interactions, split: Any, overrides: dict[str, Any], seed: int
) -> Trained:
    """Fit any system by name."""
    if name in OURS:
        return fit_ours(name, data, split, {"seed": seed, **overrides})
    train = data if split is None else split.train_full
    if name.startswith("lenskit-"):
        return fit_lenskit(name, train, overrides, seed)
    return fit_implicit(name, train, overrides, seed)


# ----- one run in a child process ---------------------------------------------------------------
def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def run_child(job: dict[str, Any]) -> dict[str, Any]:
    """Run one timing or accuracy job and return its measurements."""
    torch.set_num_threads(job["threads"])
    name, seed = job["system"], job["seed"]
    data = dataset(job["size"], seed)
    before = _rss_mb()
    if job["kind"] == "timing":
        overrides = timing_overrides(name, job["epochs"], job["threads"])
        started, cpu_started = time.perf_counter(), time.process_time()
        fit_system(name, data, None, overrides, seed)
        seconds = time.perf_counter() - started
        cpu_seconds = time.process_time() - cpu_started  # all threads: robust on a shared machine
        epochs = 1 if name == "popular" else job["epochs"]
        result = {"fit_s": seconds, "s_per_epoch": seconds / epochs, "epochs": epochs}
        result["cpu_s_per_epoch"] = cpu_seconds / epochs
    else:
        split = split_for(data, name in EXPLICIT, seed)
        trained = fit_system(name, data, split, accuracy_overrides(name, job["threads"]), seed)
        result = evaluate_ranking(trained.score, split.train_full, split.test)
        if trained.predict is not None:
            result.update(evaluate_ratings(trained.predict, split.test))
    result["peak_rss_mb"] = _rss_mb()
    result["data_rss_mb"] = before
    if torch.cuda.is_available():
        result["cuda_peak_mb"] = torch.cuda.max_memory_allocated() / 2**20
    return result


def spawn(job: dict[str, Any], timeout: float) -> dict[str, Any]:
    """Run a job in a fresh interpreter (own peak memory); errors become an `error` entry."""
    env = dict(os.environ)
    threads = str(job["threads"])
    env.update(
        OMP_NUM_THREADS=threads,
        MKL_NUM_THREADS=threads,
        OPENBLAS_NUM_THREADS=threads,
        LK_NUM_THREADS=threads,
        # LensKit sizes torch's intra-op pool from this one (1 on 2 cores if unset)
        LK_NUM_BACKEND_THREADS=threads,
        RAYON_NUM_THREADS=threads,
    )
    command = [sys.executable, str(Path(__file__).resolve()), "--child", json.dumps(job)]
    try:
        done = subprocess.run(
            command, capture_output=True, text=True, timeout=timeout, env=env, check=False
        )
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout:.0f}s"}
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode != 0 or not lines:
        tail = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["no output"]
        return {"error": f"exit {done.returncode}: {tail[0][:160]}"}
    result: dict[str, Any] = json.loads(lines[-1])
    return result


# ----- tables -----------------------------------------------------------------------------------
def median_run(results: list[dict[str, Any]]) -> dict[str, Any]:
    """The run with the median fit time (the lower middle one of an even count), with every
    run's fit time added; the first error if any run failed."""
    failed = [result for result in results if "error" in result]
    if failed:
        return failed[0]
    ordered = sorted(results, key=lambda result: float(result["fit_s"]))
    return {**ordered[(len(ordered) - 1) // 2], "fit_s_runs": [r["fit_s"] for r in ordered]}


def _fmt(value: Any, digits: int = 3) -> str:
    return f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def timing_table(results: dict[tuple[str, str], dict[str, Any]], sizes: list[str]) -> str:
    """Rows per (size, system): fit seconds, seconds per epoch, peak memory, ratio to peers."""
    rows = []
    for size in sizes:
        for (row_size, system), result in results.items():
            if row_size != size:
                continue
            row = {"data": size, "system": system}
            if "error" in result:
                row["fit s"] = result["error"]
                rows.append(row)
                continue
            row.update(
                {
                    "fit s": _fmt(result["fit_s"], 2),
                    "fit s, all runs": ", ".join(_fmt(f, 2) for f in result["fit_s_runs"]),
                    "s/epoch": _fmt(result["s_per_epoch"], 3),
                    "peak MB": _fmt(result["peak_rss_mb"], 0),
                }
            )
            ratios = []
            for peer in PEER_OF.get(system, ()):
                other = results.get((size, peer), {})
                if "s_per_epoch" in other:
                    ratio = result["s_per_epoch"] / other["s_per_epoch"]
                    ratios.append(f"{ratio:.2f}x {peer}")
            row["ours/peer s/epoch"] = ", ".join(ratios)
            rows.append(row)
    columns = ["data", "system", "fit s", "fit s, all runs", "s/epoch", "peak MB"]
    columns.append("ours/peer s/epoch")
    return format_table(rows, columns)


def accuracy_table(results: dict[str, dict[str, Any]]) -> str:
    """Test metrics of every system on ML-100K."""
    names = ["rmse", "mae", "f1@4", "ndcg@10", "recall@10", "mrr", "rbp"]
    rows = []
    for system, result in results.items():
        split = "90/10 ratings" if system in EXPLICIT else "20% per user"
        row = {"system": system, "split": split}
        if "error" in result:
            row["rmse"] = result["error"]
        else:
            row.update({name: _fmt(result[name], 4) for name in names if name in result})
        rows.append(row)
    return format_table(rows, ["system", "split", *names])


def feature_models_report(seed: int, threads: int) -> int:
    """The factorization machines on ML-100K with its metadata: `bench/fm.py`'s three sections
    (features vs none, nDCG@10, cold items), printed by this run."""
    if str(REPO / "bench") not in sys.path:
        sys.path.insert(0, str(REPO / "bench"))
    import fm

    return int(fm.main(["--seed", str(seed), "--threads", str(threads)]))


def main(argv: list[str] | None = None) -> int:
    """Parse options, run every job, print the tables."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="100k,1m,5m", help="comma list of 100k, 1m, 5m, 25m")
    parser.add_argument("--models", default=",".join(OURS), help="our models to time")
    parser.add_argument("--peers", action="store_true", help="also run LensKit and implicit")
    parser.add_argument("--peer-models", default=",".join(PEERS), help="peers to run")
    parser.add_argument("--accuracy", action="store_true", help="accuracy table (on with peers)")
    parser.add_argument("--no-timing", action="store_true", help="skip the timing runs")
    parser.add_argument("--epochs", type=int, default=3, help="epochs of every timing run")
    parser.add_argument("--repeats", type=int, default=3, help="timing runs per system and size")
    parser.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--timeout", type=float, default=1800.0, help="seconds per run")
    parser.add_argument("--fm", action="store_true", help="only the factorization machines")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.fm:
        return feature_models_report(args.seed, args.threads)
    if args.child:
        print(json.dumps(run_child(json.loads(args.child))))
        return 0

    ours = [m for m in args.models.split(",") if m]
    peers = [p for p in args.peer_models.split(",") if p] if args.peers else []
    sizes = [s for s in args.sizes.split(",") if s]
    print(
        f"torch {torch.__version__}, threads {args.threads}, cuda {torch.cuda.is_available()}, "
        f"load average {os.getloadavg()[0]:.2f} at start",
        flush=True,
    )
    log: Callable[[str], None] = lambda line: print(line, file=sys.stderr, flush=True)  # noqa: E731
    base = {"threads": args.threads, "seed": args.seed, "epochs": args.epochs}
    if not args.no_timing:
        runs: dict[tuple[str, str], list[dict[str, Any]]] = {}
        for size in sizes:
            for round_ in range(1, args.repeats + 1):
                for system in ours + peers:
                    job = {**base, "kind": "timing", "size": size, "system": system}
                    load = os.getloadavg()[0]
                    log(f"timing {system} on {size}, run {round_} (load {load:.2f})")
                    runs.setdefault((size, system), []).append(spawn(job, args.timeout))
                    log(f"  -> {json.dumps(runs[(size, system)][-1])}")
        timings = {key: median_run(results) for key, results in runs.items()}
        print(
            f"\nTraining time, {args.epochs} epochs, {FACTORS} factors "
            f"(median of {args.repeats} runs each, in rounds)"
        )
        print(timing_table(timings, sizes), flush=True)
    if args.accuracy or args.peers:
        accuracy: dict[str, dict[str, Any]] = {}
        for system in ours + peers:
            log(f"accuracy {system} (load {os.getloadavg()[0]:.2f})")
            job = {**base, "kind": "accuracy", "size": "100k", "system": system}
            accuracy[system] = spawn(job, args.timeout)
            log(f"  -> {json.dumps(accuracy[system])}")
        print("\nML-100K test accuracy, default configs, shared splits and metric code")
        print(accuracy_table(accuracy))
    print(f"\nload average {os.getloadavg()[0]:.2f} at end")
    return 0


if __name__ == "__main__":
    sys.exit(main())
