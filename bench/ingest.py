"""Ingest throughput: `POST /ratings` against a real uvicorn server, and `mfserve import`.

Run from the repository root: `python -m bench.ingest` (or `python bench/ingest.py`).
Prints ratings per second for concurrent single-rating clients (`wrk` at 1, 8 and 32
connections, with p99 latency), for batches of 1, 100 and 1,000 rows posted one request after
another, and for the importer, on SQLite (a file) and PostgreSQL (a throwaway server started
with initdb/pg_ctl, fsync on). `wrk` must be installed (`apt-get install -y wrk`).

Each wrk run of `POST /ratings` is paired with a wrk run of `GET /healthz` (the cheapest
request) against the same server just before it: the ratio of the two, and the API process's
CPU time per request of each, say far more than a rate on a machine shared with other work.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import resource
import shutil
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


def database_cpu_seconds(url: str) -> float:
    """CPU seconds the PostgreSQL server behind `url` has used so far, 0 for SQLite.

    The postmaster's own time and that of its exited children, plus its children that run
    now (listed anew each call, so that backends started in between count as well).
    """
    if not url.startswith("postgresql"):
        return 0.0
    port = url.rsplit(":", 1)[1].split("/", 1)[0].encode()
    postmaster = None
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        with contextlib.suppress(OSError):
            command = cmdline.read_bytes().split(b"\0")
            if command[0].endswith(b"postgres") and b"-p " + port in b" ".join(command):
                postmaster = cmdline.parent.name
    if postmaster is None:
        raise RuntimeError(f"no PostgreSQL server runs on port {port.decode()}")
    total = 0.0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError):
            fields = stat.read_text().rsplit(")", 1)[1].split()
            if stat.parent.name == postmaster:
                total += sum(int(value) for value in fields[11:15])
            elif fields[1] == postmaster:
                total += int(fields[11]) + int(fields[12])
    return total / os.sysconf("SC_CLK_TCK")


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


WRK_SCRIPT = """
local made = 0
function setup(thread)
  made = made + 1
  thread:set("tid", made)
end
function init(args)
  run = args[1]
  n = 0
end
function request()
  n = n + 1
  -- users of 100 ratings each, as real clients send them: one rating per request
  local body = string.format(
    '{"user":"%s-%d-%d","item":"i%d","rating":4.0}', run, tid, math.floor(n / 100), n % 1682)
  return wrk.format("POST", "/ratings", {["Content-Type"] = "application/json"}, body)
end
function done(summary, latency, requests)
  io.write(string.format("RESULT %d %d %d %d\\n", summary.requests, summary.duration,
    latency:percentile(99), summary.errors.status + summary.errors.connect
    + summary.errors.read + summary.errors.write + summary.errors.timeout))
end
"""


HEALTHZ_SCRIPT = WRK_SCRIPT.replace(
    'return wrk.format("POST", "/ratings", {["Content-Type"] = "application/json"}, body)',
    'return wrk.format("GET", "/healthz")',
)


def process_cpu_seconds(pid: int) -> float:
    """User plus system CPU time a process has used so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def wrk_rate(
    base_url: str, connections: int, seconds: int, workdir: Path, *, healthz: bool = False
) -> tuple[float, float]:
    """(requests/s, p99 ms) of `wrk` posting one new rating per request (or GET /healthz)."""
    script = workdir / ("healthz.lua" if healthz else "post_rating.lua")
    script.write_text(HEALTHZ_SCRIPT if healthz else WRK_SCRIPT)
    threads = min(connections, 2)
    command = ["wrk", f"-t{threads}", f"-c{connections}", f"-d{seconds}s", "--timeout", "30s"]
    command += ["-s", str(script), base_url, "--", f"w{connections}"]
    result = subprocess.run(command, capture_output=True, text=True, check=True)
    match = re.search(r"RESULT (\d+) (\d+) (\d+) (\d+)", result.stdout)
    if match is None:
        raise RuntimeError(f"unexpected wrk output: {result.stdout}{result.stderr}")
    requests, duration_us, p99_us, errors = (int(value) for value in match.groups())
    if errors:
        raise RuntimeError(f"wrk saw {errors} failed requests: {result.stdout}")
    return requests / (duration_us / 1e6), p99_us / 1000


