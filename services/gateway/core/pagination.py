"""Cursor pagination over lists the services return whole.

Items are ordered by a stable key; the cursor is the key of the last item of a page, opaque to
clients (URL-safe base64 of it), so a page boundary survives inserts and deletes in between.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Callable, Sequence
from typing import Final, TypeVar

T = TypeVar("T")

DEFAULT_LIMIT: Final = 100
MAX_LIMIT: Final = 1000


class BadCursor(ValueError):
    """A cursor this gateway did not make."""


def encode_cursor(key: str) -> str:
    return base64.urlsafe_b64encode(key.encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> str:
    try:
        raw = base64.b64decode(cursor + "=" * (-len(cursor) % 4), altchars=b"-_", validate=True)
        return raw.decode()
    except (binascii.Error, UnicodeDecodeError, ValueError) as exc:
        raise BadCursor("cursor: not a cursor returned by this API") from exc


def paginate(
    items: Sequence[T], key: Callable[[T], str], *, limit: int, cursor: str | None
) -> tuple[list[T], str | None]:
    """The page after `cursor` (from the start when None) and the cursor of the next page."""
    ordered = sorted(items, key=key)
    if cursor is not None:
        after = decode_cursor(cursor)
        ordered = [item for item in ordered if key(item) > after]
    page = ordered[:limit]
    more = len(ordered) > limit
    return page, encode_cursor(key(page[-1])) if more and page else None
