"""Cursor pagination (a page token, a next-page URL) with the guards every provider needs: a cursor
returned twice is a loop (MalformedPayloadError), and more than `max_pages` pages is refused."""

from __future__ import annotations

from collections.abc import Callable, Iterator

from mdpipeline.providers.base import ProviderError
from mdpipeline.providers.errors import MalformedPayloadError
from mdpipeline.providers.http import HttpResult


def paginate(provider: str, fetch: Callable[[str | None], HttpResult],
             next_cursor: Callable[[HttpResult], str | None], *, max_pages: int, where: str,
             cursor_name: str = "cursor", shown: Callable[[str], str] = str) -> Iterator[HttpResult]:
    """Every page of one request: `fetch(None)` first, then `fetch(cursor)` while `next_cursor` (which
    also checks the page is the documented document) names one. `where` names the request in errors;
    `shown` redacts a cursor for them."""
    seen: set[str] = set()
    cursor: str | None = None
    for page in range(max_pages):
        result = fetch(cursor)
        yield result
        cursor = next_cursor(result)
        if cursor is None:
            return
        if cursor in seen:
            raise MalformedPayloadError(f"{provider}: {cursor_name} {shown(cursor)!r} returned again after page "
                                        f"{page} of {where}: pagination loop, stopped")
        seen.add(cursor)
    raise ProviderError(f"{provider}: {where} has more than {max_pages} pages (option max_pages)")


__all__ = ["paginate"]
