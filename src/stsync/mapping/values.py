"""A raw value → what a ServiceTitan booking target takes (CreateBookingRequest's types).

``convert(target, raw)`` returns the value to send, or raises ``BadValue`` whose message
finishes the sentence "… gives X for TARGET, but …" (``it takes yes or no``) and whose
``hint`` (optional) says what to do. Per target kind (``vocabulary.target_kind``):

- ``string``: stripped, non-empty text (``true``/``false`` for a boolean); ``email`` must
  be an address Referral Factory and ServiceTitan take (``email_problem``);
- ``yes_no``: a boolean from yes/no, y/n, true/false, t/f, 1/0, on/off (any case);
- a Manual Select kind: the option in its canonical spelling, matched ignoring case;
- ``integer``: a positive ID below 2**63 (a boolean is not a number);
- ``datetime``: UTC RFC 3339 with second precision (``2025-06-02T15:00:00Z``); a date means
  midnight UTC, a time without offset means UTC, 9–11 digits are Unix seconds.

``email_problem(text)`` says why an e-mail would be refused — before any request, so a
customer with such an e-mail is skipped (``invalid_email``) and such a lead fails alone with
the reason, instead of a 422 from Referral Factory. The rule is the strict reading of
Laravel's ``email`` validation that Referral Factory applies (api/referral-factory.md §3,
422; issue 14 item 8: ``josé@…`` and ``a,b@…`` are refused): an ASCII dot-atom local part of
at most 64 characters, one ``@``, an ASCII domain with a dot whose last label is letters, at
most 254 characters in all; no space, comma, control or bidirectional-text character
anywhere (those also hide what an address really is).

Pure functions; the validation of fixed values and the booking body share them, so what
``validate`` accepts is exactly what a push can send.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable
from datetime import UTC, date, datetime

from stsync.mapping.vocabulary import target_kind
from stsync.servicetitan.vocabulary import SELECT_OPTIONS

# RFC 5322 atext: what a dot-atom local part is made of.
_ATOM = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+"
_LOCAL_PART = re.compile(rf"{_ATOM}(?:\.{_ATOM})*")
_DOMAIN_LABEL = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?")
MAX_LOCAL_PART = 64
MAX_EMAIL = 254
_YES = frozenset({"yes", "y", "true", "t", "1", "on"})
_NO = frozenset({"no", "n", "false", "f", "0", "off"})
RawValue = str | bool | int | date | datetime


class BadValue(Exception):
    """The value cannot become what the target takes; the message says what it takes."""

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.hint = hint


def is_email_address(text: str) -> bool:
    """An address Referral Factory and ServiceTitan take (``email_problem`` finds nothing)."""
    return email_problem(text) is None


def email_problem(text: str) -> str | None:
    """Why ``text`` is not an e-mail address Referral Factory (and so stsync) accepts, in a
    few words finishing "… is not an e-mail address: …"; None when it is one."""
    hidden = [c for c in text if unicodedata.category(c) in ("Cc", "Cf", "Zl", "Zp")]
    if hidden:
        names = ", ".join(sorted({f"U+{ord(c):04X}" for c in hidden}))
        return f"it contains a control or bidirectional-text character ({names})"
    if any(c.isspace() for c in text):
        return "it contains a space"
    if "," in text:
        return "it contains a comma (two addresses?)"
    if text.count("@") != 1:
        return "it has no @" if "@" not in text else "it has more than one @"
    local, domain = text.split("@")
    if not local:
        return "nothing comes before the @"
    if not local.isascii():
        return "it has non-ASCII characters before the @ (Referral Factory refuses them)"
    if len(local) > MAX_LOCAL_PART:
        return f"the part before the @ is longer than {MAX_LOCAL_PART} characters"
    if not _LOCAL_PART.fullmatch(local):
        return "the part before the @ has characters or dots Referral Factory refuses"
    if not domain:
        return "nothing comes after the @"
    if not domain.isascii():
        return "the domain has non-ASCII characters (give its xn-- form)"
    labels = domain.split(".")
    if len(labels) < 2:
        return "the part after the @ has no dot"
    if not all(_DOMAIN_LABEL.fullmatch(label) for label in labels) or not labels[-1].isalpha() or len(labels[-1]) < 2:
        return "the part after the @ is not a domain name"
    if len(text) > MAX_EMAIL:
        return f"it is longer than {MAX_EMAIL} characters"
    return None


def convert(target: str, raw: RawValue) -> str | bool | int:
    """``raw`` as the CreateBookingRequest wants it for ``target``; ``BadValue`` if it cannot be."""
    kind = target_kind(target)
    if kind == "string":
        text = str(raw).strip() if not isinstance(raw, bool) else ("true" if raw else "false")
        if not text:
            raise BadValue("it is empty")
        if target == "email":
            problem = email_problem(text)
            if problem is not None:
                raise BadValue(f"that is not an e-mail address Referral Factory and ServiceTitan accept: {problem}")
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
