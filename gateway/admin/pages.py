"""Keyset pagination for admin lists: `?limit=&cursor=`, newest changes never shift a page.

A list is ordered by (a sort column, id); the cursor is the last row's pair, base64url-encoded
and opaque to clients. A tampered cursor is a 422, not a 500."""

from __future__ import annotations

import base64
from datetime import UTC, datetime
from typing import Any, TypeVar

import orjson
from sqlalchemy import Select, and_, or_
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import InstrumentedAttribute

from gateway.admin.schemas import Page
from gateway.errors import InvalidRequest

Row = TypeVar("Row")
MAX_ID = 2**31  # integer ids are 32-bit columns


class BadCursor(InvalidRequest):
    status = 422
    code = "validation_error"


def _encode(sort_value: Any, row_id: Any) -> str:
    if isinstance(sort_value, datetime):
        sort_value = sort_value.isoformat()
    return base64.urlsafe_b64encode(orjson.dumps([sort_value, row_id])).decode().rstrip("=")


def _decode(cursor: str, is_time: bool) -> tuple[Any, Any]:
    try:
        padded = cursor + "=" * (-len(cursor) % 4)
        sort_value, row_id = orjson.loads(base64.urlsafe_b64decode(padded))
        if is_time:
            # (time, string id) as `_encode` wrote it; aware and in range, or the column's
            # converter would fail in the database layer (a 500, not a 422).
            sort_value = datetime.fromisoformat(sort_value)
            if sort_value.utcoffset() is None or not _is_text_id(row_id):
                raise ValueError("not a (time, id) cursor")
            sort_value = sort_value.astimezone(UTC)
        elif not (_is_int(sort_value) and _is_int(row_id)):
            raise ValueError("not an (id, id) cursor")
        return sort_value, row_id
    except (ValueError, TypeError, OverflowError, orjson.JSONDecodeError):
        raise BadCursor("cursor: not a cursor this API returned.", param="cursor") from None


def _is_int(value: Any) -> bool:
    return type(value) is int and abs(value) < MAX_ID


def _is_text_id(value: Any) -> bool:
    return isinstance(value, str) and "\x00" not in value


async def paginate(
    session: AsyncSession,
    statement: Select[tuple[Row]],
    sort: InstrumentedAttribute[Any],
    row_id: InstrumentedAttribute[Any],
    page: Page,
    *,
    is_time: bool = True,
) -> tuple[list[Row], str | None]:
    """One page of `statement`'s rows and the cursor of the next page (None at the end)."""
    if page.cursor:
        after_sort, after_id = _decode(page.cursor, is_time)
        statement = statement.where(
            or_(sort > after_sort, and_(sort == after_sort, row_id > after_id))
        )
    rows = list(
        (await session.scalars(statement.order_by(sort, row_id).limit(page.limit + 1))).all()
    )
    if len(rows) <= page.limit:
        return rows, None
    rows = rows[: page.limit]
    last = rows[-1]
    return rows, _encode(getattr(last, sort.key), getattr(last, row_id.key))
