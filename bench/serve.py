"""Serving benchmark: a real uvicorn server holding a 100k users x 20k items x 64 factors model.

For each backend (SQLite, PostgreSQL) it builds a database of users, items (with tags) and
ratings, writes a synthetic `als-biased` artifact (random factors: scoring cost does not depend on
what the numbers are) with a `popular` fallback, publishes it as the active version, starts
`python -m service api` as its own process, and drives it from a SEPARATE process with
concurrent keep-alive HTTP/1.1 connections (a minimal asyncio client, so that the client costs
little of the shared CPU) for a fixed time per scenario:

- `/healthz` (no-op endpoint: the HTTP stack's own cost)
- `GET /recommend/{user}` for users unchanged since the snapshot (stored embedding)
- `GET /recommend/{user}` for users whose ratings changed after it (fold-in from the database)
- `POST /foldin` with a 10-item history, and `POST /scores` of 20 items for a stored user

It prints requests/s, p50, p95 and p99 latency per scenario and client count, with each
`/recommend` figure's ratio to `/healthz` measured in the same run.

    .venv/bin/python bench/serve.py                  # both backends, 1 and 32 clients
    .venv/bin/python bench/serve.py --backend sqlite --duration 5 --clients 1,8,32
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

SCENARIOS = ("healthz", "recommend", "recommend-foldin", "foldin", "scores")
CHANGED_USERS = 1000
"""Users u0..u999 get a rating after the snapshot: `/recommend` must fold them in."""


# ----- data and model ---------------------------------------------------------------------
def ratings_per_user(n_users: int, mean: int, seed: int) -> Any:
    """How many ratings each user has (2 .. 2*mean, mean about `mean`)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    return rng.integers(2, 2 * mean - 1, size=n_users)


def populate(url: str, n_users: int, n_items: int, mean_ratings: int, seed: int) -> int:
    """Fill users, items (1 to 3 of 20 tags each) and ratings (Zipf-like item popularity)."""
    import numpy as np
    from sqlalchemy import insert, update

    from service.db.session import create_db_engine, refresh_statistics
    from service.db.tables import items, ratings, users

    rng = np.random.default_rng(seed)
    now = datetime.now(UTC)
    engine = create_db_engine(url)
    counts = ratings_per_user(n_users, mean_ratings, seed)
    popularity = 1.0 / np.arange(1, n_items + 1) ** 0.8
    popularity /= popularity.sum()
    total = 0
    with engine.begin() as connection:
        connection.execute(
            insert(users),
            [
                {
                    "id": u + 1,
                    "external_id": f"u{u}",
                    "created_at": now,
                    "history_changed_at": now,
                    "history_version": 1,
                }
                for u in range(n_users)
            ],
        )
        tag_names = [f"tag{t}" for t in range(20)]
        connection.execute(
            insert(items),
            [
                {
                    "id": j + 1,
                    "external_id": f"i{j}",
                    "title": None,
                    "tags": sorted(
                        str(t)
                        for t in rng.choice(tag_names, size=rng.integers(1, 4), replace=False)
                    ),
                    "attributes": {},
                    "created_at": now,
                    "updated_at": now,
                }
                for j in range(n_items)
            ],
        )
        block: list[dict[str, Any]] = []
        for u in range(n_users):
            chosen = np.unique(rng.choice(n_items, size=int(counts[u]), p=popularity))
            values = np.round(rng.uniform(0.5, 5.0, size=len(chosen)) * 2) / 2
            stamp = now - timedelta(days=1)
            block.extend(
                {
                    "user_id": u + 1,
                    "item_id": int(j) + 1,
                    "rating": float(v),
                    "event_at": stamp,
                    "stored_at": stamp,
                }
                for j, v in zip(chosen, values, strict=True)
            )
            if len(block) >= 50_000:
                connection.execute(insert(ratings), block)
                total += len(block)
                block = []
        if block:
            connection.execute(insert(ratings), block)
            total += len(block)
        # users changed after the snapshot (the model below records version 1 for everyone)
        connection.execute(
            update(users).where(users.c.id <= CHANGED_USERS).values(history_version=2)
        )
    refresh_statistics(engine)  # as `mfserve import` does after a load
    if engine.dialect.name == "postgresql":
        # Settle the freshly loaded tables now: otherwise autovacuum's pass over a million
        # inserted rows lands in the middle of a measurement on this shared CPU.
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
            connection.exec_driver_sql("VACUUM")
    engine.dispose()
    return total