def import_rate(url: str) -> tuple[float, float, float, float]:
    """Ratings/s the importer reports and over the whole command's wall time; CPU per rating
    of the importer and of PostgreSQL (0 for SQLite)."""
    db_cpu = database_cpu_seconds(url)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    env = {**os.environ, "MFSERVE_DATABASE_URL": url, "PYTHONPATH": str(REPO_ROOT)}
    command = [sys.executable, "-m", "service", "import", "--dataset", "ml-100k", "--no-progress"]
    started = time.perf_counter()
    result = subprocess.run(command, cwd=REPO_ROOT, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - started
    db_cpu = database_cpu_seconds(url) - db_cpu
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    client_cpu = after.ru_utime + after.ru_stime - children.ru_utime - children.ru_stime
    if result.returncode != 0:
        raise RuntimeError(f"mfserve import failed: {result.stderr}")
    match = re.search(r"imported (\d+) ratings.*?([\d,]+) ratings/s", result.stdout)
    if match is None:
        raise RuntimeError(f"unexpected importer output: {result.stdout}")
    count = int(match.group(1))
    return float(match.group(2).replace(",", "")), count / wall, client_cpu / count, db_cpu / count


def main() -> None:
    """Run every measurement and print the figures."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--backends", nargs="+", default=["sqlite", "postgresql"])
    parser.add_argument("--single-rows", type=int, default=2_000, help="rows posted one by one")
    parser.add_argument("--rows", type=int, default=100_000, help="rows posted in batches")
    parser.add_argument("--wrk-seconds", type=int, default=10, help="seconds of each wrk run")
    parser.add_argument(
        "--connections", type=int, nargs="*", default=[1, 8, 32], help="wrk runs (none: skip)"
    )
    parser.add_argument("--sizes", type=int, nargs="*", default=[1, 100, 1000], help="batch sizes")
    parser.add_argument("--no-import", action="store_true", help="skip `mfserve import`")
    args = parser.parse_args()
    if args.connections and shutil.which("wrk") is None:
        parser.error("wrk is not installed (apt-get install -y wrk)")

    table = load_ml100k(REPO_ROOT / ".cache")
    rows: list[Row] = [
        {"user": str(u), "item": str(i), "rating": float(r), "timestamp": int(t)}
        for u, i, r, t in zip(
            table.users, table.items, table.ratings, table.timestamps, strict=True
        )
    ]
    print(f"cpus: {os.cpu_count()}, load average: {os.getloadavg()[0]:.2f}")
    results: list[tuple[str, str, float]] = []
    latencies: list[tuple[str, int, float, float, float, float, float, float]] = []
    with tempfile.TemporaryDirectory(prefix="mfserve-bench-") as tmp:
        workdir = Path(tmp)
        for backend in args.backends:
            with fresh_database(backend, workdir, "api") as url:
                env = {"MFSERVE_ARTIFACT_DIR": str(workdir / "artifacts")}
                with run_api_process(url, env=env) as server:
                    pid = server.process.pid
                    for connections in args.connections:
                        seconds = args.wrk_seconds
                        cpu = process_cpu_seconds(pid)
                        health, _ = wrk_rate(
                            server.base_url, connections, seconds, workdir, healthz=True
                        )
                        health_cpu = (process_cpu_seconds(pid) - cpu) / (health * seconds)
                        cpu = process_cpu_seconds(pid)
                        db_cpu = database_cpu_seconds(url)
                        rate, p99 = wrk_rate(server.base_url, connections, seconds, workdir)
                        rate_cpu = (process_cpu_seconds(pid) - cpu) / (rate * seconds)
                        db_cpu = (database_cpu_seconds(url) - db_cpu) / (rate * seconds)
                        path = f"wrk, one rating per request, {connections} connections"
                        results.append((backend, path, rate))
                        latencies.append(
                            (backend, connections, rate, p99, health, rate_cpu, health_cpu, db_cpu)
                        )
                        print(
                            f"{backend:10} wrk c={connections:<3}    {rate:>10,.0f} ratings/s"
                            f"  p99 {p99:,.0f} ms  /healthz {health:,.0f}/s"
                            f"  ratio {rate / health:.2f}  API CPU {rate_cpu * 1e6:,.0f} us"
                            f" per rating, {health_cpu * 1e6:,.0f} us per /healthz;"
                            f" PostgreSQL CPU {db_cpu * 1e6:,.0f} us per rating",
                            flush=True,
                        )
                    for size in args.sizes:
                        count = args.single_rows if size == 1 else args.rows
                        # a user prefix per run, so that every run inserts new pairs
                        sample = [{**row, "user": f"b{size}-{row['user']}"} for row in rows[:count]]
                        api_cpu = process_cpu_seconds(pid)
                        db_cpu = database_cpu_seconds(url)
                        rate = post_rate(server.base_url, sample, size)
                        api_cpu = (process_cpu_seconds(pid) - api_cpu) / count
                        db_cpu = (database_cpu_seconds(url) - db_cpu) / count
                        results.append((backend, f"POST /ratings, batches of {size}", rate))
                        print(
                            f"{backend:10} POST batch={size:<5} {rate:>10,.0f} ratings/s"
                            f"  CPU per rating: API {api_cpu * 1e6:,.1f} us,"
                            f" PostgreSQL {db_cpu * 1e6:,.1f} us",
                            flush=True,
                        )
            if args.no_import:
                continue
            with fresh_database(backend, workdir, "import") as url:
                reported, wall, client_cpu, db_cpu = import_rate(url)
                results.append((backend, "mfserve import (importer's own rate)", reported))
                results.append((backend, "mfserve import (whole command, wall)", wall))
                print(
                    f"{backend:10} import       {reported:>10,.0f} ratings/s ({wall:,.0f}/s wall)"
                    f"  CPU per rating: importer {client_cpu * 1e6:,.1f} us,"
                    f" PostgreSQL {db_cpu * 1e6:,.1f} us",
                    flush=True,
                )
    print("\n| backend | path | ratings/s |\n|---|---|---:|")
    for backend, path, rate in results:
        print(f"| {backend} | {path} | {rate:,.0f} |")
    print(
        "\n| backend | connections | ratings/s | p99 | /healthz/s | ratio"
        " | API CPU us/rating | API CPU us/healthz | PostgreSQL CPU us/rating |"
        "\n|---|---:|---:|---:|---:|---:|---:|---:|---:|"
    )
    for backend, connections, rate, p99, health, rate_cpu, health_cpu, db_cpu in latencies:
        print(
            f"| {backend} | {connections} | {rate:,.0f} | {p99:,.0f} ms | {health:,.0f}"
            f" | {rate / health:.2f} | {rate_cpu * 1e6:,.0f} | {health_cpu * 1e6:,.0f}"
            f" | {db_cpu * 1e6:,.0f} |"
        )


if __name__ == "__main__":
    main()
