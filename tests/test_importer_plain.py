"""The importer's column-wise check of plain chunks (`plain_rows`, PostgreSQL's fast path):
it accepts exactly what the shared validation accepts, and stores the same thing."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy import Engine, text

from service.config import load_settings
from service.db.postgres_prepared import unix_us
from service.tools.importer import import_file, plain_rows, validate_chunk
from service.tools.ratings_file import CsvColumns, RawChunk, file_layout, read_chunks

NOW = datetime(2024, 6, 1, 12, 0, tzinfo=UTC)
DAY = 86_400
LATEST = int(NOW.timestamp()) + DAY

ROWS = {
    "valid": "u1,i1,4.5,100",
    "integer rating": "u1,i1,4,100",
    "spaces": "u1,i1, 4.5 , 100 ",
    "no rating": "u1,i1,,100",
    "epoch zero": "u1,i1,3,0",
    "a day ahead": f"u1,i1,3,{LATEST}",
    "a second too far": f"u1,i1,3,{LATEST + 1}",
    "negative time": "u1,i1,3,-1",
    "fractional time": "u1,i1,3,100.5",
    "ISO time": "u1,i1,3,2024-05-01T10:00:00Z",
    "no time": "u1,i1,3,",
    "bad time": "u1,i1,3,soon",
    "rating too high": "u1,i1,5.5,100",
    "rating too low": "u1,i1,0,100",
    "NaN rating": "u1,i1,nan,100",
    "infinite rating": "u1,i1,inf,100",
    "bad rating": "u1,i1,good,100",
    "control character": "u\x01,i1,3,100",
    "long id": f"{'u' * 129},i1,3,100",
    "empty id": ",i1,3,100",
    "short row": "u1,i1",
}


def chunk_of(tmp_path: Path, row: str) -> RawChunk:
    """The one chunk of a CSV file holding a valid row, then `row`, then another valid row."""
    path = tmp_path / "ratings.csv"
    path.write_text(f"user,item,rating,timestamp\nu0,i0,3,50\n{row}\nu2,i0,2.5,60\n")
    (chunk,) = read_chunks(path, file_layout("csv", CsvColumns()), 10)
    return chunk


def utc(time: datetime | str) -> datetime:
    """A stored time as an aware datetime (SQLite's come back as text, in UTC)."""
    if isinstance(time, str):
        time = datetime.fromisoformat(time)
    return time if time.tzinfo is not None else time.replace(tzinfo=UTC)


@pytest.mark.parametrize("name", sorted(ROWS))
def test_plain_rows_accepts_what_validation_accepts(tmp_path: Path, name: str) -> None:
    settings = load_settings(rating_min=0.5, rating_max=5.0)
    chunk = chunk_of(tmp_path, ROWS[name])
    rows = plain_rows(chunk, settings, NOW)
    batch, errors = validate_chunk(chunk, settings, NOW, skip_invalid=False)
    if rows is None:
        # Only what validation refuses, or a timestamp that is not epoch seconds since 1970,
        # goes the row-by-row way.
        assert errors or name in {"negative time", "fractional time", "ISO time", "no time"}
        return
    assert errors == []
    assert rows.users == batch.users
    assert rows.items == batch.items
    assert rows.ratings == batch.ratings
    assert rows.event_us == [unix_us(time) for time in batch.event_times]
    assert len(rows) == len(batch) == 3


def test_plain_rows_take_the_common_file(tmp_path: Path) -> None:
    settings = load_settings(rating_min=0.5, rating_max=5.0)
    for name in ("valid", "integer rating", "spaces", "no rating", "epoch zero", "a day ahead"):
        assert plain_rows(chunk_of(tmp_path, ROWS[name]), settings, NOW) is not None


def test_plain_rows_keep_each_pairs_winner(tmp_path: Path) -> None:
    settings = load_settings()
    path = tmp_path / "ratings.csv"
    path.write_text("user,item,rating,timestamp\na,x,1,10\na,x,2,30\nb,x,3,5\na,x,4,30\na,x,5,20\n")
    (chunk,) = read_chunks(path, file_layout("csv", CsvColumns()), 10)
    rows = plain_rows(chunk, settings, NOW)
    assert rows is not None
    assert len(rows) == 5
    assert list(zip(rows.users, rows.items, rows.ratings, strict=True)) == [
        ("b", "x", 3.0),
        ("a", "x", 4.0),  # newest time wins, ties: the later row
    ]
    assert rows.user_names == ["a", "b"]


def test_imports_of_implicit_and_explicit_rows(
    database_url: str, engine: Engine, tmp_path: Path
) -> None:
    """Plain chunks with and without ratings, and duplicates, store what the rules say."""
    path = tmp_path / "events.csv"
    path.write_text(
        "user,item,rating,timestamp\n"
        "u1,i1,,100\nu1,i2,4,100\nu1,i2,2,100\n"  # an implicit row; a tie: the later row
        "u2,i1,3,100\nu2,i1,,50\nu3,i3,,7\n"  # an older implicit row changes nothing
    )
    settings = load_settings(database_url=database_url)
    report = import_file(path, file_layout("csv", CsvColumns()), settings, batch_size=3)
    assert (report.rows, report.inserted, report.updated, report.ignored) == (6, 4, 0, 2)
    query = text(
        "SELECT u.external_id, i.external_id, r.rating, r.event_at FROM ratings r"
        " JOIN users u ON u.id = r.user_id JOIN items i ON i.id = r.item_id"
    )
    with engine.connect() as connection:
        stored = {(row[0], row[1]): (row[2], row[3]) for row in connection.execute(query)}
    at = {seconds: datetime.fromtimestamp(seconds, UTC) for seconds in (7, 100)}
    assert {pair: rating for pair, (rating, _) in stored.items()} == {
        ("u1", "i1"): None,
        ("u1", "i2"): 2.0,
        ("u2", "i1"): 3.0,
        ("u3", "i3"): None,
    }
    assert utc(stored[("u3", "i3")][1]) == at[7]
    assert utc(stored[("u2", "i1")][1]) == at[100]