def publish_model(
    url: str, artifact_dir: Path, n_users: int, n_items: int, factors: int, seed: int
) -> int:
    """Write a synthetic `als-biased` artifact with a `popular` fallback and activate it."""
    import torch

    from service.db.jobs import NewVersion, claim_job, enqueue_job, publish_version
    from service.db.session import create_db_engine, make_sessionmaker, transaction
    from service.ml.als import BiasedALS, BiasedALSConfig
    from service.ml.artifacts import SnapshotInfo, write_artifact
    from service.ml.data import Vocabulary
    from service.ml.popular import Popular

    generator = torch.Generator().manual_seed(seed)
    model = BiasedALS(BiasedALSConfig(embedding_size=factors, device="cpu"))
    model.user_ids = Vocabulary(f"u{u}" for u in range(n_users))
    model.item_ids = Vocabulary(f"i{j}" for j in range(n_items))
    model.load_state_tensors(
        {
            "user_factors": torch.randn((n_users, factors), generator=generator) * 0.2,
            "item_factors": torch.randn((n_items, factors), generator=generator) * 0.2,
            "user_bias": torch.randn(n_users, generator=generator) * 0.3,
            "item_bias": torch.randn(n_items, generator=generator) * 0.3,
            "global_bias": torch.tensor([3.5], dtype=torch.float64),
        }
    )
    popular = Popular()
    popular.user_ids, popular.item_ids = model.user_ids, model.item_ids
    popular.load_state_tensors({"item_scores": 1.0 / torch.arange(1, n_items + 1) ** 0.8})
    now = datetime.now(UTC)
    snapshot = SnapshotInfo(
        taken_at=now,
        n_ratings=0,
        n_users=n_users,
        n_items=n_items,
        history_versions={f"u{u}": 1 for u in range(n_users)},
    )
    info = write_artifact(model, artifact_dir, fallback=popular, snapshot=snapshot)
    engine = create_db_engine(url)
    with transaction(make_sessionmaker(engine, write=True)) as session:
        enqueue_job(session, model.name, {"embedding_size": factors}, requested_by="admin")
        job = claim_job(session, "bench")
        assert job is not None
        version = publish_version(
            session,
            job.job_id,
            "bench",
            NewVersion(
                algorithm=model.name,
                config={"embedding_size": factors},
                artifact=info.path.name,
                sha256=info.sha256,
                size_bytes=info.size_bytes,
                n_ratings=0,
                n_users=n_users,
                n_items=n_items,
                newest_rating_at=None,
                snapshot_taken_at=now,
                stored_until=None,
                metrics={},
            ),
            activate=True,
        )
    engine.dispose()
    assert version is not None
    return version.version


@contextmanager
def database(backend: str, root: Path, keep: bool = False) -> Iterator[str]:
    """A fresh, migrated database URL of one backend (`keep`: SQLite's existing one)."""
    from service.db.migrations import upgrade_to_head

    if backend == "sqlite":
        url = f"sqlite:///{root / 'bench.db'}"
        if not keep:
            upgrade_to_head(url)
        yield url
        return
    from tests.support.postgres import PostgresServer

    with PostgresServer() as server:
        url = server.create_database("bench")
        upgrade_to_head(url)
        yield url


def wait_for_model(base_url: str, version: int, timeout: float = 300.0) -> float:
    """Seconds until the server reports serving `version`."""
    import httpx

    started = time.monotonic()
    while time.monotonic() - started < timeout:
        try:
            ready = httpx.get(f"{base_url}/readyz", timeout=5).json()
            if ready.get("model_version") == version:
                return time.monotonic() - started
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise TimeoutError(f"the server did not load version {version} in {timeout} s")


