"""Page filters from user input (status, host, content type, depth, since, URL pattern) → one SQL WHERE clause."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from crawler.errors import UsageError

_STATUS_CLASS = re.compile(r"([1-5])xx", re.IGNORECASE)
_AGE = re.compile(r"(\d+(?:\.\d+)?)\s*([smhdw])", re.IGNORECASE)
_AGE_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}
# The media type of a Content-Type value: "Text/HTML; charset=utf-8" → "text/html".
MEDIA_TYPE_SQL = "lower(trim(substr(p.content_type, 1, instr(p.content_type || ';', ';') - 1)))"
MEDIA_TYPE_PG = "lower(trim(split_part(p.content_type, ';', 1)))"


@dataclass(frozen=True, slots=True)
class PageFilter:
    """Validated filters on `pages`; every field None means every page."""

    status: tuple[int, int] | None = None  # inclusive range: 200 → (200, 200), 4xx → (400, 499)
    host: str | None = None  # "example.com" (any port) or "example.com:8080"
    content_type: str | None = None  # media type "text/html", or a family "image/*"
    depth: int | None = None
    since: str | None = None  # fetched at or after this time, ISO-8601 UTC like fetched_at
    url_like: str | None = None  # SQL LIKE pattern (case-insensitive); without % it matches a substring

    @classmethod
    def build(
        cls,
        *,
        status: int | str | None = None,
        host: str | None = None,
        content_type: str | None = None,
        depth: int | str | None = None,
        since: str | datetime | None = None,
        url_like: str | None = None,
        now: datetime | None = None,
    ) -> PageFilter:
        """Check and normalise user input; a bad value raises UsageError naming the filter."""
        return cls(
            status=None if status is None else parse_status(status),
            host=None if host is None else _nonempty("host", host).lower(),
            content_type=None if content_type is None else _nonempty("content type", content_type).lower(),
            depth=None if depth is None else _parse_depth(depth),
            since=None if since is None else parse_since(since, now=now),
            url_like=None if url_like is None else _nonempty("url pattern", url_like),
        )

    def sql(self, dialect: str = "sqlite") -> tuple[str, list[Any]]:
        """A WHERE clause over `pages p` (or "" when nothing is filtered) and its `?` parameters.

        dialect "postgresql" says the same in PostgreSQL: its LIKE is case-sensitive, SQLite's is not.
        """
        media_type = MEDIA_TYPE_PG if dialect == "postgresql" else MEDIA_TYPE_SQL
        like = "ILIKE" if dialect == "postgresql" else "LIKE"
        terms: list[str] = []
        params: list[Any] = []
        if self.status is not None:
            terms.append("p.status BETWEEN ? AND ?")
            params += self.status
        if self.host is not None:
            terms.append(
                "EXISTS (SELECT 1 FROM urls u WHERE u.id = p.url_id AND (u.host = ? OR u.host LIKE ? ESCAPE '\\'))"
            )
            params += [self.host, _escape_like(self.host) + ":%"]
        if self.content_type is not None:
            family = self.content_type.removesuffix("*")
            if family.endswith("/"):
                terms.append(f"{media_type} LIKE ? ESCAPE '\\'")
                params.append(_escape_like(family) + "%")
            else:
                terms.append(f"{media_type} = ?")
                params.append(self.content_type)
        if self.depth is not None:
            terms.append("p.depth = ?")
            params.append(self.depth)
        if self.since is not None:
            terms.append("p.fetched_at >= ?")
            params.append(self.since)
        if self.url_like is not None:
            pattern = self.url_like if "%" in self.url_like else f"%{self.url_like}%"
            terms.append(f"p.url {like} ?")
            params.append(pattern)
        return ("WHERE " + " AND ".join(terms) if terms else ""), params


def parse_status(value: int | str) -> tuple[int, int]:
    text = str(value).strip()
    match = _STATUS_CLASS.fullmatch(text)
    if match:
        base = int(match.group(1)) * 100
        return base, base + 99
    if text.isdigit() and 100 <= int(text) <= 599:
        return int(text), int(text)
    raise UsageError(f"status {text!r} is neither an HTTP status like 200 nor a class like 4xx")


def parse_since(value: str | datetime, *, now: datetime | None = None) -> str:
    """An ISO-8601 time (no offset means UTC) or an age like 30m, 2h, 7d → the stored time format."""
    if isinstance(value, datetime):
        moment = value
    else:
        text = value.strip()
        age = _AGE.fullmatch(text)
        if age:
            delta = timedelta(**{_AGE_UNITS[age.group(2).lower()]: float(age.group(1))})
            moment = (now or datetime.now(UTC)) - delta
        else:
            try:
                moment = datetime.fromisoformat(text)
            except ValueError:
                raise UsageError(
                    f"since {text!r} is neither an ISO-8601 time like 2024-05-01 or 2024-05-01T12:00Z"
                    " nor an age like 30m, 2h or 7d"
                ) from None
    moment = moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _parse_depth(value: int | str) -> int:
    text = str(value).strip()
    if not text.isdigit():
        raise UsageError(f"depth {text!r} is not a whole number >= 0")
    return int(text)


def _nonempty(name: str, value: str) -> str:
    if not value.strip():
        raise UsageError(f"the {name} filter is empty")
    return value.strip()


def _escape_like(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
