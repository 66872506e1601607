"""Field types the edges share (the API's queries and bodies, typed-message files).

pydantic's lax mode reads a number as a date-time (``0`` is 1970-01-01), ``true`` as a
number, and takes any integer; here a date-time must be ISO 8601 text, a number must be
a number, and an integer must fit the database's (PostgreSQL ``integer``; SQLite raises
``OverflowError`` past 64 bits, which was a 500)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from pydantic import AwareDatetime, BeforeValidator

DB_INT_MAX = 2**31 - 1


def _iso_text(value: Any) -> Any:
    if isinstance(value, datetime):
        return value
    if not isinstance(value, str) or not value.strip() or value.strip().lstrip(
            "+-").replace(".", "", 1).isdigit():
        raise ValueError("an ISO 8601 date-time is needed, e.g. 2026-11-23T08:00:00+08:00")
    return value


def _number(value: Any) -> Any:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError("a number is needed")
    return value


IsoDateTime = Annotated[datetime, BeforeValidator(_iso_text)]
AwareIsoDateTime = Annotated[AwareDatetime, BeforeValidator(_iso_text)]
Number = Annotated[float, BeforeValidator(_number)]
