"""Ingest throughput: `POST /ratings` against a real uvicorn server, and `mfserve import`.

Run from the repository root: `python -m bench.ingest` (or `python bench/ingest.py`).
Prints ratings per second for batches of 1, 100 and 1,000 rows and for the importer, on
SQLite (a file) and PostgreSQL (a throwaway server started with initdb/pg_ctl, fsync on).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

import httpx  # noqa: E402

from service.db.migrations import upgrade_to_head  # noqa: E402
from service.tools.datasets import load_ml100k  # noqa: E402
from tests.support.postgres import PostgresServer  # noqa: E402
from tests.support.server import run_api_process  # noqa: E402

Row = dict[str, object]


@contextmanager
def fresh_database(backend: str, workdir: Path, name: str) -> Iterator[str]:
    """A migrated database of a backend (PostgreSQL: a new server, durable settings)."""
    if backend == "sqlite":
        url = f"sqlite:///{workdir / name}.db"
        upgrade_to_head(url)
        yield url
        return
    with PostgresServer(durable=True) as server:
        url = server.create_database(name)
        upgrade_to_head(url)
        yield url


def post_rate(base_url: str, rows: list[Row], batch_size: int) -> float:
    """Ratings per second posting `rows` in batches, one request after another."""
    if batch_size == 1:
        bodies = [json.dumps(row).encode() for row in rows]
    else:
        bodies = [
            json.dumps({"ratings": rows[i : i + batch_size]}).encode()
            for i in range(0, len(rows), batch_size)
        ]
    headers = {"content-type": "application/json"}
    with httpx.Client(base_url=base_url, timeout=60) as client:
        started = time.perf_counter()
        for body in bodies:
            reply = client.post("/ratings", content=body, headers=headers)
            if reply.status_code != 201:
                raise RuntimeError(f"POST /ratings answered {reply.status_code}: {reply.text}")
        return len(rows) / (time.perf_counter() - started)


def import_rate(url: str) -> tuple[float, float]:
    """(ratings/s the importer reports, ratings/s over the command's whole wall time)."""
    env = {**os.environ, "MFSERVE_DATABASE_URL": url, "PYTHONPATH": str(REPO_ROOT)}
    command = [sys.executable, "-m", "service", "import", "--dataset", "ml-100k", "--no-progress"]
    started = time.perf_counter()
    result = subprocess.run(command, cwd=REPO_ROOT, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - started
    if result.returncode != 0:
        raise RuntimeError(f"mfserve import failed: {result.stderr}")
    match = re.search(r"imported (\d+) ratings.*?([\d,]+) ratings/s", result.stdout)
    if match is None:
        raise RuntimeError(f"unexpected importer output: {result.stdout}")
    return float(match.group(2).replace(",", "")), int(match.group(1)) / wall


def main() -> None:
    """Run every measurement and print the figures."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--backends", nargs="+", default=["sqlite", "postgresql"])
    parser.add_argument("--single-rows", type=int, default=2_000, help="rows posted one by one")
    parser.add_argument("--rows", type=int, default=100_000, help="rows posted in batches")
    args = parser.parse_args()

    table = load_ml100k(REPO_ROOT / ".cache")
    rows: list[Row] = [
        {"user": str(u), "item": str(i), "rating": float(r), "timestamp": int(t)}
        for u, i, r, t in zip(
            table.users, table.items, table.ratings, table.timestamps, strict=True
        )
    ]
    print(f"cpus: {os.cpu_count()}, load average: {os.getloadavg()[0]:.2f}")
    results: list[tuple[str, str, float]] = []
    with tempfile.TemporaryDirectory(prefix="mfserve-bench-") as tmp:
        workdir = Path(tmp)
        for backend in args.backends:
            with fresh_database(backend, workdir, "api") as url:
                env = {"MFSERVE_ARTIFACT_DIR": str(workdir / "artifacts")}
                with run_api_process(url, env=env) as server:
                    for size in (1, 100, 1000):
                        count = args.single_rows if size == 1 else args.rows
                        # a user prefix per run, so that every run inserts new pairs
                        sample = [{**row, "user": f"b{size}-{row['user']}"} for row in rows[:count]]
                        rate = post_rate(server.base_url, sample, size)
                        results.append((backend, f"POST /ratings, batches of {size}", rate))
                        print(
                            f"{backend:10} POST batch={size:<5} {rate:>10,.0f} ratings/s",
                            flush=True,
                        )
            with fresh_database(backend, workdir, "import") as url:
                reported, wall = import_rate(url)
                results.append((backend, "mfserve import (importer's own rate)", reported))
                results.append((backend, "mfserve import (whole command, wall)", wall))
                print(
                    f"{backend:10} import       {reported:>10,.0f} ratings/s ({wall:,.0f}/s wall)",
                    flush=True,
                )
    print("\n| backend | path | ratings/s |\n|---|---|---:|")
    for backend, path, rate in results:
        print(f"| {backend} | {path} | {rate:,.0f} |")


if __name__ == "__main__":
    main()
