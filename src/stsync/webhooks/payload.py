"""What a webhook delivery says: its data, which event it is, and the key that dedupes it.

Pure functions of the request's bytes and headers: no socket, no ledger, no clock. Referral
Factory (api/referral-factory.md §9.1) publishes no payload schema and lets a campaign admin
rename keys, so everything here is tolerant of spelling and nesting, and refuses what it
cannot read with ``WebhookRejected`` (an HTTP status and a message for the sender).

**Which event.** In order: the URL path after the token (``/hooks/<token>/lead-created``),
a ``X-Stsync-Event`` header, an event key in the payload (``event``, ``event_name``,
``trigger``, ...; Referral Factory's own names such as "A new lead is created" are
understood), else the user object itself: a ``person_invited`` user is a new lead (a
qualified one when ``qualified_at`` is set), a ``person_referring`` user a new referrer.

**Reading JSON safely.** ``parse_json`` is the one reader of JSON a person or a sender hands
stsync (a webhook body, ``push-lead --file``): what would break Python's parser or what comes
after it is refused with ``UnreadableJson`` (→ HTTP 400, exit 2), never a crash — nesting past
``MAX_DEPTH`` (a lead is a few levels deep; 100,000 would exhaust the stack), a number longer
than ``MAX_NUMBER_DIGITS`` (Python refuses to convert 4,300 digits and more), ``NaN`` and
``Infinity`` (not JSON), text that is not UTF-8, and a lone UTF-16 surrogate (``\\ud800``: valid
JSON escapes, but no Unicode text — the ledger could not store it).

**Delivery key.** ``event:identity:stamp``: identity is the Referral Factory user id, else
the referral code, else the e-mail; stamp is ``qualified_at`` for a qualification (a lead
qualified, unqualified and qualified again is two events) and ``signed_up_at`` otherwise,
else a hash of the body. A send time in the payload is *not* part of the key: a retry would
carry a new one.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl

from stsync.leads import has_lone_surrogate
from stsync.referralfactory.models import PERSON_INVITED, PERSON_REFERRING

if TYPE_CHECKING:
    from stsync.leads import Lead

LEAD_CREATED = "lead_created"
LEAD_QUALIFIED = "lead_qualified"
REFERRER_JOINED = "referrer_joined"
REWARD_ISSUED = "reward_issued"
EVENTS = (LEAD_CREATED, LEAD_QUALIFIED, REFERRER_JOINED, REWARD_ISSUED)

EVENT_HEADER = "X-Stsync-Event"
# Payload keys that may name the event; Referral Factory publishes no schema (§9.1).
EVENT_KEYS = ("event", "eventname", "eventtype", "trigger", "webhookevent", "topic")


# A lead is an object in an envelope or two, its meta a list of objects: 4–5 levels.
MAX_DEPTH = 32
# IDs are below 2**63 (19 digits); nothing a lead carries needs more.
MAX_NUMBER_DIGITS = 40


class UnreadableJson(ValueError):
    """Input that is not JSON stsync can read; the message says why and where."""


def parse_json(data: bytes | str, *, what: str = "the input") -> Any:
    """``data`` (UTF-8, a BOM allowed) as JSON, or ``UnreadableJson`` (see the module docstring).
    ``what`` names the input in messages ("the body", "lead.json")."""
    if isinstance(data, bytes):
        try:
            text = data.decode("utf-8-sig")
        except UnicodeDecodeError as exc:
            raise UnreadableJson(f"{what}: cannot read it as utf-8 text (byte {exc.start + 1} is not UTF-8)") from None
    else:
        text = data[1:] if data.startswith("\ufeff") else data
    try:
        value = json.loads(text, parse_int=_bounded_int, parse_float=_bounded_float, parse_constant=_no_constant)
    except json.JSONDecodeError as exc:
        raise UnreadableJson(f"{what} is not JSON ({exc.msg} at line {exc.lineno}, column {exc.colno})") from None
    except RecursionError:
        raise UnreadableJson(f"{what} is nested too deeply to be a lead (more than {MAX_DEPTH} levels)") from None
    except _Refused as exc:
        raise UnreadableJson(f"{what} {exc}") from None
    problem = _shape_problem(value)
    if problem is not None:
        raise UnreadableJson(f"{what} {problem}")
    return value


class _Refused(Exception):
    pass


def _bounded_int(digits: str) -> int:
    if len(digits.lstrip("-")) > MAX_NUMBER_DIGITS:
        raise _Refused(f"has a number of {len(digits.lstrip('-'))} digits: no lead field takes more than {MAX_NUMBER_DIGITS}")
    return int(digits)


def _bounded_float(text: str) -> float:
    if len(text) > MAX_NUMBER_DIGITS + 10:
        raise _Refused(f"has a number {len(text)} characters long: no lead field takes one")
    return float(text)


def _no_constant(name: str) -> Any:
    raise _Refused(f"has {name}, which is not a JSON number")


def _shape_problem(value: Any) -> str | None:
    """Nesting past ``MAX_DEPTH`` or a string (key or value) that is not Unicode text; None
    when there is neither. Iterative: a deep value must not exhaust the stack here either."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, str):
            if has_lone_surrogate(item):
                return f"has a string with a lone UTF-16 surrogate ({_surrogate_in(item)}): it is not Unicode text"
            continue
        if not isinstance(item, (dict, list)):
            continue
        if depth > MAX_DEPTH:
            return f"is nested too deeply to be a lead (more than {MAX_DEPTH} levels)"
        children = [*item.keys(), *item.values()] if isinstance(item, dict) else item
        stack.extend((child, depth + 1) for child in children)
    return None


