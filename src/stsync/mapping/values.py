"""A raw value → what a ServiceTitan booking target takes (CreateBookingRequest's types).

``convert(target, raw)`` returns the value to send, or raises ``BadValue`` whose message
finishes the sentence "… gives X for TARGET, but …" (``it takes yes or no``) and whose
``hint`` (optional) says what to do. Per target kind (``vocabulary.target_kind``):

- ``string``: stripped, non-empty text (``true``/``false`` for a boolean); ``email`` must
  look like an e-mail address;
- ``yes_no``: a boolean from yes/no, y/n, true/false, t/f, 1/0, on/off (any case);
- a Manual Select kind: the option in its canonical spelling, matched ignoring case;
- ``integer``: a positive ID below 2**63 (a boolean is not a number);
- ``datetime``: UTC RFC 3339 with second precision (``2025-06-02T15:00:00Z``); a date means
  midnight UTC, a time without offset means UTC, 9–11 digits are Unix seconds.

Pure functions; the validation of fixed values and the booking body share them, so what
``validate`` accepts is exactly what a push can send.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from datetime import UTC, date, datetime

from stsync.mapping.vocabulary import target_kind
from stsync.servicetitan.vocabulary import SELECT_OPTIONS

_EMAIL_RE = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")
_YES = frozenset({"yes", "y", "true", "t", "1", "on"})
_NO = frozenset({"no", "n", "false", "f", "0", "off"})
RawValue = str | bool | int | date | datetime


class BadValue(Exception):
    """The value cannot become what the target takes; the message says what it takes."""

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.hint = hint


def is_email_address(text: str) -> bool:
    """Looks like ``someone@example.com`` (no spaces, one @, a dot in the domain)."""
    return bool(_EMAIL_RE.match(text))


def convert(target: str, raw: RawValue) -> str | bool | int:
    """``raw`` as the CreateBookingRequest wants it for ``target``; ``BadValue`` if it cannot be."""
    kind = target_kind(target)
    if kind == "string":
        text = str(raw).strip() if not isinstance(raw, bool) else ("true" if raw else "false")
        if not text:
            raise BadValue("it is empty")
        if target == "email" and not is_email_address(text):
            raise BadValue("that is not an e-mail address")
        return text
    if kind == "yes_no":
        return _as_bool(raw)
    if kind in SELECT_OPTIONS:
        options = SELECT_OPTIONS[kind]
        option = match_option(str(raw), options)
        if option is None:
            raise BadValue("it takes one of: " + ", ".join(options))
        return option
    if kind == "integer":
        if isinstance(raw, bool):
            raise BadValue("it takes a whole number (an ID)")
        try:
            number = int(str(raw).strip())
        except ValueError:
            raise BadValue("it takes a whole number (an ID)") from None
        if number <= 0 or number >= 2**63:
            raise BadValue("it takes a positive ServiceTitan ID")
        return number
    if kind == "datetime":
        return _as_utc_rfc3339(raw)
    raise BadValue(f"unknown kind {kind}")  # a vocabulary entry without a converter


def match_option(given: str, options: Iterable[str]) -> str | None:
    """The option ``given`` names, in its canonical spelling (case and outer spaces ignored)."""
    folded = given.strip().casefold()
    for option in options:
        if option.casefold() == folded:
            return option
    return None


def _as_bool(raw: RawValue) -> bool:
    if isinstance(raw, bool):
        return raw
    text = str(raw).strip().casefold()
    if text in _YES:
        return True
    if text in _NO:
        return False
    raise BadValue("it takes yes or no")


def _as_utc_rfc3339(raw: RawValue) -> str:
    """``2025-06-02T15:00:00Z``: a date means midnight UTC, a time without offset means UTC."""
    if isinstance(raw, datetime):
        moment = raw
    elif isinstance(raw, date):
        moment = datetime(raw.year, raw.month, raw.day)
    else:
        text = str(raw).strip()
        try:
            if re.fullmatch(r"\d{9,11}", text):  # Unix seconds, as some webhooks send
                moment = datetime.fromtimestamp(int(text), tz=UTC)
            elif re.fullmatch(r"\d{4}-\d{2}-\d{2}", text):
                moment = datetime.fromisoformat(text)
            else:
                moment = datetime.fromisoformat(text.replace(" ", "T", 1) if "T" not in text else text)
        except (ValueError, OverflowError, OSError):
            raise BadValue("it takes a date or date-time, e.g. 2025-06-02 or 2025-06-02T15:00:00Z") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    try:
        moment = moment.astimezone(UTC).replace(microsecond=0)
    except OverflowError:  # year 1 with a negative offset, say
        raise BadValue("it is outside the range of dates ServiceTitan takes") from None
    # isoformat pads the year to four digits (strftime's %Y does not for years < 1000).
    return moment.replace(tzinfo=None).isoformat() + "Z"
