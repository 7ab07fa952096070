"""Command line: `mfserve api | worker | migrate | import | train | keys` (`python -m service`).

Each command imports its layer only when it runs, so `mfserve --help` and `mfserve migrate`
do not load torch.
"""

from __future__ import annotations

import argparse
import json
import signal
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from types import FrameType

from service.config import Settings, SettingsError, load_settings

IMPORT_FORMATS = ("movielens-csv", "ml100k-udata", "recbole-inter", "csv")
"""File formats `mfserve import --format` names (`auto` picks one from the file)."""

WORKER_STOP_TIMEOUT = 30.0
"""Seconds the worker child of `mfserve api --with-worker` gets to finish after SIGTERM."""


def _parse_json_object(text: str) -> dict[str, object]:
    value = json.loads(text)
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError("--config must be a JSON object")
    return value


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of every subcommand."""
    parser = argparse.ArgumentParser(prog="mfserve", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    api = commands.add_parser("api", help="serve the HTTP API")
    api.add_argument("--host", help="interface to bind (MFSERVE_HOST)")
    api.add_argument("--port", type=int, help="TCP port (MFSERVE_PORT)")
    api.add_argument(
        "--with-worker",
        action="store_true",
        help="also start the training worker as a child process (what `make run` does)",
    )

    worker = commands.add_parser("worker", help="run the background training worker")
    worker.add_argument("--once", action="store_true", help="run at most one job, then exit")

    commands.add_parser("migrate", help="upgrade the database schema to the newest revision")

    importer = commands.add_parser("import", help="load ratings from a file into the database")
    source = importer.add_mutually_exclusive_group(required=True)
    source.add_argument("path", nargs="?", type=Path, help="ratings file to import")
    source.add_argument("--dataset", choices=["ml-100k"], help="download and import a dataset")
    importer.add_argument(
        "--format",
        choices=["auto", *IMPORT_FORMATS],
        default="auto",
        help="file format (auto: from the file name and header)",
    )
    importer.add_argument("--user-column", default="user", help="generic CSV: user id column")
    importer.add_argument("--item-column", default="item", help="generic CSV: item id column")
    importer.add_argument("--rating-column", default="rating", help="generic CSV: rating column")
    importer.add_argument(
        "--timestamp-column", default="timestamp", help="generic CSV: timestamp column"
    )
    importer.add_argument("--delimiter", default=",", help="generic CSV: field delimiter")
    importer.add_argument("--batch-size", type=int, default=10_000, help="rows per transaction")
    importer.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    importer.add_argument(
        "--skip-invalid", action="store_true", help="skip invalid rows instead of stopping"
    )

    keys = commands.add_parser("keys", help="create, list or revoke API keys")
    key_actions = keys.add_subparsers(dest="key_action", required=True)
    create = key_actions.add_parser("create", help="create a key; prints its secret once")
    create.add_argument("--name", required=True, help="what the key is for")
    create.add_argument(
        "--scope",
        dest="scopes",
        action="extend",
        nargs="+",
        required=True,
        choices=["ingest", "read", "serve", "admin"],
        help="scopes granted (admin implies all)",
    )
    key_actions.add_parser("list", help="list keys (never their secrets)")
    revoke = key_actions.add_parser("revoke", help="revoke a key on every API process")
    revoke.add_argument("key_id", type=int, metavar="ID", help="the key's id")

    train = commands.add_parser("train", help="train and evaluate a model offline")
    train.add_argument("--dataset", choices=["ml-100k"], default="ml-100k")
    train.add_argument("--model", required=True, help="model name, e.g. als-biased")
    train.add_argument("--config", type=_parse_json_object, default={}, help="config as JSON")
    train.add_argument("--seed", type=int, default=42, help="split and training seed")
    train.add_argument("--output", type=Path, help="save the trained model into this directory")
    return parser


def start_worker() -> subprocess.Popen[bytes]:
    """Start `python -m service worker` as a child process (it reads the same environment)."""
    return subprocess.Popen([sys.executable, "-m", "service", "worker"])


def stop_worker(worker: subprocess.Popen[bytes]) -> None:
    """Ask the worker to stop, and kill it if it does not within WORKER_STOP_TIMEOUT."""
    if worker.poll() is not None:
        return
    worker.terminate()
    try:
        worker.wait(WORKER_STOP_TIMEOUT)
    except subprocess.TimeoutExpired:
        worker.kill()
        worker.wait()


def _exit_on_signal(signum: int, _frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)


def run_api(
    settings: Settings,
    *,
    host: str | None = None,
    port: int | None = None,
    with_worker: bool = False,
) -> int:
    """Serve the API until interrupted; returns the exit code (1: schema not migrated)."""
    import uvicorn

    from service.app import create_app
    from service.db.migrations import SchemaNotCurrentError, check_schema
    from service.db.session import create_db_engine
    from service.domain.training import default_model_problem

    problem = default_model_problem(settings)
    if problem is not None:
        print(f"mfserve: {problem}", file=sys.stderr)
        return 2
    engine = create_db_engine(settings.database_url)
    try:
        check_schema(engine)
    except SchemaNotCurrentError as exc:
        print(f"mfserve: {exc}", file=sys.stderr)
        return 1
    finally:
        engine.dispose()
    worker = start_worker() if with_worker else None
    if worker is not None:
        # uvicorn re-raises SIGTERM/SIGINT after its graceful shutdown with the handlers it found
        # at start; with the default SIGTERM action that would end this process before `finally`
        # stops the worker, leaving it orphaned. A Python handler turns it into SystemExit.
        signal.signal(signal.SIGTERM, _exit_on_signal)
    try:
        config = uvicorn.Config(
            create_app(settings),
            host=host or settings.host,
            port=port or settings.port,
            log_level=settings.log_level,
            access_log=settings.access_log,
        )
        server = uvicorn.Server(config)
        server.run()
        return 0 if server.started else 1
    finally:
        if worker is not None:
            stop_worker(worker)


def run(args: argparse.Namespace, settings: Settings) -> int:
    """Dispatch a parsed command line; returns the process exit code."""
    if args.command == "api":
        return run_api(settings, host=args.host, port=args.port, with_worker=args.with_worker)
    if args.command == "worker":
        from service.worker.loop import run_worker

        return run_worker(settings, once=args.once)
    if args.command == "migrate":
        from service.db.migrations import upgrade_to_head

        upgrade_to_head(settings.database_url)
        return 0
    if args.command == "import":
        from service.tools.importer import CsvColumns, run_import_command

        return run_import_command(
            settings,
            path=args.path,
            dataset=args.dataset,
            fmt=args.format,
            columns=CsvColumns(
                delimiter=args.delimiter,
                user=args.user_column,
                item=args.item_column,
                rating=args.rating_column,
                timestamp=args.timestamp_column,
            ),
            batch_size=args.batch_size,
            skip_invalid=args.skip_invalid,
            progress=not args.no_progress,
        )
    if args.command == "keys":
        from service.tools.keys import run_keys_command

        return run_keys_command(
            settings,
            args.key_action,
            name=getattr(args, "name", None),
            scopes=getattr(args, "scopes", ()),
            key_id=getattr(args, "key_id", None),
        )
    if args.command == "train":
        from service.tools.offline import run_train_command

        return run_train_command(
            settings,
            dataset=args.dataset,
            model_name=args.model,
            config=args.config,
            seed=args.seed,
            output=args.output,
        )
    raise AssertionError(f"unhandled command {args.command}")


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `mfserve` script."""
    args = build_parser().parse_args(argv)
    try:
        settings = load_settings()
    except SettingsError as exc:
        print(f"mfserve: {exc}", file=sys.stderr)
        return 2
    return run(args, settings)


if __name__ == "__main__":
    sys.exit(main())
