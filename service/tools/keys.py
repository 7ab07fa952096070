"""`mfserve keys create | list | revoke`: manage API keys from the command line."""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from service.config import Settings
from service.db.keys import ApiKey
from service.db.migrations import SchemaNotCurrentError, check_schema
from service.db.session import create_db_engine, make_sessionmaker, transaction
from service.domain import keys
from service.errors import ServiceError


def key_record(record: ApiKey) -> dict[str, Any]:
    """A key as JSON, without its secret (as `GET /admin/keys` lists it)."""
    return {
        "id": record.id,
        "name": record.name,
        "prefix": record.prefix,
        "scopes": record.scopes,
        "created_at": record.created_at.isoformat(),
        "last_used_at": None if record.last_used_at is None else record.last_used_at.isoformat(),
        "revoked_at": None if record.revoked_at is None else record.revoked_at.isoformat(),
    }


def run_keys_command(
    settings: Settings,
    action: str,
    *,
    name: str | None = None,
    scopes: Sequence[str] = (),
    key_id: int | None = None,
) -> int:
    """Create, list or revoke keys; prints JSON, returns the exit code (2: bad input)."""
    engine = create_db_engine(settings.database_url)
    try:
        check_schema(engine)
        now = datetime.now(UTC)
        with transaction(make_sessionmaker(engine, write=True)) as session:
            if action == "create":
                created = keys.create_key(session, name or "", scopes, now)
                reply: Any = {
                    "id": created.record.id,
                    "name": created.record.name,
                    "scopes": created.record.scopes,
                    "created_at": created.record.created_at.isoformat(),
                    "key": created.secret,
                }
            elif action == "list":
                reply = [key_record(record) for record in keys.list_keys(session)]
            else:
                assert key_id is not None
                reply = key_record(keys.revoke_key(session, key_id, now))
    except SchemaNotCurrentError as exc:
        print(f"mfserve: {exc}", file=sys.stderr)
        return 1
    except ServiceError as exc:
        print(f"mfserve: {json.dumps(exc.detail)}", file=sys.stderr)
        return 2
    finally:
        engine.dispose()
    print(json.dumps(reply, indent=2 if action == "list" else None))
    return 0
