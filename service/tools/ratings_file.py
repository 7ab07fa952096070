"""Ratings files as `mfserve import` reads them: formats, column layouts, chunks of raw rows."""

from __future__ import annotations

import csv
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from service.domain.ingest import RowError


class ImportFailedError(RuntimeError):
    """A file cannot be imported (unreadable, unknown layout, or invalid rows)."""


@dataclass(frozen=True)
class CsvColumns:
    """Where a generic CSV file keeps each field (`mfserve import --format csv` options)."""

    delimiter: str = ","
    user: str = "user"
    item: str = "item"
    rating: str = "rating"
    timestamp: str = "timestamp"


@dataclass(frozen=True)
class FileLayout:
    """How to read a ratings file: delimiter, header, and which columns hold what."""

    delimiter: str
    header: bool
    user: str | int
    item: str | int
    rating: str | int | None
    timestamp: str | int | None


@dataclass
class RawChunk:
    """Up to a batch of rows as read: numbers converted, conversion errors noted by offset."""

    lines: list[int] = field(default_factory=list)
    """The file line of each row."""
    users: list[object] = field(default_factory=list)
    items: list[object] = field(default_factory=list)
    ratings: list[object] = field(default_factory=list)
    timestamps: list[object] = field(default_factory=list)
    errors: list[RowError] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.users)


def detect_format(path: Path) -> str:
    """The format of a ratings file from its name and first line."""
    if path.name == "u.data":
        return "ml100k-udata"
    if path.suffix == ".inter":
        return "recbole-inter"
    with path.open(encoding="utf-8", newline="") as handle:
        first = handle.readline()
    if first.replace(" ", "").lower().startswith("userid,movieid,rating"):
        return "movielens-csv"
    return "csv"


def file_layout(fmt: str, columns: CsvColumns) -> FileLayout:
    """The layout of a format; generic CSV takes its columns and delimiter from `columns`."""
    if fmt == "movielens-csv":
        return FileLayout(",", True, "userId", "movieId", "rating", "timestamp")
    if fmt == "ml100k-udata":
        return FileLayout("\t", False, 0, 1, 2, 3)
    if fmt == "recbole-inter":
        return FileLayout("\t", True, "user_id", "item_id", "rating", "timestamp")
    return FileLayout(
        columns.delimiter, True, columns.user, columns.item, columns.rating, columns.timestamp
    )


def _column_index(header: list[str], name: str | int | None, *, required: bool) -> int | None:
    if name is None or isinstance(name, int):
        return name
    # RecBole headers carry types ("user_id:token"); match the name before the colon too.
    names = [column.strip() for column in header]
    bare = [column.split(":", 1)[0] for column in names]
    for candidates in (names, bare):
        if name in candidates:
            return candidates.index(name)
    if required:
        raise ImportFailedError(f"no column {name!r} in the header {', '.join(names)}")
    return None


def read_chunks(path: Path, layout: FileLayout, batch_size: int) -> Iterator[RawChunk]:
    """Rows of a file in chunks of `batch_size`, numbers converted, line numbers kept."""
    with path.open(encoding="utf-8", newline="") as handle:
        reader = csv.reader(handle, delimiter=layout.delimiter)
        header = next(reader, []) if layout.header else []
        user = _column_index(header, layout.user, required=True)
        item = _column_index(header, layout.item, required=True)
        rating = _column_index(header, layout.rating, required=False)
        stamp = _column_index(header, layout.timestamp, required=False)
        assert user is not None
        assert item is not None
        width = max(i for i in (user, item, rating, stamp) if i is not None) + 1
        chunk = RawChunk()
        lines, users, items = chunk.lines, chunk.users, chunk.items
        ratings, timestamps, errors = chunk.ratings, chunk.timestamps, chunk.errors
        for row in reader:
            if not row:
                continue
            offset = len(users)
            lines.append(reader.line_num)
            if len(row) < width:
                message = f"expected at least {width} columns, got {len(row)}"
                errors.append(RowError(offset, "", message))
                row = row + [""] * (width - len(row))
            users.append(row[user])
            items.append(row[item])
            value: object = None
            if rating is not None and (text := row[rating].strip()):
                try:
                    value = float(text)
                except ValueError:
                    errors.append(RowError(offset, "rating", f"not a number: {text[:64]!r}"))
            ratings.append(value)
            value = None
            if stamp is not None and (text := row[stamp].strip()):
                try:
                    value = int(text)
                except ValueError:
                    try:
                        value = float(text)
                    except ValueError:
                        value = text  # ISO 8601, or nonsense for the shared validator to name
            timestamps.append(value)
            if offset + 1 >= batch_size:
                yield chunk
                chunk = RawChunk()
                lines, users, items = chunk.lines, chunk.users, chunk.items
                ratings, timestamps, errors = chunk.ratings, chunk.timestamps, chunk.errors
        if len(chunk):
            yield chunk


def count_lines(path: Path) -> int:
    """Newlines in a file (for the progress bar's total)."""
    lines = 0
    with path.open("rb") as handle:
        while block := handle.read(1 << 20):
            lines += block.count(b"\n")
    return lines