# ----- load generator (runs in its own process) ---------------------------------------------
def request_factory(scenario: str, host: str, n_users: int, n_items: int, seed: int) -> Any:
    """A function giving the raw bytes of the next request of a scenario."""
    rng = random.Random(seed)
    head = f"Host: {host}\r\nConnection: keep-alive\r\n"

    def get(path: str) -> bytes:
        return f"GET {path} HTTP/1.1\r\n{head}\r\n".encode()

    def post(path: str, body: dict[str, Any]) -> bytes:
        data = json.dumps(body).encode()
        return (
            f"POST {path} HTTP/1.1\r\n{head}Content-Type: application/json\r\n"
            f"Content-Length: {len(data)}\r\n\r\n"
        ).encode() + data

    if scenario == "healthz":
        pool = [get("/healthz")]
    elif scenario == "recommend":
        pool = [
            get(f"/recommend/u{rng.randrange(CHANGED_USERS, n_users)}?n=10") for _ in range(4096)
        ]
    elif scenario == "recommend-foldin":
        pool = [get(f"/recommend/u{rng.randrange(CHANGED_USERS)}?n=10") for _ in range(4096)]
    elif scenario == "foldin":
        pool = [
            post(
                "/foldin",
                {
                    "history": [
                        {"item": f"i{rng.randrange(n_items)}", "rating": rng.choice([1, 3, 4.5, 5])}
                        for _ in range(10)
                    ]
                },
            )
            for _ in range(1024)
        ]
    elif scenario == "scores":
        pool = [
            post(
                "/scores",
                {
                    "user": f"u{rng.randrange(CHANGED_USERS, n_users)}",
                    "items": [f"i{rng.randrange(n_items)}" for _ in range(20)],
                },
            )
            for _ in range(1024)
        ]
    else:
        raise ValueError(scenario)
    counter = iter(range(1 << 62))
    return lambda: pool[next(counter) % len(pool)]


async def _read_response(reader: asyncio.StreamReader) -> int:
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head[9:12])
    length = 0
    for line in head.split(b"\r\n"):
        if line[:15].lower() == b"content-length:":
            length = int(line[15:])
    if length:
        await reader.readexactly(length)
    return status


async def _client(
    host: str, port: int, next_request: Any, until: float, warm_until: float
) -> tuple[list[float], int]:
    reader, writer = await asyncio.open_connection(host, port)
    latencies: list[float] = []
    errors = 0
    clock = time.perf_counter
    try:
        while True:
            start = clock()
            if start >= until:
                break
            writer.write(next_request())
            status = await _read_response(reader)
            end = clock()
            if status != 200:
                errors += 1
            elif start >= warm_until:
                latencies.append(end - start)
    finally:
        writer.close()
    return latencies, errors


async def _drive(spec: dict[str, Any]) -> dict[str, Any]:
    next_request = request_factory(
        spec["scenario"], f"{spec['host']}:{spec['port']}", spec["users"], spec["items"], 7
    )
    start = time.perf_counter()
    warm_until = start + spec["warmup"]
    until = warm_until + spec["duration"]
    results = await asyncio.gather(
        *[
            _client(spec["host"], spec["port"], next_request, until, warm_until)
            for _ in range(spec["clients"])
        ]
    )
    latencies = sorted(x for lat, _ in results for x in lat)
    errors = sum(e for _, e in results)
    n = len(latencies)

    def pct(q: float) -> float:
        return latencies[min(n - 1, int(q * n))] * 1000 if n else float("nan")

    return {
        "requests": n,
        "errors": errors,
        "rps": n / spec["duration"],
        "p50": pct(0.50),
        "p95": pct(0.95),
        "p99": pct(0.99),
    }


def drive_main(spec_json: str) -> None:
    """Entry of the load-generator process: run one scenario, print its figures as JSON."""
    spec = json.loads(spec_json)
    try:
        import uvloop

        uvloop.install()
    except ImportError:  # pragma: no cover - uvicorn[standard] brings it
        pass
    print(json.dumps(asyncio.run(_drive(spec))))


