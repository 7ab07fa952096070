"""Cursor-paginated lists as iterators: every item across pages, or the pages themselves."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Generic, TypeVar

from mfserve_client.models import Page

T = TypeVar("T")


class Pager(Generic[T]):
    """Iterates over every item of a list, fetching a page whenever the previous one is used up.

    Nothing is fetched before iteration starts; each iteration starts again from `cursor`.
    """

    def __init__(self, fetch: Callable[[str | None], Page[T]], cursor: str | None = None) -> None:
        self._fetch = fetch
        self._cursor = cursor

    def pages(self) -> Iterator[Page[T]]:
        """The pages, in order, until one has no `next_cursor`."""
        cursor = self._cursor
        while True:
            page = self._fetch(cursor)
            yield page
            if page.next_cursor is None:
                return
            cursor = page.next_cursor

    def __iter__(self) -> Iterator[T]:
        for page in self.pages():
            yield from page.items

    def to_list(self) -> list[T]:
        """Every item, fetching every page."""
        return list(self)


class AsyncPager(Generic[T]):
    """`Pager` of `AsyncClient`: `async for item in pager` or `async for page in pager.pages()`."""

    def __init__(
        self, fetch: Callable[[str | None], Awaitable[Page[T]]], cursor: str | None = None
    ) -> None:
        self._fetch = fetch
        self._cursor = cursor

    async def pages(self) -> AsyncIterator[Page[T]]:
        """The pages, in order, until one has no `next_cursor`."""
        cursor = self._cursor
        while True:
            page = await self._fetch(cursor)
            yield page
            if page.next_cursor is None:
                return
            cursor = page.next_cursor

    async def __aiter__(self) -> AsyncIterator[T]:
        async for page in self.pages():
            for item in page.items:
                yield item

    async def to_list(self) -> list[T]:
        """Every item, fetching every page."""
        return [item async for item in self]
