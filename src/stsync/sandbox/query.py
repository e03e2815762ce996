"""Query parameters and paging as ServiceTitan's ASP.NET endpoints read them.

Names are case-insensitive, values are typed (a wrong type is a 400 naming the parameter),
unknown parameters are ignored, ``page`` ≥ 1, 1 ≤ ``pageSize`` ≤ 5000 (the largest size is
unconfirmed: the strict reading), ``ids`` at most 50, ``sort`` is ``+Field``/``-Field``.
Enum values (``jobStatus``, ``active``) must be spelt as the spec lists them: ``completed``
or ``any`` is a 400 (the strict reading; api/servicetitan.md §5.4: "validate …
case-sensitively").
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from stsync.sandbox.clock import to_ms
from stsync.sandbox.problems import VALIDATION_TITLE, fail
from stsync.sandbox.schemas import parse_query_datetime
from stsync.sandbox.server import Request

MAX_IDS = 50
MAX_PAGE_SIZE = 5000
DEFAULT_PAGE_SIZE = 50


class Query:
    """Query parameters as ASP.NET binds them: case-insensitive names, typed values, errors collected."""

    def __init__(self, request: Request) -> None:
        self._values = {key.lower(): values[0] for key, values in request.query.items() if values}
        self.errors: dict[str, list[str]] = {}

    def raw(self, name: str) -> str | None:
        value = self._values.get(name.lower())
        return value if value not in (None, "") else None

    def _bad(self, name: str, value: str, message: str | None = None) -> None:
        self.refuse(name, message or f"The value '{value}' is not valid for {name}.")

    def refuse(self, name: str, message: str) -> None:
        """Record an error about parameter ``name``; ``check()`` answers 400 with all of them."""
        messages = self.errors.setdefault(name, [])
        if message not in messages:
            messages.append(message)

    def integer(self, name: str, *, bits: int = 64) -> int | None:
        value = self.raw(name)
        if value is None:
            return None
        try:
            number = int(value)
        except ValueError:
            self._bad(name, value)
            return None
        limit = 2 ** (bits - 1)
        if not -limit <= number < limit:
            self._bad(name, value)
            return None
        return number

    def boolean(self, name: str) -> bool | None:
        value = self.raw(name)
        if value is None:
            return None
        lowered = value.lower()
        if lowered not in ("true", "false"):
            self._bad(name, value)
            return None
        return lowered == "true"

    def moment(self, name: str) -> int | None:
        value = self.raw(name)
        if value is None:
            return None
        parsed = parse_query_datetime(value)
        if parsed is None:
            self._bad(name, value)
            return None
        return to_ms(parsed)

    def ids(self, name: str = "ids") -> list[int] | None:
        value = self.raw(name)
        if value is None:
            return None
        found: list[int] = []
        for part in value.split(","):
            part = part.strip()
            if not part:
                continue
            try:
                found.append(int(part))
            except ValueError:
                self._bad(name, value)
                return None
        if len(found) > MAX_IDS:
            self._bad(name, value, f"The {name} parameter accepts at most {MAX_IDS} IDs.")
            return None
        return found

    def choice(self, name: str, options: Iterable[str]) -> str | None:
        value = self.raw(name)
        if value is None:
            return None
        choices = tuple(options)
        if value in choices:
            return value
        self._bad(name, value, f"The value '{value}' is not valid for {name}. Valid values: {', '.join(choices)}.")
        return None

    def sort(self, fields: dict[str, str]) -> tuple[str, bool] | None:
        """``+Field`` / ``-Field`` / ``Field`` → (record key, descending)."""
        value = self._values.get("sort")
        if value in (None, ""):
            return None
        descending = value.startswith("-")
        name = value[1:] if value[:1] in "+-" else value
        for field, key in fields.items():
            if field.lower() == name.lower():
                return key, descending
        self._bad("sort", value, f"The sort field '{value}' is not supported. Supported fields: {', '.join(fields)}.")
        return None

    def paging(self) -> tuple[int, int, bool]:
        page = self.integer("page", bits=32)
        page_size = self.integer("pageSize", bits=32)
        include_total = self.boolean("includeTotal")
        if page is not None and page < 1:
            self._bad("page", str(page), "The page must be 1 or greater.")
        if page_size is not None and not 1 <= page_size <= MAX_PAGE_SIZE:
            self._bad("pageSize", str(page_size), f"The pageSize must be between 1 and {MAX_PAGE_SIZE}.")
        return page or 1, page_size or DEFAULT_PAGE_SIZE, bool(include_total)

    def check(self) -> None:
        if self.errors:
            raise fail(400, VALIDATION_TITLE, self.errors)


def date_filter(query: Query, prefix: str, key: str) -> list[Callable[[dict], bool]]:
    """``{prefix}Before`` (exclusive) and ``{prefix}OnOrAfter`` (inclusive) on the ms ``key``."""
    tests: list[Callable[[dict], bool]] = []
    before = query.moment(f"{prefix}Before")
    on_or_after = query.moment(f"{prefix}OnOrAfter")
    if before is not None:
        tests.append(lambda record: record.get(key) is not None and record[key] < before)
    if on_or_after is not None:
        tests.append(lambda record: record.get(key) is not None and record[key] >= on_or_after)
    return tests


def page_of(rows: list[dict], page: int, page_size: int, include_total: bool, render: Callable[[dict], dict]) -> dict:
    start = (page - 1) * page_size
    chosen = rows[start : start + page_size]
    return {
        "page": page,
        "pageSize": page_size,
        "hasMore": start + page_size < len(rows),
        "totalCount": len(rows) if include_total else None,
        "data": [render(r) for r in chosen],
    }


def ordered(rows: list[dict], order: tuple[str, bool] | None) -> list[dict]:
    if order is None:
        return sorted(rows, key=lambda r: r["id"])
    key, descending = order
    return sorted(rows, key=lambda r: (r.get(key) is None, r.get(key) or 0, r["id"]), reverse=descending)