def run_scenario(base_url: str, scenario: str, clients: int, args: argparse.Namespace) -> Any:
    """Run one scenario in a separate client process and return its figures."""
    host, port = base_url.removeprefix("http://").split(":")
    spec = {
        "scenario": scenario,
        "host": host,
        "port": int(port),
        "clients": clients,
        "duration": args.duration,
        "warmup": args.warmup,
        "users": args.users,
        "items": args.items,
    }
    output = subprocess.run(
        [sys.executable, __file__, "--drive", json.dumps(spec)],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return json.loads(output.strip().splitlines()[-1])


# ----- report -----------------------------------------------------------------------------
def report(backend: str, clients: int, figures: dict[str, dict[str, Any]]) -> None:
    """Print one table: a row per scenario, ratios to /healthz."""
    base = figures["healthz"]
    print(f"\n{backend}, {clients} client{'s' if clients > 1 else ''}:")
    print(
        f"  {'endpoint':<22}{'req/s':>9}{'p50 ms':>9}{'p95 ms':>9}{'p99 ms':>9}"
        f"{'errors':>8}{'rps/healthz':>13}{'p99/healthz':>13}"
    )
    for scenario, row in figures.items():
        print(
            f"  {label(scenario):<22}{row['rps']:>9.0f}{row['p50']:>9.2f}{row['p95']:>9.2f}"
            f"{row['p99']:>9.2f}{row['errors']:>8}{row['rps'] / base['rps']:>13.2f}"
            f"{row['p99'] / base['p99']:>13.2f}"
        )


def label(scenario: str) -> str:
    """The printed name of a scenario."""
    return {
        "healthz": "GET /healthz",
        "recommend": "GET /recommend stored",
        "recommend-foldin": "GET /recommend foldin",
        "foldin": "POST /foldin",
        "scores": "POST /scores",
    }[scenario]


def bench_backend(backend: str, args: argparse.Namespace) -> None:
    """Build, publish, serve and measure one backend."""
    if backend == "sqlite" and args.reuse_dir is not None:
        args.reuse_dir.mkdir(parents=True, exist_ok=True)
        root: Any = contextlib.nullcontext(str(args.reuse_dir))
    else:
        root = tempfile.TemporaryDirectory(prefix="mfserve-bench-")
    with root as tmp:
        reused = (Path(tmp) / "bench.db").exists() and (Path(tmp) / "version").exists()
        with database(backend, Path(tmp), keep=reused) as url:
            bench_database(backend, url, Path(tmp), reused, args)


def bench_database(
    backend: str, url: str, tmp: Path, reused: bool, args: argparse.Namespace
) -> None:
    """Fill (unless reused), publish, serve and measure one database."""
    from tests.support.server import run_api_process

    artifact_dir = tmp / "artifacts"
    if reused:
        total, loaded, written = -1, 0.0, 0.0
        version = int((tmp / "version").read_text())
    else:
        started = time.monotonic()
        total = populate(url, args.users, args.items, args.ratings_per_user, args.seed)
        loaded = time.monotonic() - started
        started = time.monotonic()
        version = publish_model(url, artifact_dir, args.users, args.items, args.factors, args.seed)
        written = time.monotonic() - started
        (tmp / "version").write_text(str(version))
    print(
        f"\n== {backend}: {args.users:,} users, {args.items:,} items, {total:,} ratings "
        f"(loaded in {loaded:.0f} s), {args.factors} factors (artifact in {written:.0f} s)"
    )
    env = {
        "MFSERVE_ARTIFACT_DIR": str(artifact_dir),
        "MFSERVE_LOG_LEVEL": "warning",
        "MFSERVE_TORCH_THREADS": str(args.torch_threads),
    }
    with run_api_process(url, env=env, startup_timeout=300) as server:
        took = wait_for_model(server.base_url, version)
        print(f"   server up; model version {version} loaded {took:.1f} s after start")
        for clients in args.clients:
            figures = {s: run_scenario(server.base_url, s, clients, args) for s in args.scenarios}
            report(backend, clients, figures)


def main() -> None:
    """Parse arguments and run the benchmark (or, with --drive, one load-generator run)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--drive", help=argparse.SUPPRESS)
    parser.add_argument("--backend", choices=["sqlite", "postgresql", "both"], default="both")
    parser.add_argument("--users", type=int, default=100_000)
    parser.add_argument("--items", type=int, default=20_000)
    parser.add_argument("--factors", type=int, default=64)
    parser.add_argument("--ratings-per-user", type=int, default=10, help="mean ratings per user")
    parser.add_argument("--duration", type=float, default=8.0, help="seconds measured per run")
    parser.add_argument("--warmup", type=float, default=1.5, help="seconds before measuring")
    parser.add_argument("--clients", type=lambda s: [int(x) for x in s.split(",")], default=[1, 32])
    parser.add_argument(
        "--scenarios", type=lambda s: s.split(","), default=list(SCENARIOS), help="comma list"
    )
    parser.add_argument("--torch-threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument(
        "--reuse-dir",
        type=Path,
        help="SQLite only: keep the database and model in this folder and reuse them next time",
    )
    args = parser.parse_args()
    if args.drive:
        drive_main(args.drive)
        return
    if "healthz" not in args.scenarios:
        args.scenarios.insert(0, "healthz")
    load = os.getloadavg()
    print(
        f"mfserve serving benchmark: {os.cpu_count()} CPUs, load average before start "
        f"{load[0]:.2f} {load[1]:.2f} {load[2]:.2f}; {args.duration:.0f} s per run after "
        f"{args.warmup:.1f} s warm-up; client in its own process"
    )
    for backend in ("sqlite", "postgresql") if args.backend == "both" else (args.backend,):
        bench_backend(backend, args)
    load = os.getloadavg()
    print(f"\nload average after: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")


if __name__ == "__main__":
    main()
