"""`mfserve import`: the real CLI on MovieLens 100K, and each file format."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine, func, select, text

from service.app import create_app
from service.config import load_settings
from service.db.tables import items, ratings, users
from service.tools.importer import run_import_command

REPO_ROOT = Path(__file__).resolve().parents[1]


def mfserve(database_url: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "MFSERVE_DATABASE_URL": database_url, "PYTHONPATH": str(REPO_ROOT)}
    command = [sys.executable, "-m", "service", *args]
    return subprocess.run(command, cwd=REPO_ROOT, env=env, capture_output=True, text=True)


def counts(engine: Engine) -> tuple[int, int, int]:
    with engine.connect() as connection:
        return tuple(  # type: ignore[return-value]
            connection.execute(select(func.count()).select_from(table)).scalar_one()
            for table in (ratings, users, items)
        )


@pytest.mark.slow
def test_import_ml100k(database_url: str, engine: Engine, ml100k_path: Path) -> None:
    result = mfserve(database_url, "import", "--dataset", "ml-100k", "--no-progress")
    assert result.returncode == 0, result.stderr
    assert "imported 100000 ratings" in result.stdout
    assert counts(engine) == (100_000, 943, 1_682)
    assert "loaded the metadata of 1682 items and 943 users" in result.stdout
    settings = load_settings(database_url=database_url, auth="off")
    with TestClient(create_app(settings)) as client:
        movie = client.get("/items/50").json()
        assert movie["title"] == "Star Wars"
        assert movie["tags"] == ["Action", "Adventure", "Romance", "Sci-Fi", "War"]
        assert movie["attributes"] == {"year": 1977}
        user = client.get("/users/1").json()
        assert user["attributes"] == {"age": 24, "gender": "M", "occupation": "technician"}


def test_movielens_csv(database_url: str, engine: Engine, tmp_path: Path) -> None:
    path = tmp_path / "ratings.csv"
    path.write_text(
        "userId,movieId,rating,timestamp\n1,10,4.0,964982703\n1,20,3.5,964981247\n2,10,5,964982224\n"
    )
    result = mfserve(database_url, "import", str(path))
    assert result.returncode == 0, result.stderr
    assert "(movielens-csv)" in result.stdout
    assert counts(engine) == (3, 2, 2)


def test_udata(database_url: str, engine: Engine, tmp_path: Path) -> None:
    path = tmp_path / "u.data"
    path.write_text("196\t242\t3\t881250949\n186\t302\t3\t891717742\n")
    result = mfserve(database_url, "import", str(path), "--no-progress")
    assert result.returncode == 0, result.stderr
    assert counts(engine) == (2, 2, 2)


def test_generic_csv_with_options_and_invalid_rows(
    database_url: str, engine: Engine, tmp_path: Path
) -> None:
    path = tmp_path / "events.csv"
    path.write_text(
        "who;what;when;score\n"
        "Zoë;book 1;2024-05-01T10:00:00Z;4.5\n"
        "Zoë;book 2;2024-05-01T11:00:00Z;\n"
        "sam;book 1;not a time;2\n"
        "sam;book 3;1714557600;9\n"
    )
    options = ["--format", "csv", "--delimiter", ";", "--user-column", "who",
               "--item-column", "what", "--rating-column", "score", "--timestamp-column", "when",
               "--no-progress", "--batch-size", "2"]  # fmt: skip
    result = mfserve(database_url, "import", str(path), *options)
    assert result.returncode == 1
    assert "line 4, timestamp" in result.stderr
    assert "line 5, rating" in result.stderr
    assert counts(engine)[0] == 2  # the first batch (lines 2-3) was stored before the bad one

    result = mfserve(database_url, "import", str(path), *options, "--skip-invalid")
    assert result.returncode == 0, result.stderr
    assert "2 invalid skipped" in result.stdout
    assert counts(engine) == (2, 1, 2)


def test_missing_file_and_unmigrated_database(
    database_url: str, empty_database_url: str, tmp_path: Path
) -> None:
    result = mfserve(database_url, "import", str(tmp_path / "nope.csv"))
    assert result.returncode == 1
    assert "no such file" in result.stderr
    path = tmp_path / "u.data"
    path.write_text("1\t2\t3\t881250949\n")
    result = mfserve(empty_database_url, "import", str(path))
    assert result.returncode == 1
    assert "mfserve migrate" in result.stderr


def test_a_failed_import_stops_its_reader_thread(
    database_url: str, engine: Engine, tmp_path: Path
) -> None:
    path = tmp_path / "u.data"
    lines = [f"{n}\t{n}\t3\t881250949" for n in range(1, 40)]
    lines[30] = "31\t31\t3\tnot a time"
    path.write_text("\n".join(lines) + "\n")
    settings = load_settings(database_url=database_url)
    code = run_import_command(settings, path=path, dataset=None, batch_size=4, progress=False)
    assert code == 1
    assert counts(engine)[0] == 28  # the seven batches before the bad line's
    assert not [t for t in threading.enumerate() if t.name == "mfserve-import-reader"]


def test_imports_over_stored_ratings_keep_the_upsert_rules(
    database_url: str, engine: Engine, tmp_path: Path
) -> None:
    """Chunks of new pairs, of stored pairs and of both follow the rules of `POST /ratings`."""
    first = tmp_path / "first.csv"
    first.write_text("user,item,rating,timestamp\nu1,i1,3,100\nu1,i2,4,100\nu2,i1,2,100\n")
    result = mfserve(database_url, "import", str(first), "--batch-size", "2", "--no-progress")
    assert "3 inserted, 0 updated, 0 ignored" in result.stdout, result.stderr
    result = mfserve(database_url, "import", str(first), "--batch-size", "2", "--no-progress")
    assert "0 inserted, 3 updated, 0 ignored" in result.stdout, result.stderr  # equal: replaces
    second = tmp_path / "second.csv"
    second.write_text(
        "user,item,rating,timestamp\n"
        "u1,i1,5,200\nu1,i2,1,50\n"  # newer: replaces; older: ignored
        "u3,i1,4,10\nu3,i1,4.5,10\n"  # a new pair twice in one chunk: the later row wins
        "u2,i2,1,10\n"  # new pair of a stored user
    )
    result = mfserve(database_url, "import", str(second), "--batch-size", "2", "--no-progress")
    assert "2 inserted, 1 updated, 2 ignored" in result.stdout, result.stderr
    query = text(
        "SELECT u.external_id, i.external_id, r.rating FROM ratings r"
        " JOIN users u ON u.id = r.user_id JOIN items i ON i.id = r.item_id"
    )
    with engine.connect() as connection:
        stored = {(user, item): rating for user, item, rating in connection.execute(query)}
    assert stored == {
        ("u1", "i1"): 5.0,
        ("u1", "i2"): 4.0,
        ("u2", "i1"): 2.0,
        ("u2", "i2"): 1.0,
        ("u3", "i1"): 4.5,
    }
