"""`mfserve import`: ratings files into the database through the API's validation and upsert."""

from __future__ import annotations

import queue
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import closing, suppress
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, cast

from sqlalchemy import Engine
from sqlalchemy.engine import make_url

from service.config import Settings
from service.db.migrations import SchemaNotCurrentError, check_schema
from service.db.postgres_prepared import PreparedRows
from service.db.session import (
    create_db_engine,
    make_sessionmaker,
    normalize_database_url,
    refresh_statistics,
    transaction,
)
from service.db.upsert import (
    RatingBatch,
    UpsertCounts,
    prepare_batch,
    prepare_columns,
    upsert_prepared,
    upsert_ratings,
)
from service.domain.ingest import (
    InvalidRatingsError,
    RatingRules,
    RowError,
    plain_epoch_columns,
    validate_columns,
)
from service.tools.ratings_file import (
    CsvColumns,
    FileLayout,
    ImportFailedError,
    RawChunk,
    count_lines,
    detect_format,
    file_layout,
    read_chunks,
)

__all__ = ["CsvColumns", "ImportFailedError", "ImportReport", "import_file", "run_import_command"]


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


def plain_rows(chunk: RawChunk, settings: Settings, now: datetime) -> PreparedRows | None:
    """A chunk made ready for PostgreSQL's prepared path when every row of it is valid and
    plain (epoch-second timestamps), else None (then `validate_chunk` names the problems).

    Event times stay integers instead of becoming datetimes.
    """
    if chunk.errors:
        return None
    rules = RatingRules.from_settings(settings, now)
    columns = plain_epoch_columns(chunk.users, chunk.items, chunk.ratings, chunk.timestamps, rules)
    if columns is None:
        return None
    users, items = cast(list[str], chunk.users), cast(list[str], chunk.items)
    return prepare_columns(users, items, *columns)


@dataclass
class _CheckedChunk:
    """A chunk as read and validated, ready to store (or to report)."""

    chunk: RawChunk
    batch: RatingBatch | PreparedRows
    """The chunk's valid rows, as validated or made ready for PostgreSQL."""
    errors: list[RowError]
    now: datetime


_READ_AHEAD = 2
"""Chunks read and validated ahead of the one being stored."""


class _CheckedChunks:
    """Chunks read, validated and prepared in a thread from construction on, ahead of the
    caller storing them; `close` stops the thread.

    Reading, validating and encoding is the importer's own CPU work; storing mostly waits
    for the database. Overlapping the two keeps both the importer and the database busy.
    """

    def __init__(
        self,
        path: Path,
        layout: FileLayout,
        settings: Settings,
        batch_size: int,
        dialect: str,
        *,
        skip_invalid: bool,
    ) -> None:
        self._handoff: queue.Queue[_CheckedChunk | BaseException | None] = queue.Queue(_READ_AHEAD)
        self._stop = threading.Event()

        def read() -> None:
            try:
                for chunk in read_chunks(path, layout, batch_size):
                    now = datetime.now(UTC)
                    rows = plain_rows(chunk, settings, now) if dialect == "postgresql" else None
                    if rows is not None:
                        checked = _CheckedChunk(chunk, rows, [], now)
                    else:
                        batch, errors = validate_chunk(
                            chunk, settings, now, skip_invalid=skip_invalid
                        )
                        prepare_batch(batch, dialect)
                        checked = _CheckedChunk(chunk, batch, errors, now)
                    if not self._hand(checked):
                        return
                self._hand(None)
            except BaseException as exc:  # handed to the caller, raised there
                self._hand(exc)

        self._reader = threading.Thread(target=read, name="mfserve-import-reader", daemon=True)
        self._reader.start()

    def _hand(self, item: _CheckedChunk | BaseException | None) -> bool:
        while not self._stop.is_set():
            try:
                self._handoff.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def __iter__(self) -> Iterator[_CheckedChunk]:
        while (item := self._handoff.get()) is not None:
            if isinstance(item, BaseException):
                raise item
            yield item

    def close(self) -> None:
        """Stop the reading thread (at once, if the caller stops early) and wait for it."""
        self._stop.set()
        self._reader.join()


