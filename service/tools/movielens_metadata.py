"""MovieLens 100K's item and user metadata (from the same recbole wheel as the ratings): titles,
genres as tags and release year for items; age, gender and occupation for users. Read here, and
stored by `mfserve import --dataset ml-100k` after the ratings."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from sqlalchemy import Engine

from service.config import Settings
from service.db import queries
from service.db.session import create_db_engine, make_sessionmaker, transaction
from service.db.user_attributes import put_user_attributes
from service.tools.datasets import DatasetError, fetch_from_recbole_wheel

MEMBERS = {
    "ml-100k.item": "recbole/dataset_example/ml-100k/ml-100k.item",
    "ml-100k.user": "recbole/dataset_example/ml-100k/ml-100k.user",
}
"""Cached file name -> member of the recbole wheel."""


@dataclass(frozen=True)
class MovieMetadata:
    """One movie: title, genres and release year (None where the file has none)."""

    item: str
    title: str | None
    genres: list[str]
    year: int | None

    def attributes(self) -> dict[str, int]:
        """The item attributes stored for the movie."""
        return {} if self.year is None else {"year": self.year}


@dataclass(frozen=True)
class Metadata:
    """MovieLens 100K's movies and users' attributes, by their ids in the ratings."""

    movies: list[MovieMetadata]
    users: dict[str, dict[str, str | int]]


def fetch_metadata(cache_dir: Path) -> Path:
    """The folder holding ml-100k.item and ml-100k.user, downloading the wheel once."""
    return fetch_from_recbole_wheel(cache_dir / "ml-100k", MEMBERS)


def _rows(path: Path) -> list[dict[str, str]]:
    with path.open(encoding="utf-8", errors="replace") as handle:
        header = [c.split(":")[0] for c in handle.readline().rstrip("\n").split("\t")]
        return [
            dict(zip(header, line.rstrip("\n").split("\t"), strict=False))
            for line in handle
            if line.strip()
        ]


def read_metadata(folder: Path) -> Metadata:
    """Parse the cached ml-100k.item and ml-100k.user files."""
    try:
        movies = []
        for row in _rows(folder / "ml-100k.item"):
            year = row.get("release_year", "").strip()
            movies.append(
                MovieMetadata(
                    item=row["item_id"],
                    title=row.get("movie_title", "").strip() or None,
                    genres=list(dict.fromkeys(row.get("class", "").split())),
                    year=int(year) if year.isdigit() else None,
                )
            )
        users: dict[str, dict[str, str | int]] = {
            row["user_id"]: {
                "age": int(row["age"]),
                "gender": row["gender"],
                "occupation": row["occupation"],
            }
            for row in _rows(folder / "ml-100k.user")
        }
    except (KeyError, ValueError) as exc:
        raise DatasetError(f"{folder}: not RecBole's ml-100k metadata ({exc})") from exc
    return Metadata(movies=movies, users=users)


def store_metadata(engine: Engine, metadata: Metadata) -> tuple[int, int]:
    """Replace the movies' title, tags and attributes and the users' attributes, in one
    transaction; returns (items, users) stored."""
    now = datetime.now(UTC)
    with transaction(make_sessionmaker(engine, write=True)) as session:
        for movie in metadata.movies:
            queries.put_item(
                session,
                movie.item,
                title=movie.title,
                tags=movie.genres,
                attributes=movie.attributes(),
                now=now,
            )
        for user, attributes in metadata.users.items():
            put_user_attributes(session, user, dict(attributes), now=now)
    return len(metadata.movies), len(metadata.users)


def import_ml100k_metadata(settings: Settings) -> tuple[int, int]:
    """Fetch (once), read and store MovieLens 100K's metadata; returns (items, users)."""
    metadata = read_metadata(fetch_metadata(settings.cache_dir))
    engine = create_db_engine(settings.database_url)
    try:
        return store_metadata(engine, metadata)
    finally:
        engine.dispose()