def _surrogate_in(text: str) -> str:
    return next(f"\\u{ord(c):04x}" for c in text if "\ud800" <= c <= "\udfff")


class WebhookRejected(Exception):
    """A request answered with an HTTP error (never a crash): status and a message."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def _norm(text: str) -> str:
    return re.sub(r"[^a-z0-9]", "", text.casefold())


def event_from_text(text: str, *, user_type: str | None = None) -> str | None:
    """An event name as a person or Referral Factory spells it → one of ``EVENTS``."""
    words = set(re.findall(r"[a-z]+", re.sub(r"([a-z])([A-Z])", r"\1 \2", text).casefold()))
    if not words:
        return None
    if words & {"reward", "rewards"}:
        return REWARD_ISSUED
    qualifies = bool(words & {"qualified", "qualify", "qualification", "qualifies", "converted"})
    joins = bool(words & {"created", "create", "new", "joined", "joins", "join", "signup", "signed", "added", "add"})
    lead = bool(words & {"lead", "leads", "referral", "referred", "invited", "friend"})
    referrer = bool(words & {"referrer", "referrers", "referring", "advocate", "ambassador"})
    if qualifies and (lead or not referrer):
        return LEAD_QUALIFIED
    if joins and referrer and not lead:
        return REFERRER_JOINED
    if joins and lead:
        return LEAD_CREATED
    if joins and words & {"user", "person", "participant"}:
        # "user created": which kind depends on the user.
        if user_type == PERSON_INVITED:
            return LEAD_CREATED
        if user_type == PERSON_REFERRING:
            return REFERRER_JOINED
    return None


def parse_payload(body: bytes, content_type: str | None, query: str = "") -> Any:
    """The request's data: a JSON body, a form body, or (for a GET) the query string."""
    media = (content_type or "").split(";")[0].strip().casefold()
    if not body.strip():
        if query:
            return dict(parse_qsl(query, keep_blank_values=True))
        raise WebhookRejected(400, "empty body: expected a JSON object describing the user")
    if media == "application/x-www-form-urlencoded":
        try:
            text = body.decode("utf-8-sig")
        except UnicodeDecodeError:
            raise WebhookRejected(400, "the body is not UTF-8 text") from None
        return dict(parse_qsl(text, keep_blank_values=True))
    try:
        return parse_json(body, what="the body")
    except UnreadableJson as exc:
        raise WebhookRejected(400, str(exc)) from None


def key_aliases(configured: Mapping[str, list[str]]) -> dict[str, str]:
    """``[webhook.aliases]`` (lead field → the sender's keys) as ``{sender key: lead field}``."""
    return {str(key): str(target) for target, keys in configured.items() for key in keys}


