"""Every model trained on CPU and with `device="auto"` (CUDA when present), side by side.

For each model in the catalog and each device this prints:
- accuracy on MovieLens 100K with the default config (nDCG@10 on the 20% per-user holdout for
  every model, RMSE on the 90/10 rating split for the explicit ones), and that fit's seconds;
- seconds per epoch on seeded synthetic data (`--sizes`, default 1M) with 64 factors and
  `--epochs` epochs, fit setup included.

Each run is a fresh subprocess, so that peak memory and CUDA's start-up belong to that run alone.
CUDA is initialised before the clock starts, and the clock stops after a device synchronise.
The CUDA/CPU ratio of each row comes from the same invocation. Without CUDA, `auto` resolves to
the CPU and the script says so.

    .venv/bin/python bench/devices.py --sizes 1m --epochs 3
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bench.train import FACTORS, dataset  # noqa: E402
from service.ml.catalog import MODEL_NAMES, create_model  # noqa: E402
from service.ml.device import resolve_device  # noqa: E402
from service.ml.metrics import (  # noqa: E402
    evaluate_ranking,
    evaluate_ratings,
    model_predict_fn,
    model_score_fn,
)
from service.tools.offline import fit_data, format_table, split_for  # noqa: E402

DEVICES = ("cpu", "auto")


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def run_job(job: dict[str, Any]) -> dict[str, Any]:
    """Train one model on one device (accuracy or timing run) and return its measurements."""
    torch.set_num_threads(job["threads"])
    device = resolve_device(job["device"])
    if device.type == "cuda":
        torch.zeros(1, device=device)  # CUDA context before the clock
    name, seed = job["model"], job["seed"]
    overrides: dict[str, Any] = {"seed": seed, "device": job["device"]}
    data = dataset(job["size"], seed)
    result: dict[str, Any] = {"device": str(device)}
    if job["kind"] == "timing":
        if name != "popular":
            overrides.update(embedding_size=FACTORS, epochs=job["epochs"])
        model = create_model(name, overrides)
        started = time.perf_counter()
        model.fit(data)
        _synchronize(device)
        seconds = time.perf_counter() - started
        epochs = 1 if name == "popular" else job["epochs"]
        result.update(fit_s=seconds, s_per_epoch=seconds / epochs)
    else:
        model = create_model(name, overrides)
        split = split_for(data, model.explicit, seed)
        train, validation = fit_data(model, split)
        started = time.perf_counter()
        model.fit(train, validation=validation)
        _synchronize(device)
        result["fit_s"] = time.perf_counter() - started
        result.update(evaluate_ranking(model_score_fn(model), split.train_full, split.test))
        if model.explicit:
            result.update(evaluate_ratings(model_predict_fn(model), split.test))
    if device.type == "cuda":
        result["cuda_peak_mb"] = torch.cuda.max_memory_allocated(device) / 2**20
    return result


def spawn(job: dict[str, Any], timeout: float) -> dict[str, Any]:
    """Run one job in a fresh interpreter; a failure becomes an `error` entry."""
    command = [sys.executable, str(Path(__file__).resolve()), "--child", json.dumps(job)]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout:.0f}s"}
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode != 0 or not lines:
        tail = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["no output"]
        return {"error": f"exit {done.returncode}: {tail[0][:200]}"}
    result: dict[str, Any] = json.loads(lines[-1])
    return result


def _ratio(cpu: dict[str, Any], auto: dict[str, Any], key: str) -> str:
    if key in cpu and key in auto and auto[key] > 0:
        return f"{cpu[key] / auto[key]:.1f}x"
    return ""


def _cell(result: dict[str, Any], key: str, digits: int) -> str:
    if "error" in result:
        return str(result["error"])
    value = result.get(key)
    return f"{value:.{digits}f}" if isinstance(value, float) else ""


def accuracy_table(results: dict[tuple[str, str], dict[str, Any]], models: list[str]) -> str:
    """Per model: nDCG@10 and RMSE on each device, fit seconds and the speed-up."""
    rows = []
    for model in models:
        cpu, auto = results[(model, "cpu")], results[(model, "auto")]
        rows.append(
            {
                "model": model,
                "nDCG@10 cpu": _cell(cpu, "ndcg@10", 4),
                "nDCG@10 auto": _cell(auto, "ndcg@10", 4),
                "RMSE cpu": _cell(cpu, "rmse", 4),
                "RMSE auto": _cell(auto, "rmse", 4),
                "fit s cpu": _cell(cpu, "fit_s", 2),
                "fit s auto": _cell(auto, "fit_s", 2),
                "cpu/auto": _ratio(cpu, auto, "fit_s"),
            }
        )
    return format_table(rows, list(rows[0]) if rows else [])


def timing_table(results: dict[tuple[str, str, str], dict[str, Any]], keys: list[str]) -> str:
    """Per size and model: seconds per epoch on each device and the speed-up."""
    rows = []
    for size, model in (key.split("/") for key in keys):
        cpu, auto = results[(size, model, "cpu")], results[(size, model, "auto")]
        rows.append(
            {
                "data": size,
                "model": model,
                "s/epoch cpu": _cell(cpu, "s_per_epoch", 3),
                "s/epoch auto": _cell(auto, "s_per_epoch", 3),
                "cpu/auto": _ratio(cpu, auto, "s_per_epoch"),
                "CUDA peak MB": _cell(auto, "cuda_peak_mb", 0),
            }
        )
    return format_table(rows, list(rows[0]) if rows else [])


def main(argv: list[str] | None = None) -> int:
    """Parse options, run every model on both devices, print the tables."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(MODEL_NAMES), help="comma list of models")
    parser.add_argument("--sizes", default="1m", help="synthetic sizes to time (1m, 5m, 25m)")
    parser.add_argument("--epochs", type=int, default=3, help="epochs of every timing run")
    parser.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds per run")
    parser.add_argument("--no-accuracy", action="store_true", help="skip the ML-100K runs")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(run_job(json.loads(args.child))))
        return 0

    models = [m for m in args.models.split(",") if m]
    sizes = [s for s in args.sizes.split(",") if s]
    cuda = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none: auto is the CPU"
    print(f"torch {torch.__version__}, CPU threads {args.threads}, CUDA {cuda}", flush=True)
    base = {"threads": args.threads, "seed": args.seed, "epochs": args.epochs}

    def log(line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    if not args.no_accuracy:
        accuracy: dict[tuple[str, str], dict[str, Any]] = {}
        for model in models:
            for device in DEVICES:
                job = {**base, "kind": "accuracy", "size": "100k", "model": model, "device": device}
                accuracy[(model, device)] = spawn(job, args.timeout)
                log(f"accuracy {model} {device}: {json.dumps(accuracy[(model, device)])}")
        print("\nML-100K, default configs: accuracy and whole fit seconds per device")
        print(accuracy_table(accuracy, models), flush=True)
    timings: dict[tuple[str, str, str], dict[str, Any]] = {}
    for size in sizes:
        for model in models:
            for device in DEVICES:
                job = {**base, "kind": "timing", "size": size, "model": model, "device": device}
                timings[(size, model, device)] = spawn(job, args.timeout)
                log(f"timing {size} {model} {device}: {json.dumps(timings[(size, model, device)])}")
    if timings:
        keys = [f"{size}/{model}" for size in sizes for model in models]
        print(f"\nSeconds per epoch, {args.epochs} epochs, {FACTORS} factors, setup included")
        print(timing_table(timings, keys), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
