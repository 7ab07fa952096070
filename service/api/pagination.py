"""Opaque cursors for keyset pagination, and the query parameters that carry them."""

from __future__ import annotations

import base64
import binascii
from typing import Annotated

from fastapi import Query

from service.db.tables import MAX_ROW_ID
from service.errors import InvalidInputError

DEFAULT_LIMIT = 100
"""Page size of the ratings and items lists when `limit` is not given."""

MAX_LIMIT = 1000

LimitQuery = Annotated[int, Query(ge=1, le=MAX_LIMIT, description=f"page size, 1 to {MAX_LIMIT}")]
CursorQuery = Annotated[
    str | None, Query(max_length=200, description="`next_cursor` of the previous page")
]


def encode_cursor(kind: str, last_id: int) -> str:
    """An opaque cursor that continues after `last_id` in a list of `kind`."""
    return base64.urlsafe_b64encode(f"{kind}:{last_id}".encode()).decode().rstrip("=")


def decode_cursor(kind: str, cursor: str | None) -> int | None:
    """The id a cursor continues after (None: first page); 422 for a foreign or broken one."""
    if cursor is None:
        return None
    try:
        text = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        prefix, _, value = text.partition(":")
        if prefix == kind and value.isascii() and value.isdecimal() and len(value) <= 10:
            last_id = int(value)
            if last_id <= MAX_ROW_ID:
                return last_id
    except (binascii.Error, UnicodeDecodeError, ValueError):
        pass
    raise InvalidInputError([{"field": "cursor", "message": "not a cursor of this list"}])
