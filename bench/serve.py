"""Serving benchmark: a real uvicorn server holding a 100k users x 20k items x 64 factors model.

For each backend (SQLite, PostgreSQL) it builds one database whose users fall into groups by
history length (`--ratings-per-user`, default 10, 100, 1,000 and 10,000 ratings each), items
(with tags) and ratings, writes a synthetic `als-biased` artifact (random factors: scoring cost
does not depend on what the numbers are) with a `popular` fallback, publishes it as the active
version, then adds one rating after the snapshot for a tenth of each group's users (the
"changed" users), starts `python -m service api` as its own process, and drives it from a
SEPARATE process with 32 (`--clients`) concurrent keep-alive HTTP/1.1 connections for a fixed
time per scenario, with `wrk` (a C load generator) when it is installed and with a minimal
asyncio client (`--drivers`):

- `/healthz` (no-op endpoint: the HTTP stack's own cost)
- `GET /recommend/{user}` for users unchanged since the snapshot (stored embedding), per group
- `GET /recommend/{user}` for changed users (one rating added after the snapshot), per group
- `POST /scores` of 20 items for a stored user, per group, and `POST /foldin` of 10 items

It prints requests/s, p50, p95 and p99 latency per scenario, driver and client count, with each
figure's ratio to `/healthz` measured in the same run by the same driver.

    .venv/bin/python bench/serve.py                  # both backends, 32 clients, both drivers
    .venv/bin/python bench/serve.py --backend sqlite --duration 5 --clients 1,32 --drivers wrk
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

SCENARIOS = ("healthz", "recommend", "recommend-changed", "scores", "foldin")
GROUP_SCENARIOS = ("recommend", "recommend-changed", "scores")
"""Scenarios run once per history-length group."""
CHANGED_SHARE = 10
"""One user in this many of each group gets a rating after the snapshot (a "changed" user)."""
MIN_GROUP_USERS = 20
"""Fewest users of a group."""


@dataclass(frozen=True)
class Group:
    """Users u{start}..u{start+size-1}, each with `ratings` ratings; the first `changed` of
    them got one more after the model's snapshot."""

    ratings: int
    start: int
    size: int

    @property
    def changed(self) -> int:
        """How many of the group's users changed after the snapshot."""
        return max(1, self.size // CHANGED_SHARE)


def user_groups(n_users: int, levels: list[int], group_ratings: int) -> list[Group]:
    """Groups of users by history length: each longer level gets about `group_ratings`
    ratings in all; the shortest level takes the rest of the `n_users` users."""
    levels = sorted(levels)
    sizes = [max(MIN_GROUP_USERS, group_ratings // r) for r in levels[1:]]
    sizes.insert(0, max(MIN_GROUP_USERS, n_users - sum(sizes)))
    groups, start = [], 0
    for ratings, size in zip(levels, sizes, strict=True):
        groups.append(Group(ratings, start, size))
        start += size
    return groups


# ----- data and model ---------------------------------------------------------------------
def populate(url: str, groups: list[Group], n_items: int, seed: int) -> tuple[int, list[Any]]:
    """Fill users, items (1 to 3 of 20 tags each) and ratings (Zipf-like item popularity).

    Returns the number of ratings stored and the late ratings (one per changed user, each of
    an item the user did not rate yet) that `add_late_ratings` stores after the snapshot.
    """
    import numpy as np
    from sqlalchemy import insert

    from service.db.session import create_db_engine, refresh_statistics
    from service.db.tables import items, ratings, users

    rng = np.random.default_rng(seed)
    now = datetime.now(UTC)
    engine = create_db_engine(url)
    popularity = 1.0 / np.arange(1, n_items + 1) ** 0.8
    popularity /= popularity.sum()
    n_users = sum(g.size for g in groups)
    total = 0
    late: list[Any] = []
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
        stamp = now - timedelta(days=1)
        for group in groups:
            count = min(group.ratings + 1, n_items)
            for u in range(group.start, group.start + group.size):
                if count >= 200:
                    chosen = rng.choice(n_items, size=count, replace=False, p=popularity)
                else:
                    chosen = np.unique(rng.choice(n_items, size=count, p=popularity))
                values = np.round(rng.uniform(0.5, 5.0, size=len(chosen)) * 2) / 2
                rows = [
                    {
                        "user_id": u + 1,
                        "item_id": int(j) + 1,
                        "rating": float(v),
                        "event_at": stamp,
                        "stored_at": stamp,
                    }
                    for j, v in zip(chosen, values, strict=True)
                ]
                if u < group.start + group.changed:
                    late.append(rows[-1])
                block.extend(rows[:-1])
                if len(block) >= 50_000:
                    connection.execute(insert(ratings), block)
                    total += len(block)
                    block = []
        if block:
            connection.execute(insert(ratings), block)
            total += len(block)
    refresh_statistics(engine)  # as `mfserve import` does after a load
    if engine.dialect.name == "postgresql":
        # Settle the freshly loaded tables now: otherwise autovacuum's pass over a million
        # inserted rows lands in the middle of a measurement on this shared CPU.
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
            connection.exec_driver_sql("VACUUM")
    engine.dispose()
    return total, late


def add_late_ratings(url: str, late: list[Any]) -> None:
    """Store one rating per changed user after the snapshot, as `POST /ratings` would
    (the rating and a new history version, in one transaction)."""
    from sqlalchemy import insert, update

    from service.db.session import create_db_engine
    from service.db.tables import ratings, users

    now = datetime.now(UTC)
    engine = create_db_engine(url)
    with engine.begin() as connection:
        for row in late:
            connection.execute(insert(ratings), [{**row, "event_at": now, "stored_at": now}])
            connection.execute(
                update(users)
                .where(users.c.id == row["user_id"])
                .values(history_version=users.c.history_version + 1, history_changed_at=now)
            )
    engine.dispose()


def publish_model(
    url: str, artifact_dir: Path, n_users: int, n_items: int, factors: int, seed: int
) -> int:
    """Write a synthetic `als-biased` artifact with a `popular` fallback and activate it."""
    import torch

    from service.db.jobs import claim_job, enqueue_job
    from service.db.session import create_db_engine, make_sessionmaker, transaction
    from service.db.versions import ModelVersion, publish_version
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
            ModelVersion(
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
Request = tuple[str, str, str | None]
"""(method, path, JSON body or None)."""


def scenario_requests(spec: dict[str, Any], seed: int = 7) -> list[Request]:
    """The requests one scenario cycles through."""
    rng = random.Random(seed)
    scenario, n_items = spec["scenario"], spec["items"]
    start, size, changed = spec.get("group") or (0, 1, 0)

    def stored_user() -> str:
        return f"u{rng.randrange(start + changed, start + size)}"

    if scenario == "healthz":
        return [("GET", "/healthz", None)]
    if scenario == "recommend":
        return [("GET", f"/recommend/{stored_user()}?n=10", None) for _ in range(4096)]
    if scenario == "recommend-changed":
        return [
            ("GET", f"/recommend/u{rng.randrange(start, start + changed)}?n=10", None)
            for _ in range(4096)
        ]
    if scenario == "foldin":
        return [
            (
                "POST",
                "/foldin",
                json.dumps(
                    {
                        "history": [
                            {
                                "item": f"i{rng.randrange(n_items)}",
                                "rating": rng.choice([1, 3, 4.5, 5]),
                            }
                            for _ in range(10)
                        ]
                    }
                ),
            )
            for _ in range(1024)
        ]
    if scenario == "scores":
        return [
            (
                "POST",
                "/scores",
                json.dumps(
                    {
                        "user": stored_user(),
                        "items": [f"i{rng.randrange(n_items)}" for _ in range(20)],
                    }
                ),
            )
            for _ in range(1024)
        ]
    raise ValueError(scenario)


def request_factory(spec: dict[str, Any]) -> Any:
    """A function giving the raw bytes of the next request of a scenario."""
    head = f"Host: {spec['host']}:{spec['port']}\r\nConnection: keep-alive\r\n"

    def raw(method: str, path: str, body: str | None) -> bytes:
        if body is None:
            return f"{method} {path} HTTP/1.1\r\n{head}\r\n".encode()
        data = body.encode()
        return (
            f"{method} {path} HTTP/1.1\r\n{head}Content-Type: application/json\r\n"
            f"Content-Length: {len(data)}\r\n\r\n"
        ).encode() + data

    pool = [raw(*request) for request in scenario_requests(spec)]
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
    next_request = request_factory(spec)
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


def run_python(spec: dict[str, Any]) -> Any:
    """Run one scenario with the asyncio client in a separate process; its figures."""
    output = subprocess.run(
        [sys.executable, __file__, "--drive", json.dumps(spec)],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return json.loads(output.strip().splitlines()[-1])


WRK_SCRIPT = """
local requests = {}
%s
local i = 0
request = function()
  i = i %% #requests + 1
  return requests[i]
end
init = function(args)
  for k, r in ipairs(raw) do
    if r[3] then
      requests[k] = wrk.format(r[1], r[2], {["Content-Type"] = "application/json"}, r[3])
    else
      requests[k] = wrk.format(r[1], r[2])
    end
  end
end
done = function(summary, latency, requests)
  local errors = summary.errors.status + summary.errors.connect + summary.errors.read
    + summary.errors.write + summary.errors.timeout
  io.write(string.format(
    "WRK-JSON {\\"requests\\": %%d, \\"errors\\": %%d, \\"seconds\\": %%f, "
    .. "\\"p50\\": %%f, \\"p95\\": %%f, \\"p99\\": %%f}\\n",
    summary.requests, errors, summary.duration / 1e6, latency:percentile(50) / 1000,
    latency:percentile(95) / 1000, latency:percentile(99) / 1000))
end
"""


def _lua_string(text: str) -> str:
    return "[==[" + text + "]==]"


def run_wrk(spec: dict[str, Any], tmp: Path) -> Any:
    """Run one scenario with `wrk` (warm-up run first, then the measured one); its figures."""
    rows = ",\n".join(
        "{"
        + ", ".join(
            [_lua_string(method), _lua_string(path), "nil" if body is None else _lua_string(body)]
        )
        + "}"
        for method, path, body in scenario_requests(spec)
    )
    script = tmp / f"wrk-{spec['scenario']}.lua"
    script.write_text(WRK_SCRIPT % ("raw = {\n" + rows + "\n}"))
    url = f"http://{spec['host']}:{spec['port']}"
    threads = str(min(2, spec["clients"]))
    base = ["wrk", "-t", threads, "-c", str(spec["clients"]), "-s", str(script), "--timeout", "10s"]
    if spec["warmup"] > 0:
        subprocess.run(
            [*base, "-d", f"{max(1, round(spec['warmup']))}s", url], check=True, capture_output=True
        )
    cpu_before = server_cpu_seconds(spec.get("pid"))
    output = subprocess.run(
        [*base, "-d", f"{max(1, round(spec['duration']))}s", url],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    cpu_after = server_cpu_seconds(spec.get("pid"))
    line = next(x for x in output.splitlines() if x.startswith("WRK-JSON "))
    figures = json.loads(line.removeprefix("WRK-JSON "))
    figures["rps"] = figures["requests"] / figures["seconds"]
    figures["cpu_us"] = (
        (cpu_after - cpu_before) / figures["requests"] * 1e6
        if cpu_before is not None and cpu_after is not None and figures["requests"]
        else float("nan")
    )
    return figures


def server_cpu_seconds(pid: int | None) -> float | None:
    """CPU seconds (user + system, every thread) the server process used so far (Linux; None
    elsewhere): per request, a cost that other load on shared cores disturbs far less than
    requests/s."""
    if pid is None:
        return None
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run_scenario(
    base_url: str,
    scenario: str,
    group: Group | None,
    clients: int,
    driver: str,
    args: argparse.Namespace,
    tmp: Path,
    pid: int | None = None,
) -> Any:
    """Run one scenario with one driver and return its figures (with `wrk`, also the server
    process's CPU per request, given its `pid`)."""
    wait_idle(base_url)
    host, port = base_url.removeprefix("http://").split(":")
    spec = {
        "pid": pid,
        "scenario": scenario,
        "host": host,
        "port": int(port),
        "clients": clients,
        "duration": args.duration,
        "warmup": args.warmup,
        "items": args.items,
        "group": None if group is None else (group.start, group.size, group.changed),
    }
    return run_wrk(spec, tmp) if driver == "wrk" else run_python(spec)


# ----- report -----------------------------------------------------------------------------
def report(
    backend: str,
    clients: int,
    driver: str,
    figures: dict[tuple[str, int | None], dict[str, Any]],
    bases: dict[tuple[str, int | None], dict[str, Any]],
) -> None:
    """Print one table: a row per scenario, ratios to /healthz (with `--paired`, to the
    /healthz run just before the row's, printed beside it)."""
    first = figures[("healthz", None)]
    paired = " (ratios to the /healthz run just before each row)" if bases else ""
    print(f"\n{backend}, {clients} connection{'s' if clients > 1 else ''}, {driver}{paired}:")
    print(
        f"  {'endpoint':<34}{'req/s':>9}{'p50 ms':>9}{'p95 ms':>9}{'p99 ms':>9}"
        f"{'errors':>8}{'rps/healthz':>13}{'p99/healthz':>13}{'cpu us/req':>12}"
        + (f"{'healthz rps':>13}{'healthz p99':>13}" if bases else "")
    )
    for key, row in figures.items():
        base = bases.get(key, first)
        line = (
            f"  {label(*key):<34}{row['rps']:>9.0f}{row['p50']:>9.2f}"
            f"{row['p95']:>9.2f}{row['p99']:>9.2f}{row['errors']:>8}"
            f"{ratio(row['rps'], base['rps']):>13.2f}{ratio(row['p99'], base['p99']):>13.2f}"
            f"{row.get('cpu_us', float('nan')):>12.0f}"
        )
        if bases:
            line += f"{base['rps']:>13.0f}{base['p99']:>13.2f}"
        print(line)
    sys.stdout.flush()


def ratio(value: float, base: float) -> float:
    """value / base (NaN when the base is zero)."""
    return value / base if base else float("nan")


def wait_idle(base_url: str, timeout: float = 30.0) -> None:
    """Wait until the server answers /healthz promptly again: requests a load generator left
    queued must not be counted against the next run."""
    import httpx

    deadline = time.monotonic() + timeout
    with httpx.Client(base_url=base_url, timeout=timeout) as client:
        while time.monotonic() < deadline:
            started = time.monotonic()
            client.get("/healthz")
            if time.monotonic() - started < 0.05:
                return
            time.sleep(0.5)


def label(scenario: str, ratings: int | None) -> str:
    """The printed name of a scenario."""
    name = {
        "healthz": "GET /healthz",
        "recommend": "GET /recommend stored",
        "recommend-changed": "GET /recommend changed",
        "foldin": "POST /foldin 10 items",
        "scores": "POST /scores 20, stored",
    }[scenario]
    return name if ratings is None else f"{name}, {ratings:,} r/u"


def bench_backend(backend: str, args: argparse.Namespace) -> None:
    """Build, publish, serve and measure one backend."""
    with (
        tempfile.TemporaryDirectory(prefix="mfserve-bench-") as tmp,
        database(backend, Path(tmp)) as url,
    ):
        bench_database(backend, url, Path(tmp), args)


def bench_database(backend: str, url: str, tmp: Path, args: argparse.Namespace) -> None:
    """Fill, publish, serve and measure one database."""
    from tests.support.server import run_api_process

    artifact_dir = tmp / "artifacts"
    groups = user_groups(args.users, args.ratings_per_user, args.group_ratings)
    n_users = sum(g.size for g in groups)
    started = time.monotonic()
    total, late = populate(url, groups, args.items, args.seed)
    loaded = time.monotonic() - started
    started = time.monotonic()
    version = publish_model(url, artifact_dir, n_users, args.items, args.factors, args.seed)
    written = time.monotonic() - started
    add_late_ratings(url, late)
    sizes = ", ".join(f"{g.size:,} x {g.ratings:,}" for g in groups)
    print(
        f"\n== {backend}: {n_users:,} users ({sizes} ratings), {args.items:,} items, "
        f"{total + len(late):,} ratings (loaded in {loaded:.0f} s), {args.factors} factors "
        f"(artifact in {written:.0f} s); {len(late):,} users changed after the snapshot"
    )
    env = {
        "MFSERVE_ARTIFACT_DIR": str(artifact_dir),
        "MFSERVE_LOG_LEVEL": "warning",
        "MFSERVE_TORCH_THREADS": str(args.torch_threads),
    }
    with run_api_process(url, env=env, startup_timeout=600) as server:
        took = wait_for_model(server.base_url, version)
        print(f"   server up; model version {version} loaded {took:.1f} s after start")
        for clients in args.clients:
            for driver in args.drivers:
                figures: dict[tuple[str, int | None], dict[str, Any]] = {}
                bases: dict[tuple[str, int | None], dict[str, Any]] = {}
                for scenario in args.scenarios:
                    targets: list[Group | None] = (
                        list(groups) if scenario in GROUP_SCENARIOS else [None]
                    )
                    for group in targets:
                        key = (scenario, None if group is None else group.ratings)
                        pid = server.process.pid
                        if args.paired and scenario != "healthz":
                            bases[key] = run_scenario(
                                server.base_url, "healthz", None, clients, driver, args, tmp, pid
                            )
                        figures[key] = run_scenario(
                            server.base_url, scenario, group, clients, driver, args, tmp, pid
                        )
                report(backend, clients, driver, figures, bases)


def int_list(text: str) -> list[int]:
    """A comma-separated list of integers."""
    return [int(x) for x in text.split(",")]


def main() -> None:
    """Parse arguments and run the benchmark (or, with --drive, one load-generator run)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--drive", help=argparse.SUPPRESS)
    parser.add_argument("--backend", choices=["sqlite", "postgresql", "both"], default="both")
    parser.add_argument("--users", type=int, default=100_000)
    parser.add_argument("--items", type=int, default=20_000)
    parser.add_argument("--factors", type=int, default=64)
    parser.add_argument(
        "--ratings-per-user",
        type=int_list,
        default=[10, 100, 1000, 10000],
        help="history lengths, one group of users each (comma list)",
    )
    parser.add_argument(
        "--group-ratings",
        type=int,
        default=500_000,
        help="ratings of each group but the shortest (which takes the rest of --users)",
    )
    parser.add_argument("--duration", type=float, default=5.0, help="seconds measured per run")
    parser.add_argument("--warmup", type=float, default=1.0, help="seconds before measuring")
    parser.add_argument("--clients", type=int_list, default=[32], help="connections (comma list)")
    parser.add_argument(
        "--drivers",
        type=lambda s: s.split(","),
        default=["wrk", "python"] if shutil.which("wrk") else ["python"],
        help="load generators: wrk and/or python (comma list)",
    )
    parser.add_argument(
        "--scenarios", type=lambda s: s.split(","), default=list(SCENARIOS), help="comma list"
    )
    parser.add_argument(
        "--paired",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="measure /healthz right before each scenario and give ratios to that run (on "
        "shared CPUs the background load drifts between runs)",
    )
    parser.add_argument("--torch-threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    if args.drive:
        drive_main(args.drive)
        return
    if "wrk" in args.drivers and shutil.which("wrk") is None:
        parser.error("--drivers wrk: wrk is not installed (apt-get install -y wrk)")
    if "healthz" not in args.scenarios:
        args.scenarios.insert(0, "healthz")
    load = os.getloadavg()
    print(
        f"mfserve serving benchmark: {os.cpu_count()} CPUs, load average before start "
        f"{load[0]:.2f} {load[1]:.2f} {load[2]:.2f}; {args.duration:.0f} s per run after "
        f"{args.warmup:.1f} s warm-up; load generators {', '.join(args.drivers)} in their own "
        "processes"
    )
    for backend in ("sqlite", "postgresql") if args.backend == "both" else (args.backend,):
        bench_backend(backend, args)
    load = os.getloadavg()
    print(f"\nload average after: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")


if __name__ == "__main__":
    main()
