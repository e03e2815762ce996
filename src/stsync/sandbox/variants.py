"""Variants: readings of the API contracts that the record allows besides the sandbox's default.

``api/servicetitan.md`` and ``api/referral-factory.md`` §11 list behaviours that are
unconfirmed either way. The default sandbox plays the documented contract (with its strict
readings, see the docstrings of ``servicetitan.py`` and ``referralfactory.py``); a
``Variants`` value switches on the other readings, one field each, so that a client can be
tested against every one of them. ``docs/sandbox.md`` lists them with their sources.

``Variants`` is a frozen value, replaced whole (``Sandbox(variants=…)``,
``Sandbox.set_variants``, ``PUT /_sandbox/variants``); every field takes effect on the next
request. ``Variants.parse(["rf-cursor-paging", "lookup-lag=5"])`` reads the names that
``stsync sandbox --variant`` takes (``NAMES`` is the closed set, with one line each).
"""

from __future__ import annotations

import threading
from dataclasses import asdict, dataclass, fields, replace
from typing import Any

ST_429_STYLES = ("retry-after", "apim-body", "bare")
EVERY = "every"


@dataclass(frozen=True)
class Variants:
    # Referral Factory
    rf_cursor_paging: bool = False
    rf_search_refuses_type: bool = False
    rf_search_max_per_page: int | None = None
    rf_mixed_meta: bool = False
    # both services
    lookup_lag_seconds: float = 0.0
    html_route_404: bool = False
    # ServiceTitan
    st_429: str = "retry-after"
    st_gateway_401: bool = False
    token_per_minute: int | None = None
    refuse_invalid_existing_custom_fields: bool = False

    def __post_init__(self) -> None:
        if self.st_429 not in ST_429_STYLES:
            raise ValueError(f"Variants.st_429 must be one of {', '.join(ST_429_STYLES)}, not {self.st_429!r}")
        if self.lookup_lag_seconds < 0:
            raise ValueError("Variants.lookup_lag_seconds must not be negative")
        for name in ("rf_search_max_per_page", "token_per_minute"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise ValueError(f"Variants.{name} must be a whole number of at least 1, or None")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> Variants:
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown variant setting(s): {', '.join(sorted(unknown))}")
        return cls(**data)

    @classmethod
    def every(cls, **overrides: Any) -> Variants:
        """Every variant switched on at once (each at its bare ``--variant NAME`` value)."""
        every = cls(**{field: on_value for field, on_value, _ in NAMES.values()})
        return replace(every, **overrides)

    def names(self) -> list[str]:
        """This value as ``--variant`` arguments (the inverse of ``parse``)."""
        out = []
        default = Variants()
        for name, (field, on_value, _) in NAMES.items():
            value = getattr(self, field)
            if value == getattr(default, field):
                continue
            out.append(name if value == on_value else f"{name}={value}")
        return out

    @classmethod
    def parse(cls, names: list[str] | tuple[str, ...]) -> Variants:
        """``["rf-cursor-paging", "lookup-lag=5", "st-429=bare"]`` → a ``Variants``.

        A bare name takes the value listed in ``NAMES``; ``NAME=VALUE`` sets another one;
        ``every`` switches every variant on (the other items then adjust it). Raises
        ``ValueError`` naming the offending item."""
        changes: dict[str, Any] = {}
        if any(item.strip().lower() == EVERY for item in names):
            changes = cls.every().to_dict()
        for item in names:
            name, has_value, text = item.partition("=")
            name = name.strip().lower().replace("_", "-")
            if name == EVERY and not has_value:
                continue
            if name not in NAMES:
                raise ValueError(f"unknown variant {name!r}; one of: {', '.join(NAMES)}, {EVERY}")
            field, on_value, _ = NAMES[name]
            if not has_value:
                changes[field] = on_value
                continue
            try:
                if isinstance(on_value, bool):
                    lowered = text.strip().lower()
                    if lowered not in ("true", "false", "on", "off", "1", "0"):
                        raise ValueError
                    changes[field] = lowered in ("true", "on", "1")
                elif isinstance(on_value, str):
                    changes[field] = text.strip()
                elif isinstance(on_value, float):
                    changes[field] = float(text)
                else:
                    changes[field] = int(text)
            except ValueError:
                raise ValueError(f"variant {name}: {text!r} is not a valid value") from None
        try:
            return cls(**changes)
        except ValueError as exc:
            raise ValueError(str(exc)) from None


# --variant NAME → (Variants field, the value a bare NAME sets, what it plays). The closed set.
NAMES: dict[str, tuple[str, Any, str]] = {
    "rf-cursor-paging": (
        "rf_cursor_paging",
        True,
        "RF lists and search page by an opaque cursor in links.next; no meta.last_page; page=N is ignored",
    ),
    "rf-search-refuses-type": ("rf_search_refuses_type", True, "RF search answers 422 to a filter on the type field"),
    "rf-search-max-per-page": (
        "rf_search_max_per_page",
        100,
        "RF search answers 422 to a per_page above N (bare name: 100)",
    ),
    "rf-mixed-meta": ("rf_mixed_meta", True, "some RF users carry list or object meta[].value, and may be given them"),
    "lookup-lag": (
        "lookup_lag_seconds",
        5.0,
        "a new booking is not listed by ?externalId=, a new RF user not found by search, for N s (bare name: 5)",
    ),
    "html-route-404": ("html_route_404", True, "a path outside both APIs answers a proxy's HTML 404 page"),
    "st-429": (
        "st_429",
        "apim-body",
        "ST 429 without Retry-After: apim-body (bare name: the gateway's JSON body) or bare (no body)",
    ),
    "st-gateway-401": (
        "st_gateway_401",
        True,
        "a missing or wrong ST-App-Key gets the API gateway's 401 about a subscription key",
    ),
    "token-per-minute": (
        "token_per_minute",
        10,
        "ST's token endpoint answers 429 past N token requests a minute (bare name: 10)",
    ),
    "refuse-invalid-existing-custom-fields": (
        "refuse_invalid_existing_custom_fields",
        True,
        "a customer PATCH echoing an invalid custom-field value the customer holds is refused",
    ),
}


def describe() -> list[tuple[str, str]]:
    """(``--variant`` spelling, one line) for every variant, for help texts."""
    out = []
    for name, (field, on_value, text) in NAMES.items():
        if on_value is True:
            spelled = name
        elif field == "st_429":
            spelled = f"{name}[=STYLE]"
        else:
            spelled = f"{name}[=N]"
        out.append((spelled, text))
    return out


class VariantSwitch:
    """The current ``Variants`` of one sandbox, shared by both simulated services."""

    def __init__(self, variants: Variants | None = None) -> None:
        self._lock = threading.Lock()
        self._variants = variants or Variants()

    @property
    def current(self) -> Variants:
        return self._variants

    def set(self, variants: Variants | None) -> None:
        with self._lock:
            self._variants = variants or Variants()
