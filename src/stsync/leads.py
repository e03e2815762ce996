"""A referred lead (or a referrer) as the mapping engine reads it, from any of its sources.

A lead comes from Referral Factory's API (a ``User``), from a file or a webhook (JSON whose
keys the sender may have renamed: api/referral-factory.md §9.1), or from command-line flags.
All three end up as the same ``Lead``, whose ``value(name)`` answers the SPEC §3 lead
field names (``first_name``, ``referral_code``, ``meta.<label>``, ...) that a mapping's
``from`` and ``template`` refer to.

Read from the API, a lead comes with its campaign (whose name a booking's Source takes by
default) and its referrer (the ``referrer_*`` fields): the user object carries neither, only
their ids. ``LeadReader`` is the one place that reads them, each campaign and each referrer
once per reader; a referrer that no longer exists (a 404 the Referral Factory client confirms
as a deletion) leaves the ``referrer_*`` fields empty. One reader per command (or webhook delivery), used on one thread.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from typing import TYPE_CHECKING, Any

from stsync.errors import ConfigError, InvalidRecord, NotFound, UsageError
from stsync.logs import get_logger
from stsync.referralfactory.models import PERSON_INVITED, meta_text
from stsync.suggestions import did_you_mean

if TYPE_CHECKING:
    from stsync.referralfactory.client import ReferralFactoryClient
    from stsync.referralfactory.models import Campaign, User

log = get_logger(__name__)

# SPEC §3 "Referral Factory lead fields", in the order `map show` lists them.
LEAD_FIELDS: tuple[str, ...] = (
    "first_name",
    "email",
    "referral_code",
    "referral_link",
    "campaign_id",
    "campaign_name",
    "source",
    "signed_up_at",
    "referrer_first_name",
    "referrer_email",
    "referrer_code",
)
META_PREFIX = "meta."

# How the setup guide's table names each field ("Dynamic Value: Campaign Name").
LEAD_FIELD_LABELS: dict[str, str] = {
    "first_name": "First Name",
    "email": "Email",
    "referral_code": "Referral Code",
    "referral_link": "Referral Link",
    "campaign_id": "Campaign ID",
    "campaign_name": "Campaign Name",
    "source": "Source",
    "signed_up_at": "Signed Up At",
    "referrer_first_name": "Referrer First Name",
    "referrer_email": "Referrer Email Address",
    "referrer_code": "Referrer Code",
}

# The label `push-lead --phone` files the phone under: Referral Factory users have no phone
# field, campaign forms collect it as a form field (api/referral-factory.md §6.2) — the
# campaign form's "Phone Number", which the README's mapping reads (`map set phone --from
# "meta.Phone Number"`).
PHONE_META_LABEL = "Phone Number"


@dataclass(frozen=True)
class Lead:
    first_name: str | None = None
    email: str | None = None
    referral_code: str | None = None
    referral_link: str | None = None
    campaign_id: int | None = None
    campaign_name: str | None = None
    source: str | None = None
    signed_up_at: str | None = None
    referrer_first_name: str | None = None
    referrer_email: str | None = None
    referrer_code: str | None = None
    meta: Mapping[str, str] = field(default_factory=dict)
    rf_user_id: int | None = None
    type: str | None = None
    referrer_id: int | None = None  # the referrer's Referral Factory user id (who brought the lead)

    def describe(self) -> str:
        """How messages name this lead: ``jane@example.com (ueONFmUp)``."""
        who = self.email or (f"Referral Factory user {self.rf_user_id}" if self.rf_user_id is not None else None)
        who = who or self.first_name or "a lead without e-mail"
        return f"{who} ({self.referral_code})" if self.referral_code else who

    def value(self, source_name: str) -> str | None:
        """The text of a SPEC §3 lead field (``meta.<label>`` included); None when absent or blank.

        Meta labels are matched exactly first, then case- and space-insensitively, because
        campaign forms and hand-typed mappings rarely agree on capitals.
        """
        if source_name.startswith(META_PREFIX):
            return _text(_meta_lookup(self.meta, source_name[len(META_PREFIX) :]))
        if source_name not in LEAD_FIELDS:
            raise ConfigError(
                f"unknown Referral Factory lead field {source_name!r}{did_you_mean(source_name, LEAD_FIELDS)}",
                hint="lead fields are " + ", ".join(LEAD_FIELDS) + ", and meta.<label> for campaign form fields",
            )
        return _text(getattr(self, source_name))

    def with_meta(self, **labels: str) -> Lead:
        return replace(self, meta={**self.meta, **labels})


def is_lead_source(name: str) -> bool:
    """A valid ``from`` for a booking mapping (SPEC §3)."""
    return name in LEAD_FIELDS or (name.startswith(META_PREFIX) and bool(name[len(META_PREFIX) :].strip()))


# -- from the Referral Factory API -------------------------------------------------------------


def lead_from_user(user: User, *, campaign: Campaign | None = None, referrer: User | None = None) -> Lead:
    """A lead (or referrer) read from Referral Factory, with its campaign and referrer if known."""
    meta = {item.field: item.value for item in user.meta if item.value is not None}
    return Lead(
        first_name=user.first_name,
        email=user.email,
        referral_code=user.code,
        referral_link=user.url,
        campaign_id=user.campaign_id if user.campaign_id is not None else (campaign.id if campaign else None),
        campaign_name=campaign.name if campaign is not None else None,
        source=user.source,
        signed_up_at=user.signed_up_at,
        referrer_first_name=referrer.first_name if referrer is not None else None,
        referrer_email=referrer.email if referrer is not None else None,
        referrer_code=referrer.code if referrer is not None else None,
        meta=meta,
        rf_user_id=user.id,
        type=user.type,
        referrer_id=user.referrer_id,
    )


class LeadReader:
    """Referral Factory users → leads with their campaign and referrer (see the module
    docstring). ``campaign_id`` is the campaign of a user that names none;
    ``with_referrer=False`` reads no referrer (their fields stay empty)."""

    def __init__(
        self, rf: ReferralFactoryClient, campaign_id: int, *, with_referrer: bool = True, known: Campaign | None = None
    ) -> None:
        self.rf = rf
        self.campaign_id = campaign_id
        self.with_referrer = with_referrer
        # ``known``: a campaign the caller read already (not read again).
        self._campaigns: dict[int, Campaign] = {known.id: known} if known is not None else {}
        self._referrers: dict[int, User | None] = {}

    def campaign(self, campaign_id: int | None = None) -> Campaign:
        """A campaign (by default the reader's), read once."""
        wanted = campaign_id if campaign_id is not None else self.campaign_id
        if wanted not in self._campaigns:
            self._campaigns[wanted] = self.rf.get_campaign(wanted)
        return self._campaigns[wanted]

    def referrer(self, user_id: int) -> User | None:
        """The referrer with this user id, read once; None when it no longer exists."""
        if user_id not in self._referrers:
            try:
                self._referrers[user_id] = self.rf.get_user(user_id)
            except NotFound as exc:
                self.rf.confirm_deleted(exc, campaign_id=self.campaign_id)  # raises unless a deletion
                log.warning("referrer (user %s) no longer exists in Referral Factory", user_id)
                self._referrers[user_id] = None
        return self._referrers[user_id]

    def lead(self, user: User) -> Lead:
        referrer = None
        if self.with_referrer and user.referrer_id is not None:
            referrer = self.referrer(user.referrer_id)
        return lead_from_user(user, campaign=self.campaign(user.campaign_id), referrer=referrer)


# -- from JSON (a file, stdin, a webhook) ------------------------------------------------------

# Normalised key (lowercase, letters and digits only) → Lead attribute. Covers Referral
# Factory's own snake_case, camelCase from other tools, and the labels people rename keys to.
_KEY_ALIASES: dict[str, str] = {
    "firstname": "first_name",
    "name": "first_name",
    "fname": "first_name",
    "email": "email",
    "emailaddress": "email",
    "mail": "email",
    "referralcode": "referral_code",
    "code": "referral_code",
    "refcode": "referral_code",
    "referrallink": "referral_link",
    "referralurl": "referral_link",
    "url": "referral_link",
    "link": "referral_link",
    "campaignid": "campaign_id",
    "campaignname": "campaign_name",
    "source": "source",
    "signedupat": "signed_up_at",
    "signedup": "signed_up_at",
    "createdat": "signed_up_at",
    "referrerfirstname": "referrer_first_name",
    "referrername": "referrer_first_name",
    "referreremail": "referrer_email",
    "referreremailaddress": "referrer_email",
    "referrercode": "referrer_code",
    "referrerreferralcode": "referrer_code",
    "id": "rf_user_id",
    "userid": "rf_user_id",
    "type": "type",
    "usertype": "type",
    "referrerid": "referrer_id",
}
# Keys whose value is the referrer as an object ("the details of the person who referred them").
_REFERRER_KEYS = ("referrer", "referredby", "referringuser", "referrerdetails")
# Envelopes a payload may wrap the user in.
_WRAPPER_KEYS = ("data", "user", "lead", "referral", "payload")
_EMAIL_SPELLINGS = "email, email_address, emailAddress"


def _norm(key: str) -> str:
    return re.sub(r"[^a-z0-9]", "", key.casefold())


def leads_from_json(obj: Any, *, pointer_only: bool = False) -> list[Lead]:
    """Leads from a Referral Factory user object, a webhook payload, or a list of either.

    Raises ``UsageError`` when the shape is not a lead at all and ``InvalidRecord`` when a
    lead lacks its e-mail (the one key every use needs), naming the record and the keys
    looked for. ``pointer_only``: a lead that will be read back from Referral Factory (a
    webhook delivery) only needs to name the user — its id, referral code or e-mail.
    """
    if isinstance(obj, list):
        if not obj:
            raise UsageError("the input is an empty list: no lead to read")
        return [lead_from_json_object(item, position=index + 1, pointer_only=pointer_only) for index, item in enumerate(obj)]
    if isinstance(obj, dict):
        inner = _unwrap(obj)
        if isinstance(inner, list):
            return leads_from_json(inner, pointer_only=pointer_only)
        return [lead_from_json_object(obj, pointer_only=pointer_only)]
    raise UsageError(
        f"expected a lead as a JSON object (or a list of them), got {type(obj).__name__}",
        hint="pass a Referral Factory user object, a webhook payload, or a list of either",
    )


def leads_from_input(obj: Any) -> tuple[list[Lead], list[InvalidRecord]]:
    """Leads from parsed JSON input (``push-lead --file``). In a list, a record that is not
    a valid lead (no e-mail) is set aside, returned second, so the others still go; alone,
    it is raised."""
    if not isinstance(obj, list) or not obj:
        return leads_from_json(obj), []
    leads: list[Lead] = []
    rejected: list[InvalidRecord] = []
    for position, item in enumerate(obj, start=1):
        try:
            leads.append(lead_from_json_object(item, position=position))
        except InvalidRecord as exc:
            rejected.append(exc)
    return leads, rejected


def lead_from_json_object(obj: Any, *, position: int | None = None, pointer_only: bool = False) -> Lead:
    """One lead from one JSON object (see ``leads_from_json``)."""
    where = f"record #{position}" if position is not None else "the input"
    if not isinstance(obj, dict):
        raise UsageError(f"{where} is {type(obj).__name__}, not a JSON object describing a lead")
    body = _unwrap(obj)
    if not isinstance(body, dict):
        raise UsageError(f"{where} wraps {type(body).__name__}, not a JSON object describing a lead")
    if body is not obj:
        # An envelope ({"event": ..., "data": {...}, "referrer": {...}}) may carry the
        # campaign or the referrer beside the user: keep them unless the user has its own.
        inner_keys = {_norm(k) for k in body if isinstance(k, str)}
        extras = {
            k: v for k, v in obj.items()
            if isinstance(k, str) and _norm(k) in ("campaign", "campaignid", "campaignname", *_REFERRER_KEYS)
            and _norm(k) not in inner_keys
        }
        body = {**body, **extras}
    values: dict[str, Any] = {}
    ranks: dict[str, int] = {}
    meta: dict[str, str] = {}
    campaign_name = campaign_id = None
    referrer: dict[Any, Any] | None = None  # as sent: its keys are checked one by one
    for key, raw in body.items():
        if not isinstance(key, str):
            continue
        norm = _norm(key)
        if norm == "meta" or norm == "fields" or norm == "customfields":
            meta.update(_meta_from_json(raw, where))
            continue
        if norm == "campaign":
            if isinstance(raw, dict):
                campaign_name = raw.get("name") if isinstance(raw.get("name"), str) else None
                campaign_id = raw.get("id")
            elif isinstance(raw, str):
                campaign_name = raw
            continue
        if norm in _REFERRER_KEYS and isinstance(raw, dict):
            referrer = raw
            continue
        target = _KEY_ALIASES.get(norm)
        if target is None or isinstance(raw, (dict, list)):
            continue  # unknown keys are the sender's business
        # The field's own spelling beats a looser alias ("first_name" over "name"); among
        # equals the first one wins.
        rank = 0 if norm == _norm(target) else 1
        if target in values and ranks[target] <= rank:
            continue
        values[target], ranks[target] = raw, rank
    if referrer is not None:
        for key, raw in referrer.items():
            target = _KEY_ALIASES.get(_norm(key)) if isinstance(key, str) else None
            mapped = {
                "first_name": "referrer_first_name",
                "email": "referrer_email",
                "referral_code": "referrer_code",
                "rf_user_id": "referrer_id",
            }.get(target or "")
            if mapped and mapped not in values and isinstance(raw, (str, int)):
                values[mapped] = raw
    if campaign_name is not None and "campaign_name" not in values:
        values["campaign_name"] = campaign_name
    if campaign_id is not None and "campaign_id" not in values:
        values["campaign_id"] = campaign_id

    email = _text(values.get("email"))
    if pointer_only and email is None and _text(values.get("referral_code")) is None and _text(values.get("rf_user_id")) is None:
        raise InvalidRecord(
            f"{where} names no Referral Factory user: looked for an e-mail ({_EMAIL_SPELLINGS}), a referral code or an id",
            field="email",
            hint="include the user's id, referral code or e-mail in the webhook payload",
        )
    if email is None and not pointer_only:
        code = _text(values.get("referral_code"))
        who = f" (referral code {code})" if code else ""
        raise InvalidRecord(
            f"{where}{who} has no e-mail: looked for the keys {_EMAIL_SPELLINGS}",
            record=code,
            field="email",
            hint="every lead needs an e-mail; if the webhook renames it, use one of those key names",
        )
    return Lead(
        first_name=_text(values.get("first_name")),
        email=email,
        referral_code=_text(values.get("referral_code")),
        referral_link=_text(values.get("referral_link")),
        campaign_id=_int_or_none(values.get("campaign_id"), where, "campaign_id"),
        campaign_name=_text(values.get("campaign_name")),
        source=_text(values.get("source")),
        signed_up_at=_text(values.get("signed_up_at")),
        referrer_first_name=_text(values.get("referrer_first_name")),
        referrer_email=_text(values.get("referrer_email")),
        referrer_code=_text(values.get("referrer_code")),
        meta=meta,
        rf_user_id=_int_or_none(values.get("rf_user_id"), where, "id"),
        type=_text(values.get("type")),
        referrer_id=_int_or_none(values.get("referrer_id"), where, "referrer_id"),
    )


def _unwrap(obj: dict) -> Any:
    """The user inside ``{"data": {...}}``-style envelopes (API answers, webhook events)."""
    current: Any = obj
    for _ in range(3):
        if not isinstance(current, dict):
            return current
        if any(_norm(k) in _KEY_ALIASES and _norm(k) not in ("type", "id") for k in current if isinstance(k, str)):
            return current
        inner = next((current[k] for k in current if isinstance(k, str) and _norm(k) in _WRAPPER_KEYS), None)
        if not isinstance(inner, (dict, list)):
            return current
        current = inner
    return current


def _meta_from_json(raw: Any, where: str) -> dict[str, str]:
    meta: dict[str, str] = {}
    items: list[tuple[Any, Any]]
    if isinstance(raw, dict):
        items = list(raw.items())
    elif isinstance(raw, list):
        items = []
        for item in raw:
            if isinstance(item, dict):
                label = item.get("field", item.get("label", item.get("name")))
                if label is not None:
                    items.append((label, item.get("value")))
    else:
        raise UsageError(f"{where}: meta must be a list of {{field, value}} or an object, not {type(raw).__name__}")
    for label, value in items:
        # A list or an object answer (meta values are typed "mixed") as the API client reads it.
        text = _text(meta_text(value))
        if text is not None:
            meta[str(label)] = text
    return meta


# -- from command-line flags -------------------------------------------------------------------


def lead_from_flags(
    email: str | None,
    first_name: str | None,
    referral_code: str | None = None,
    campaign_name: str | None = None,
    phone: str | None = None,
    fields: Mapping[str, str] | None = None,
) -> Lead:
    """A lead typed on the command line (``push-lead --email --first-name ... --field K=V``).

    ``fields`` keys are SPEC §3 lead field names or ``meta.<label>``; ``--phone`` is filed
    as ``meta.Phone Number`` (map it with ``stsync map set phone --from "meta.Phone Number"``).
    """
    values: dict[str, Any] = {
        "email": _text(email),
        "first_name": _text(first_name),
        "referral_code": _text(referral_code),
        "campaign_name": _text(campaign_name),
    }
    meta: dict[str, str] = {}
    if _text(phone) is not None:
        meta[PHONE_META_LABEL] = str(phone).strip()
    for key, raw in (fields or {}).items():
        name = key.strip()
        if name.startswith(META_PREFIX) and name[len(META_PREFIX) :].strip():
            meta[name[len(META_PREFIX) :].strip()] = raw
        elif name in LEAD_FIELDS:
            values[name] = _text(raw)
        else:
            raise UsageError(
                f"--field {key}=…: {key!r} is not a lead field{did_you_mean(name, LEAD_FIELDS)}",
                hint="use one of " + ", ".join(LEAD_FIELDS) + ", or meta.<label> for a campaign form field",
            )
    typed = [("--email", email), ("--first-name", first_name), ("--referral-code", referral_code),
             ("--campaign-name", campaign_name), ("--phone", phone)]
    typed += [("--field", f"{key}={raw}") for key, raw in (fields or {}).items()]
    for flag, given in typed:
        if given is not None and has_lone_surrogate(str(given)):
            raise UsageError(
                f"{flag} is not text: it has bytes that are not UTF-8",
                hint="type the value again, or check the terminal's encoding",
            )
    if values["email"] is None:
        raise UsageError("--email is empty")
    if "@" not in values["email"]:
        raise UsageError(f"--email {values['email']!r} is not an e-mail address")
    return Lead(
        **{k: v for k, v in values.items() if k != "campaign_id"},
        campaign_id=_int_or_none(values.get("campaign_id"), "--field", "campaign_id", usage=True),
        meta=meta,
        type=PERSON_INVITED,
    )


# -- helpers ----------------------------------------------------------------------------------


def has_lone_surrogate(text: str) -> bool:
    """``text`` holds a UTF-16 surrogate of its own (from a JSON ``\\ud800`` escape, or bytes that
    were not UTF-8 on the command line): not Unicode text, so it can be neither sent nor stored."""
    return any("\ud800" <= c <= "\udfff" for c in text)


def _meta_lookup(meta: Mapping[str, str], label: str) -> str | None:
    if label in meta:
        return meta[label]
    wanted = meta_label_key(label)
    for key, value in meta.items():
        if meta_label_key(key) == wanted:
            return value
    return None


def meta_label_key(label: str) -> str:
    """A form field's label as it is matched: case and spacing aside."""
    return " ".join(label.split()).casefold()


def _text(value: Any) -> str | None:
    """Text of a scalar, stripped; None for None and blanks."""
    if value is None:
        return None
    if isinstance(value, bool):
        text = "true" if value else "false"
    else:
        text = str(value)
    text = text.strip()
    return text or None


def _int_or_none(value: Any, where: str, key: str, *, usage: bool = False) -> int | None:
    if value is None or value == "":
        return None
    if isinstance(value, bool):
        value = None
    try:
        return int(str(value).strip())
    except (TypeError, ValueError):
        message = f"{where}: {key} must be a whole number, not {value!r}"
        if usage:
            raise UsageError(message) from None
        raise InvalidRecord(message, field=key) from None


LEAD_ATTRIBUTES = tuple(f.name for f in fields(Lead))
