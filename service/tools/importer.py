"""`mfserve import`: ratings files into the database through the API's validation and upsert."""

from __future__ import annotations

import csv
import queue
import sys
import threading
import time
from collections.abc import Generator, Iterator
from contextlib import closing
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from tqdm import tqdm

from service.config import Settings
from service.db.migrations import SchemaNotCurrentError, check_schema
from service.db.session import (
    create_db_engine,
    make_sessionmaker,
    refresh_statistics,
    transaction,
)
from service.db.upsert import RatingBatch, UpsertCounts, prepare_batch, upsert_ratings
from service.domain.ingest import InvalidRatingsError, RatingRules, RowError, validate_columns
from service.tools.datasets import DatasetError, fetch_ml100k
from service.tools.movielens_metadata import import_ml100k_metadata


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


@dataclass
class ImportReport:
    """What an import did."""

    rows: int = 0
    inserted: int = 0
    updated: int = 0
    ignored: int = 0
    skipped: int = 0
    seconds: float = 0.0

    def add(self, counts: UpsertCounts, rows: int) -> None:
        """Account for one stored batch."""
        self.rows += rows
        self.inserted += counts.inserted
        self.updated += counts.updated
        self.ignored += counts.ignored


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


def validate_chunk(
    chunk: RawChunk, settings: Settings, now: datetime, *, skip_invalid: bool
) -> tuple[RatingBatch, list[RowError]]:
    """The valid batch of a chunk and its errors (by file line); bad rows dropped if asked."""
    rules = RatingRules.from_settings(settings, now)
    columns = (chunk.users, chunk.items, chunk.ratings, chunk.timestamps)
    try:
        batch = validate_columns(*columns, rules, now=now, errors=list(chunk.errors))
        return batch, []
    except InvalidRatingsError as exc:
        errors = [RowError(chunk.lines[e.row], e.field, e.message) for e in exc.errors]
        if not skip_invalid:
            return RatingBatch(), errors
        bad = {e.row for e in exc.errors}
        keep = [i for i in range(len(chunk)) if i not in bad]
        users, items, ratings, timestamps = ([column[i] for i in keep] for column in columns)
        return validate_columns(users, items, ratings, timestamps, rules, now=now), errors


def count_lines(path: Path) -> int:
    """Newlines in a file (for the progress bar's total)."""
    lines = 0
    with path.open("rb") as handle:
        while block := handle.read(1 << 20):
            lines += block.count(b"\n")
    return lines


@dataclass
class _CheckedChunk:
    """A chunk as read and validated, ready to store (or to report)."""

    chunk: RawChunk
    batch: RatingBatch
    errors: list[RowError]
    now: datetime


_READ_AHEAD = 2
"""Chunks read and validated ahead of the one being stored."""


def _checked_chunks(
    path: Path,
    layout: FileLayout,
    settings: Settings,
    batch_size: int,
    dialect: str,
    *,
    skip_invalid: bool,
) -> Generator[_CheckedChunk]:
    """Read, validate and prepare chunks in a thread, ahead of the caller storing them.

    Reading, validating and encoding is the importer's own CPU work; storing mostly waits
    for the database. Overlapping the two keeps both the importer and the database busy.
    """
    handoff: queue.Queue[_CheckedChunk | BaseException | None] = queue.Queue(_READ_AHEAD)
    stop = threading.Event()

    def hand(item: _CheckedChunk | BaseException | None) -> bool:
        while not stop.is_set():
            try:
                handoff.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def read() -> None:
        try:
            for chunk in read_chunks(path, layout, batch_size):
                now = datetime.now(UTC)
                batch, errors = validate_chunk(chunk, settings, now, skip_invalid=skip_invalid)
                prepare_batch(batch, dialect)
                if not hand(_CheckedChunk(chunk, batch, errors, now)):
                    return
            hand(None)
        except BaseException as exc:  # handed to the caller, raised there
            hand(exc)

    reader = threading.Thread(target=read, name="mfserve-import-reader", daemon=True)
    reader.start()
    try:
        while (item := handoff.get()) is not None:
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        reader.join()


def import_file(
    path: Path,
    layout: FileLayout,
    settings: Settings,
    *,
    batch_size: int = 10_000,
    skip_invalid: bool = False,
    progress: bool = True,
) -> ImportReport:
    """Import a file batch by batch, one transaction each; raise ImportFailedError on bad rows.

    Batches before a bad one stay stored (each is all-or-nothing, like a `POST /ratings`).
    """
    report = ImportReport()
    started = time.perf_counter()
    engine = create_db_engine(settings.database_url)
    try:
        check_schema(engine)
        sessions = make_sessionmaker(engine, write=True)
        total = count_lines(path) - (1 if layout.header else 0)
        checked = _checked_chunks(
            path, layout, settings, batch_size, engine.dialect.name, skip_invalid=skip_invalid
        )
        with (
            closing(checked),
            tqdm(total=total, unit=" rows", disable=not progress, file=sys.stderr) as bar,
        ):
            for item in checked:
                chunk, batch, errors, now = item.chunk, item.batch, item.errors, item.now
                if errors and not skip_invalid:
                    shown = "\n".join(
                        f"  line {e.row}, {e.field or 'row'}: {e.message}" for e in errors[:20]
                    )
                    more = f"\n  … and {len(errors) - 20} more" if len(errors) > 20 else ""
                    raise ImportFailedError(
                        f"{path}: {len(errors)} invalid field(s) in the batch starting at line "
                        f"{chunk.lines[0]}; {report.rows} rows before it were stored "
                        f"(use --skip-invalid to skip bad rows):\n{shown}{more}"
                    )
                report.skipped += len(chunk) - len(batch)
                with transaction(sessions) as session:
                    counts = upsert_ratings(session, batch, now=now)
                report.add(counts, len(batch))
                bar.update(len(chunk))
        refresh_statistics(engine)
    finally:
        engine.dispose()
    report.seconds = time.perf_counter() - started
    return report


def run_import_command(
    settings: Settings,
    *,
    path: Path | None,
    dataset: str | None,
    fmt: str = "auto",
    columns: CsvColumns | None = None,
    batch_size: int = 10_000,
    skip_invalid: bool = False,
    progress: bool = True,
) -> int:
    """`mfserve import PATH | --dataset ml-100k`: returns the exit code."""
    try:
        source = fetch_ml100k(settings.cache_dir) if dataset else path
        if source is None or not source.is_file():
            raise ImportFailedError(f"{source}: no such file")
        if fmt == "auto":
            fmt = detect_format(source)
        if batch_size < 1:
            raise ImportFailedError("--batch-size must be at least 1")
        report = import_file(
            source,
            file_layout(fmt, columns or CsvColumns()),
            settings,
            batch_size=batch_size,
            skip_invalid=skip_invalid,
            progress=progress,
        )
        described = import_ml100k_metadata(settings) if dataset else None
    except (
        ImportFailedError,
        SchemaNotCurrentError,
        DatasetError,
        UnicodeDecodeError,
        OSError,
    ) as exc:
        print(f"mfserve import: {exc}", file=sys.stderr)
        return 1
    rate = report.rows / report.seconds if report.seconds > 0 else 0.0
    print(
        f"imported {report.rows} ratings from {source} ({fmt}): {report.inserted} inserted, "
        f"{report.updated} updated, {report.ignored} ignored, {report.skipped} invalid skipped; "
        f"{report.seconds:.2f} s, {rate:,.0f} ratings/s"
    )
    if described is not None:
        print(f"loaded the metadata of {described[0]} items and {described[1]} users")
    return 0
