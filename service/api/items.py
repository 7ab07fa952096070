"""Items: metadata by id (`PUT`/`GET /items/{item}`) and the paginated list."""

from __future__ import annotations

from datetime import UTC, datetime

from fastapi import APIRouter, Response, status

from service.api.auth import AUTH_RESPONSES, require_scope
from service.api.deps import ItemPath, SessionDep, WriteSessionDep
from service.api.pagination import (
    DEFAULT_LIMIT,
    CursorQuery,
    LimitQuery,
    decode_cursor,
    encode_cursor,
)
from service.api.schemas import ItemIn, ItemOut, ItemsPage
from service.db import queries
from service.db.keys import Scope
from service.db.tables import Item
from service.errors import NotFoundError

router = APIRouter(tags=["items"], responses=AUTH_RESPONSES)


def _item_out(item: Item) -> ItemOut:
    return ItemOut(
        item=item.external_id,
        title=item.title,
        tags=item.tags,
        attributes=item.attributes,
        updated_at=item.updated_at,
    )


@router.put(
    "/items/{item}",
    summary="Create an item or replace its metadata",
    dependencies=[require_scope(Scope.INGEST)],
    responses={201: {"model": ItemOut, "description": "item created"}},
)
def put_item(item: ItemPath, body: ItemIn, session: WriteSessionDep, response: Response) -> ItemOut:
    """Set title, tags and attributes (absent fields are cleared); 201 when the item is new."""
    stored, created = queries.put_item(
        session,
        item,
        title=body.title,
        tags=body.tags,
        attributes=body.attributes,
        now=datetime.now(UTC),
    )
    if created:
        response.status_code = status.HTTP_201_CREATED
    return _item_out(stored)


@router.get("/items/{item}", summary="An item's metadata", dependencies=[require_scope(Scope.READ)])
def get_item(item: ItemPath, session: SessionDep) -> ItemOut:
    """The item; 404 when no rating or PUT has created it."""
    stored = queries.get_item(session, item)
    if stored is None:
        raise NotFoundError(f"unknown item {item!r}")
    return _item_out(stored)


@router.get("/items", summary="All items, page by page", dependencies=[require_scope(Scope.READ)])
def list_items(
    session: SessionDep, limit: LimitQuery = DEFAULT_LIMIT, cursor: CursorQuery = None
) -> ItemsPage:
    """Items in a stable order; follow `next_cursor` until it is null."""
    rows = queries.list_items(session, limit=limit, after_id=decode_cursor("i", cursor))
    return ItemsPage(
        items=[_item_out(row) for row in rows],
        next_cursor=encode_cursor("i", rows[-1].id) if len(rows) == limit else None,
    )