class _NoProgress:
    """Stands in for the progress bar when it is hidden (tqdm is then not even imported)."""

    def __enter__(self) -> _NoProgress:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def update(self, rows: int) -> None:
        """Count rows done (nothing to show)."""


def _progress_bar(total: int, *, enabled: bool) -> Any:
    """A tqdm bar on stderr for `total` rows, or a stand-in that shows nothing."""
    if not enabled:
        return _NoProgress()
    from tqdm import tqdm

    return tqdm(total=total, unit=" rows", file=sys.stderr)


def _engine_options(url: str) -> dict[str, Any]:
    """The importer's engine options: on PostgreSQL, commits that do not wait for the disk.

    Each batch's commit would otherwise wait for its own WAL flush. `_make_durable` ends every
    import with one commit that does wait, and the WAL is flushed in order, so that every batch
    committed before it is on disk by the time `import_file` returns or raises.
    """
    if make_url(normalize_database_url(url)).get_backend_name() != "postgresql":
        return {}
    # One connection does every batch in turn: no liveness ping before each one.
    return {"connect_args": {"options": "-c synchronous_commit=off"}, "pool_pre_ping": False}


def _make_durable(engine: Engine) -> None:
    """Wait until everything this import committed is on disk (PostgreSQL; SQLite always is).

    A transaction with an id of its own writes a commit record; committing it synchronously
    flushes the WAL up to that record, and with it every earlier commit.
    """
    if engine.dialect.name != "postgresql":
        return
    with engine.begin() as connection:
        connection.exec_driver_sql("SET LOCAL synchronous_commit = on")
        connection.exec_driver_sql("SELECT txid_current()")


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
    engine = create_db_engine(settings.database_url, **_engine_options(settings.database_url))
    try:
        total = count_lines(path) - (1 if layout.header else 0) if progress else 0
        checked = _CheckedChunks(
            path, layout, settings, batch_size, engine.dialect.name, skip_invalid=skip_invalid
        )
        with closing(checked), _progress_bar(total, enabled=progress) as bar:
            check_schema(engine)  # while the first chunk is being read
            sessions = make_sessionmaker(engine, write=True)
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
                    if isinstance(batch, PreparedRows):
                        counts = upsert_prepared(session, batch, now=now)
                    else:
                        counts = upsert_ratings(session, batch, now=now)
                report.add(counts, len(batch))
                bar.update(len(chunk))
        refresh_statistics(engine)
    except BaseException:
        with suppress(Exception):  # the batches stored so far (the error says so) stay stored
            _make_durable(engine)
        raise
    else:
        _make_durable(engine)
    finally:
        engine.dispose()
    report.seconds = time.perf_counter() - started
    return report


def _dataset_file(settings: Settings) -> Path:
    """MovieLens 100K's ratings file, fetched into the cache if needed."""
    from service.tools.datasets import DatasetError, fetch_ml100k

    try:
        return fetch_ml100k(settings.cache_dir)
    except DatasetError as exc:
        raise ImportFailedError(str(exc)) from exc


def _dataset_metadata(settings: Settings) -> tuple[int, int]:
    """Load MovieLens 100K's item and user metadata; (items, users) described."""
    from service.tools.datasets import DatasetError
    from service.tools.movielens_metadata import import_ml100k_metadata

    try:
        return import_ml100k_metadata(settings)
    except DatasetError as exc:
        raise ImportFailedError(str(exc)) from exc


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
        source = _dataset_file(settings) if dataset else path
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
        described = _dataset_metadata(settings) if dataset else None
    except (
        ImportFailedError,
        SchemaNotCurrentError,
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