def apply_key_aliases(payload: Any, aliases: dict[str, str]) -> Any:
    """Rename the sender's keys to lead fields (``{sender key: lead field}``, see ``key_aliases``).

    A ``meta.<label>`` field goes into the object's ``meta`` (as ``{field, value}``).
    """
    if not aliases:
        return payload
    if isinstance(payload, list):
        return [apply_key_aliases(item, aliases) for item in payload]
    if not isinstance(payload, dict):
        return payload
    wanted = {_norm(alias): target for alias, target in aliases.items()}
    renamed: dict[str, Any] = {}
    extra_meta: list[dict[str, Any]] = []
    for key, value in payload.items():
        target = wanted.get(_norm(key)) if isinstance(key, str) else None
        if isinstance(value, (dict, list)):
            value = apply_key_aliases(value, aliases)
        if target is not None and target.startswith("meta."):
            extra_meta.append({"field": target[len("meta.") :], "value": value})
        elif target is not None and target not in payload:
            renamed[target] = value
        else:
            renamed[key] = value
    if extra_meta:
        meta = renamed.get("meta")
        if isinstance(meta, dict):
            meta = [{"field": k, "value": v} for k, v in meta.items()]
        renamed["meta"] = (meta if isinstance(meta, list) else []) + extra_meta
    return renamed


def _user_object(payload: Any) -> dict:
    """The user inside a payload's envelopes, for the fields classification looks at."""
    current = payload
    for _ in range(3):
        if not isinstance(current, dict):
            return {}
        keys = {_norm(k): k for k in current if isinstance(k, str)}
        if any(k in keys for k in ("email", "emailaddress", "code", "referralcode", "firstname")):
            return current
        inner = next((current[keys[k]] for k in ("data", "user", "lead", "referral", "payload") if k in keys), None)
        if isinstance(inner, list):
            inner = inner[0] if inner else None
        current = inner
    return current if isinstance(current, dict) else {}


def _field(obj: dict, *names: str) -> Any:
    wanted = {_norm(name) for name in names}
    for key, value in obj.items():
        if isinstance(key, str) and _norm(key) in wanted:
            return value
    return None


def classify(payload: Any, *, path_event: str | None = None, header_event: str | None = None) -> str:
    """Which event a delivery is (see the module docstring); ``WebhookRejected`` if unknown."""
    user = _user_object(payload)
    user_type = _field(user, "type", "user_type")
    user_type = user_type if isinstance(user_type, str) else None
    for source, text in (("URL path", path_event), (f"{EVENT_HEADER} header", header_event)):
        if text:
            event = event_from_text(text, user_type=user_type)
            if event is None:
                raise WebhookRejected(400, f"unknown event {text!r} in the {source}; use one of {', '.join(EVENTS)}")
            return event
    if isinstance(payload, dict):
        named = {_norm(k): v for k, v in payload.items() if isinstance(k, str)}
        for key in EVENT_KEYS:
            value = named.get(key)
            if isinstance(value, str) and value.strip():
                event = event_from_text(value, user_type=user_type)
                if event is None:
                    raise WebhookRejected(400, f"unknown event {value!r}; stsync handles {', '.join(EVENTS)}")
                return event
    if user_type == PERSON_INVITED:
        return LEAD_QUALIFIED if _field(user, "qualified_at") else LEAD_CREATED
    if user_type == PERSON_REFERRING:
        return REFERRER_JOINED
    raise WebhookRejected(
        400,
        "cannot tell which event this is: no event in the URL (/hooks/<token>/lead-created), no "
        f"{EVENT_HEADER} header, no 'event' key, and no user 'type'",
    )


def delivery_key(event: str, lead: Lead, payload: Any) -> str:
    """``event:identity:stamp`` (see the module docstring)."""
    if lead.rf_user_id is not None:
        identity = f"id={lead.rf_user_id}"
    elif lead.referral_code:
        identity = f"code={lead.referral_code}"
    else:
        identity = f"email={(lead.email or '').strip().casefold()}"
    user = _user_object(payload)
    stamp = _field(user, "qualified_at") if event == LEAD_QUALIFIED else lead.signed_up_at
    if not stamp:
        canonical = json.dumps(payload, sort_keys=True, separators=(",", ":"), default=str)
        stamp = "sha256=" + hashlib.sha256(canonical.encode()).hexdigest()[:24]
    return f"{event}:{identity}:{stamp}"
