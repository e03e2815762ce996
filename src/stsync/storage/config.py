"""The connection's config (SPEC §3): the pydantic model, and reading it with precise errors.

Reading tells the user exactly where a problem is: ``parse_config_text`` / ``load_config``
raise ``ConfigSyntaxError`` (file, line, column) for bad TOML and ``ConfigSchemaError`` (every
key path: ``leads.fields.name: unknown value kind 'frm' (did you mean 'from'?)``) for a
document that does not fit; unknown keys are errors with a suggestion. Every failure is a
``ConfigError`` (exit 3). Writing the file (commented TOML, atomic) is
``stsync.storage.config_writer``.

The model:
- ``Config`` → ``connection`` (the connection's name: its state directory and keyring
  entries; written by ``stsync connect``), ``servicetitan``, ``referral_factory``, ``secrets``
  (which store ``connect`` put the secrets in — never a secret), ``leads`` (``LeadSettings``),
  ``referrers`` (``ReferrerSettings``), ``customer_sync``, ``limits``, ``webhook``.
- A secret is never accepted in the file: a key such as ``client_secret``, ``app_key`` or
  ``api_key`` in any section is refused with "secrets never go in the config — use
  ``stsync connect``" (its value is never repeated).
- ``limit_warnings(config)``: limits above what the services document (ServiceTitan 60 calls
  per second, Referral Factory 600 per minute) are accepted, with a warning to show.
  ``Config.booking_section(kind)`` is the one way from a ``stsync.vocabulary.Kind`` to
  its section; both sections are ``BookingSettings`` and know their ``kind`` and
  ``section_name`` ("leads" | "referrers").
- A field table is an ordered ``dict[str, FieldSpec]``; a ``FieldSpec`` is one of
  ``FromField`` / ``FixedValue`` / ``SelectValue`` / ``TemplateValue``. Each carries
  ``kind`` (its TOML key), ``label`` (the seed's "Data Type"), ``payload`` (the TOML value),
  ``text``, ``is_blank``, ``sources()`` (the source fields it reads) and ``to_toml()``.
  ``TemplateValue`` owns the one template parser: ``fields()`` and ``render(lookup)``; a
  template that does not parse, or names no field, never validates.
- Which *targets* and *sources* a mapping may name is the mapping engine's business
  (``stsync.mapping.validation``), not the model's.
"""

from __future__ import annotations

import ipaddress
import os
import re
import tomllib
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal
from urllib.parse import urlsplit

import tomli_w
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Discriminator,
    Field,
    Strict,
    Tag,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from stsync import envvars
from stsync.credentials import SECRETS
from stsync.durations import format_duration, parse_duration
from stsync.errors import ConfigError
from stsync.servicetitan.vocabulary import JobStatus
from stsync.storage.paths import CONNECTION_NAME_RULE, valid_connection_name
from stsync.suggestions import did_you_mean
from stsync.urls import https_fix, plain_http_elsewhere
from stsync.vocabulary import (
    DEFAULT_JOB_STATUS,
    Action,
    Environment,
    Kind,
    LogFormat,
    QualificationRule,
    ReturnValue,
    SecretsStore,
    SyncMode,
    UnqualifyEvent,
)

VALUE_KINDS = ("from", "value", "select", "template")
SpecKind = Literal["from", "value", "select", "template"]
MAX_PAGE_SIZE = 5000  # ServiceTitan's documented largest pageSize (api/servicetitan.md §4)

PRODUCTION_ENDPOINTS = ("https://auth.servicetitan.io", "https://api.servicetitan.io")
INTEGRATION_ENDPOINTS = ("https://auth-integration.servicetitan.io", "https://api-integration.servicetitan.io")
REFERRAL_FACTORY_API_URL = "https://referral-factory.com/api/v2"


# --------------------------------------------------------------------------------------
# Errors with a place
# --------------------------------------------------------------------------------------
class ConfigSyntaxError(ConfigError):
    """The file is not valid TOML. ``line``/``column`` are 1-based, from tomllib."""

    def __init__(self, message: str, *, path: Path, line: int | None, column: int | None, hint: str | None = None) -> None:
        super().__init__(message, hint=hint)
        self.path = path
        self.line = line
        self.column = column


class ConfigSchemaError(ConfigError):
    """The TOML parsed but does not fit the schema. ``problems`` = every (key path, message)."""

    def __init__(self, problems: list[tuple[str, str]], *, path: Path | None) -> None:
        first_key, first_message = problems[0]
        lines = [f"{first_key}: {first_message}" if first_key else first_message]
        lines += [f"  also {key}: {message}" if key else f"  also: {message}" for key, message in problems[1:]]
        where = f"fix it in {path}" if path else None
        super().__init__("\n".join(lines), key_path=first_key or None, hint=where)
        self.path = path
        self.problems = problems


def _problem(kind: str, message: str, **context: Any) -> PydanticCustomError:
    """A validation error whose text is final (pydantic would treat braces as placeholders)."""
    return PydanticCustomError(kind, "{message}", {"message": message, **context})


def _one_of(choices: Any) -> str:
    return ", ".join(f"'{c}'" for c in choices)


# --------------------------------------------------------------------------------------
# Field specs: how one target's value is made
# --------------------------------------------------------------------------------------
class _Spec(BaseModel, ABC):
    """What every field spec offers the mapping engine and the writer, whatever its kind."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True, populate_by_name=True)
    kind: ClassVar[SpecKind]  # its key in the TOML table
    label: ClassVar[str]  # the seed's "Data Type" column

    @property
    @abstractmethod
    def payload(self) -> str | bool | int:
        """The value as the TOML table holds it (``{ kind = payload }``)."""

    @property
    def text(self) -> str:
        return str(self.payload)

    @property
    def is_blank(self) -> bool:
        """Only spaces: maps nothing (a required target mapped so is still missing)."""
        return isinstance(self.payload, str) and not self.payload.strip()

    def sources(self) -> tuple[str, ...]:
        """The source fields this spec reads, in order; none for a fixed value or an option."""
        return ()

    def to_toml(self) -> dict[str, str | bool | int]:
        return {self.kind: self.payload}


class FromField(_Spec):
    """Dynamic Value: a source field (``{ from = "first_name" }``)."""

    kind: ClassVar[SpecKind] = "from"
    label: ClassVar[str] = "Dynamic Value"
    from_: str = Field(alias="from", min_length=1)

    @property
    def payload(self) -> str:
        return self.from_

    def sources(self) -> tuple[str, ...]:
        return (self.from_,)


def _check_scalar(value: Any) -> Any:
    if not isinstance(value, (str, bool, int)):
        raise _problem("fixed_value_type", f"must be text, an integer or true/false, not {_type_name(value)} {value!r}")
    return value


class FixedValue(_Spec):
    """Fixed Value (Manual Input): the same text or number for every record."""

    kind: ClassVar[SpecKind] = "value"
    label: ClassVar[str] = "Fixed Value (Manual Input)"
    value: Annotated[str | bool | int, BeforeValidator(_check_scalar)]

    @property
    def payload(self) -> str | bool | int:
        return self.value

    @property
    def text(self) -> str:
        if isinstance(self.value, bool):
            return "true" if self.value else "false"
        return str(self.value)


class SelectValue(_Spec):
    """Manual Select: one of the target's options (which ones is the mapping engine's check)."""

    kind: ClassVar[SpecKind] = "select"
    label: ClassVar[str] = "Fixed Value (Manual Select)"
    select: str = Field(min_length=1)

    @property
    def payload(self) -> str:
        return self.select


_TEMPLATE_TOKEN = re.compile(r"\{\{|\}\}|\{([^{}]*)\}|[{}]")


@lru_cache(maxsize=256)
def _template_parts(template: str) -> tuple[tuple[str, bool], ...]:
    """``(text, is_field)`` pieces of a template: ``{name}`` is a field (its name stripped),
    ``{{`` and ``}}`` are literal braces. ValueError, worded for the user, when a brace is
    unmatched or a ``{}`` is empty."""
    parts: list[tuple[str, bool]] = []
    position = 0
    for match in _TEMPLATE_TOKEN.finditer(template):
        if match.start() > position:
            parts.append((template[position : match.start()], False))
        piece = match.group(0)
        column = match.start() + 1
        if piece in ("{{", "}}"):
            parts.append((piece[0], False))
        elif piece in ("{", "}"):
            raise ValueError(
                f"template is not well formed: unmatched {piece!r} at column {column} "
                "(write {field} for a field, {{ or }} for a literal brace)"
            )
        else:
            name = (match.group(1) or "").strip()
            if not name:
                raise ValueError(f"template has an empty {{}} at column {column}: name a field inside the braces")
            parts.append((name, True))
        position = match.end()
    if position < len(template):
        parts.append((template[position:], False))
    return tuple(parts)


class TemplateValue(_Spec):
    """Several source fields joined: ``{ template = "{first_name} {meta.Last Name}" }``.

    The one template parser of stsync: ``{name}`` is a field, ``{{`` / ``}}`` a literal
    brace. A template with a stray brace, an empty ``{}`` or no field does not validate, so
    ``fields()`` and ``render()`` of a TemplateValue never fail.
    """

    kind: ClassVar[SpecKind] = "template"
    label: ClassVar[str] = "Template"
    template: str = Field(min_length=1)

    @field_validator("template")
    @classmethod
    def _well_formed(cls, template: str) -> str:
        try:
            parts = _template_parts(template)
        except ValueError as exc:
            raise _problem("template_syntax", str(exc)) from None
        if not any(is_field for _, is_field in parts):
            raise _problem(
                "template_syntax", "template names no field: use { value = ... } for fixed text, or add {first_name}-style fields"
            )
        return template

    @property
    def payload(self) -> str:
        return self.template

    def fields(self) -> list[str]:
        """The field names the template refers to, in order (repeats kept)."""
        return [name for name, is_field in _template_parts(self.template) if is_field]

    def sources(self) -> tuple[str, ...]:
        return tuple(self.fields())

    def render(self, lookup: Callable[[str], str | None]) -> str | None:
        """The template with each ``{field}`` replaced by ``lookup(field)``. A field without a
        value becomes empty (a form field a lead skipped must not sink the booking), runs of
        spaces collapse to one, and an all-empty result is None."""
        pieces = [(lookup(text) or "") if is_field else text for text, is_field in _template_parts(self.template)]
        return " ".join("".join(pieces).split()) or None


SPEC_CLASSES: dict[str, type[FromField | FixedValue | SelectValue | TemplateValue]] = {
    "from": FromField,
    "value": FixedValue,
    "select": SelectValue,
    "template": TemplateValue,
}


def _check_spec_shape(raw: Any) -> Any:
    """Exactly one known kind per field; a helpful message for everything else."""
    if isinstance(raw, _Spec):
        return raw
    if not isinstance(raw, dict):
        shown = f'"{raw}"' if isinstance(raw, str) else repr(raw)
        raise _problem(
            "field_spec_shape", f"must be a table with one of from / value / select / template, e.g. {{ from = {shown} }}"
        )
    if not raw:
        raise _problem("field_spec_shape", "is empty: give one of from / value / select / template")
    unknown = [key for key in raw if key not in VALUE_KINDS]
    if unknown:
        key = unknown[0]
        raise _problem("field_spec_kind", f"unknown value kind '{key}'{did_you_mean(key, VALUE_KINDS)}")
    if len(raw) > 1:
        kinds = " and ".join(f"'{k}'" for k in raw)
        raise _problem("field_spec_shape", f"has {kinds}: give exactly one of from / value / select / template")
    return raw


def _spec_kind(raw: Any) -> str | None:
    if isinstance(raw, _Spec):
        return raw.kind
    if isinstance(raw, dict) and len(raw) == 1:
        return next(iter(raw))
    return None


FieldSpec = Annotated[
    Annotated[FromField, Tag("from")]
    | Annotated[FixedValue, Tag("value")]
    | Annotated[SelectValue, Tag("select")]
    | Annotated[TemplateValue, Tag("template")],
    Discriminator(_spec_kind),
    BeforeValidator(_check_spec_shape),
]


def field_spec(kind: str, value: Any) -> FromField | FixedValue | SelectValue | TemplateValue:
    """A spec from a kind name and its value (``map set --from F`` → ``field_spec("from", F)``).

    Raises ConfigError naming the problem (an empty value, a malformed template, a bad kind).
    """
    if kind not in SPEC_CLASSES:
        raise ConfigError(f"unknown value kind '{kind}'{did_you_mean(kind, VALUE_KINDS)}")
    try:
        return SPEC_CLASSES[kind].model_validate({kind: value})
    except ValidationError as exc:
        problems = _problems(exc)
        raise ConfigError(problems[0][1]) from None


# --------------------------------------------------------------------------------------
# Sections
# --------------------------------------------------------------------------------------
def _digits_to_int(value: Any) -> Any:
    """IDs are numbers; a quoted ``"1234567"`` is the same ID, not a mistake worth failing on."""
    if isinstance(value, str) and value.strip().isdigit():
        return int(value.strip())
    return value


Identifier = Annotated[int, BeforeValidator(_digits_to_int), Field(ge=1)]


def _check_url(value: str | None) -> str | None:
    if value is None:
        return None
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.netloc or parts.query or parts.fragment:
        raise _problem("url", f"must be an http(s) URL like https://api.example.com, not {value!r}")
    _refuse_plain_http(value)
    return value


def _refuse_plain_http(value: str) -> None:
    """Credentials never cross the network in clear text (``stsync.urls``)."""
    if plain_http_elsewhere(value):
        raise _problem(
            "plain_http",
            f"must use https: {value!r} would send credentials unencrypted (plain http is only for "
            f"this machine: localhost, 127.0.0.1, ::1); write {https_fix(value)!r}",
        )


def _check_notify_url(value: str | None) -> str | None:
    """An alert URL: http(s) with a host; a query is allowed (Teams workflow URLs carry one)."""
    if value is None:
        return None
    if not isinstance(value, str):
        raise _problem("url", f"must be an https URL in quotes, not {_type_name(value)} {value!r}")
    parts = urlsplit(value.strip())
    if parts.scheme not in ("http", "https") or not parts.netloc or parts.fragment:
        raise _problem("url", "must be an https URL like https://hooks.slack.com/services/…")
    _refuse_plain_http(value)
    return value.strip()


def _duration(*, allow_off: bool) -> Callable[[Any], Any]:
    def parse(value: Any) -> Any:
        if isinstance(value, float) and not allow_off:
            return value
        try:
            return parse_duration(value, allow_off=allow_off)
        except ValueError as exc:
            raise _problem("duration", str(exc)) from None

    return parse


def _at_least_one_second(value: float | None) -> float | None:
    if value is not None and value < 1:
        raise _problem("duration", f"must be at least 1 second (or \"off\"), not {format_duration(value)!r}")
    return value


# A job's interval: seconds, or None when the job is switched off ("off").
Interval = Annotated[float | None, BeforeValidator(_at_least_one_second), BeforeValidator(_duration(allow_off=True))]
Duration = Annotated[float, BeforeValidator(_duration(allow_off=False))]


# Names that are always dotted (SPEC §3): `address.street = "x"` is target "address.street".
DOTTED_PREFIXES = ("address", "meta", "custom", "contact", "customer")


def _flatten_dotted(fields: Any) -> Any:
    """``address.street = { from = ... }`` (a TOML dotted key) means the target "address.street"."""
    if not isinstance(fields, dict):
        return fields
    flat: dict[str, Any] = {}
    for key, value in fields.items():
        nested = (
            isinstance(value, dict)
            and value
            and not any(k in VALUE_KINDS for k in value)
            and (key in DOTTED_PREFIXES or all(isinstance(v, dict) for v in value.values()))
        )
        items = [(f"{key}.{k}", v) for k, v in _flatten_dotted(value).items()] if nested else [(key, value)]
        for name, spec in items:
            if name in flat:
                raise _problem("duplicate_target", f"'{name}' is given twice (quoted and dotted)")
            flat[name] = spec
    return flat


FieldTable = Annotated[dict[str, FieldSpec], BeforeValidator(_flatten_dotted)]


# Keys a person may be tempted to put a secret under, in any section: the secret table's names,
# their short forms, and the usual words. Refused before anything else is said about the key.
SECRET_KEYS = frozenset(
    {secret.name for secret in SECRETS}
    | {secret.name.split("_", 1)[1] for secret in SECRETS}
    | {secret.env_var.name.lower() for secret in SECRETS}
    | {"secret", "password", "token", "access_token", "api_token", "webhook_token"}
)
SECRET_IN_CONFIG = "secrets never go in the config — use `stsync connect`"


class _Section(BaseModel):
    """Strict (TOML gives real types), unknown keys rejected with a suggestion."""

    model_config = ConfigDict(extra="forbid", strict=True, validate_default=True)

    @model_validator(mode="before")
    @classmethod
    def _reject_unknown_keys(cls, data: Any) -> Any:
        if isinstance(data, dict):
            known = [info.alias or name for name, info in cls.model_fields.items()]
            for key in data:
                if key in known or key in cls.model_fields:
                    continue
                if isinstance(key, str) and key.strip().casefold() in SECRET_KEYS:
                    raise _problem("secret_in_config", SECRET_IN_CONFIG, key=key)
                raise _problem("unknown_key", f"unknown key '{key}'{did_you_mean(key, known)}", key=key)
        elif not isinstance(data, BaseModel):
            raise _problem("section_type", f"must be a table ([section]), not {_type_name(data)} {data!r}")
        return data


# A closed vocabulary (stsync.vocabulary) read from TOML: the file holds the string, the model
# the member. Not strict, so that the string is accepted; anything else is an "unknown value".
EnvironmentWord = Annotated[Environment, Strict(False)]
ActionWord = Annotated[Action, Strict(False)]
RuleWord = Annotated[QualificationRule, Strict(False)]
UnqualifyWord = Annotated[UnqualifyEvent, Strict(False)]
SyncModeWord = Annotated[SyncMode, Strict(False)]
ReturnValueWord = Annotated[ReturnValue, Strict(False)]
SecretsStoreWord = Annotated[SecretsStore, Strict(False)]


class ServiceTitanSettings(_Section):
    environment: EnvironmentWord = Environment.PRODUCTION
    tenant_id: Identifier | None = None
    client_id: str | None = None
    booking_provider: Identifier | None = None
    auth_url: Annotated[str | None, BeforeValidator(_check_url)] = None
    api_url: Annotated[str | None, BeforeValidator(_check_url)] = None
    page_size: int = Field(200, ge=1, le=MAX_PAGE_SIZE)


class ReferralFactorySettings(_Section):
    campaign_id: Identifier | None = None
    api_url: Annotated[str | None, BeforeValidator(_check_url)] = None


MAX_HOLD_DAYS = 365


class Qualification(_Section):
    rule: RuleWord = QualificationRule.NONE
    job_status: JobStatus | None = None
    unqualify_on: list[UnqualifyWord] = Field(default_factory=list)
    # Days the job must stay as the rule wants it (not canceled; not back from the status)
    # before the referral is qualified: refunds and cancellations come in the first weeks.
    hold_days: int = Field(0, ge=0, le=MAX_HOLD_DAYS)

    @model_validator(mode="after")
    def _default_status(self) -> Qualification:
        # "rule = job_status" alone means the seed's example: the job reached Completed.
        if self.rule == QualificationRule.JOB_STATUS and self.job_status is None:
            self.job_status = DEFAULT_JOB_STATUS
        return self


class BookingSettings(_Section):
    """[leads] or [referrers]: what happens when someone of this kind joins the campaign, and
    how their booking's fields are made."""

    kind: ClassVar[Kind]
    section_name: ClassVar[Literal["leads", "referrers"]]
    action: ActionWord
    fields: FieldTable = Field(default_factory=dict)


class LeadSettings(BookingSettings):
    kind: ClassVar[Kind] = Kind.LEAD
    section_name: ClassVar[Literal["leads", "referrers"]] = "leads"
    action: ActionWord = Action.CREATE_BOOKING
    qualification: Qualification = Field(default_factory=Qualification)


class ReferrerSettings(BookingSettings):
    kind: ClassVar[Kind] = Kind.REFERRER
    section_name: ClassVar[Literal["leads", "referrers"]] = "referrers"
    action: ActionWord = Action.NOTHING


class CustomerSyncSettings(_Section):
    mode: SyncModeWord = SyncMode.ONE_TIME
    include_inactive: bool = False
    fields: FieldTable = Field(default_factory=dict)
    return_fields: dict[str, ReturnValueWord] = Field(default_factory=dict)


# What the services document (api/servicetitan.md §9, api/referral-factory.md §2): a limit set
# above them only earns 429s — and from Referral Factory, after a few, a blocked IP.
SERVICETITAN_DOCUMENTED_PER_SECOND = 60
REFERRAL_FACTORY_DOCUMENTED_PER_MINUTE = 600


class Limits(_Section):
    servicetitan_per_second: int = Field(SERVICETITAN_DOCUMENTED_PER_SECOND, ge=1)
    referral_factory_per_minute: int = Field(REFERRAL_FACTORY_DOCUMENTED_PER_MINUTE, ge=1)
    retry_budget_seconds: int = Field(120, ge=0)
    workers: int = Field(8, ge=1, le=64)
    # After a create whose answer was lost: how long a new record may stay unlisted by the
    # lookups (stsync.lookup_grace). 0: no look again in the run; the next run decides.
    lookup_grace_seconds: int = Field(30, ge=0, le=3600)


class SecretsSettings(_Section):
    """Where ``stsync connect`` stored the secrets (the store itself, never a secret): every
    later command, ``disconnect`` and a plain reconnect use the same one."""

    store: SecretsStoreWord = SecretsStore.KEYRING


class WebhookSettings(_Section):
    """``stsync serve``: the reverse proxy whose ``X-Forwarded-*`` headers are believed (an IP
    address, or ``*`` for any peer — only when nothing else can reach the port), how many
    connections it holds open, its worker threads (paced by ``[limits]`` whatever their
    number), and extra key spellings it accepts in a payload (lead field → keys)."""

    trusted_proxy: str | None = None
    max_connections: int = Field(1000, ge=1, le=100_000)
    workers: int = Field(4, ge=1, le=64)
    aliases: dict[str, list[Annotated[str, Field(min_length=1)]]] = Field(default_factory=dict)

    @field_validator("trusted_proxy")
    @classmethod
    def _an_address(cls, value: str | None) -> str | None:
        if value is None or value == "*":
            return value
        try:
            return str(ipaddress.ip_address(value.strip()))
        except ValueError:
            raise _problem(
                "trusted_proxy", f"must be the reverse proxy's IP address (e.g. \"127.0.0.1\") or \"*\", not {value!r}"
            ) from None


class ScheduleSettings(_Section):
    """How often each job runs under ``stsync run`` — and what ``status`` and the overdue alert
    expect when cron runs them instead. Durations: "30s", "5m", "1h", "7d" or seconds; "off"."""

    push: Interval = 300.0  # push-lead --new
    qualify: Interval = 600.0  # qualify
    sync: Interval = 900.0  # sync-customers --ongoing
    full_sync: Interval = 7 * 86400.0  # sync-customers --ongoing --full
    full_qualify: Interval = 7 * 86400.0  # qualify --full, when this stsync's qualify has it
    jitter: Duration = 30.0  # each start is delayed by up to this (at most half the interval)
    overdue_after: float = Field(3.0, ge=1.0, le=1000.0)  # a job is overdue after this many intervals without success

    @field_validator("overdue_after", mode="before")
    @classmethod
    def _number(cls, value: Any) -> Any:
        if isinstance(value, int) and not isinstance(value, bool):
            return float(value)
        return value

    def interval(self, job: str) -> float | None:
        """The interval of ``push``, ``qualify`` or ``sync`` (None: off or not a scheduled job)."""
        return getattr(self, job, None) if job in ("push", "qualify", "sync") else None


class NotifySettings(_Section):
    """Alerts when a human must act (``stsync.notify``). The URLs carry tokens: the
    environment variables STSYNC_NOTIFY_WEBHOOK_URL / STSYNC_NOTIFY_PING_URL win over them."""

    webhook_url: Annotated[str | None, BeforeValidator(_check_notify_url)] = None
    ping_url: Annotated[str | None, BeforeValidator(_check_notify_url)] = None
    remind_after: Duration = 86400.0  # a problem still there is reported again after this long
    timeout_seconds: float = Field(5.0, gt=0, le=30)

    @field_validator("timeout_seconds", mode="before")
    @classmethod
    def _number(cls, value: Any) -> Any:
        if isinstance(value, int) and not isinstance(value, bool):
            return float(value)
        return value


LogFormatWord = Annotated[LogFormat, Strict(False)]


class LoggingSettings(_Section):
    format: LogFormatWord = LogFormat.TEXT
def _check_connection_name(value: Any) -> Any:
    if isinstance(value, str) and not valid_connection_name(value):
        raise _problem("connection_name", f"{value!r} is not a connection name: {CONNECTION_NAME_RULE}")
    return value


class Config(_Section):
    connection: Annotated[str | None, BeforeValidator(_check_connection_name)] = None
    servicetitan: ServiceTitanSettings = Field(default_factory=ServiceTitanSettings)
    referral_factory: ReferralFactorySettings = Field(default_factory=ReferralFactorySettings)
    leads: LeadSettings = Field(default_factory=LeadSettings)
    referrers: ReferrerSettings = Field(default_factory=ReferrerSettings)
    customer_sync: CustomerSyncSettings = Field(default_factory=CustomerSyncSettings)
    secrets: SecretsSettings = Field(default_factory=SecretsSettings)
    limits: Limits = Field(default_factory=Limits)
    webhook: WebhookSettings = Field(default_factory=WebhookSettings)
    schedule: ScheduleSettings = Field(default_factory=ScheduleSettings)
    notify: NotifySettings = Field(default_factory=NotifySettings)
    logging: LoggingSettings = Field(default_factory=LoggingSettings)

    def booking_section(self, kind: Kind) -> LeadSettings | ReferrerSettings:
        """The section a booking for this kind is made from: "lead" → [leads], "referrer" → [referrers]."""
        if kind == Kind.LEAD:
            return self.leads
        if kind == Kind.REFERRER:
            return self.referrers
        raise ValueError(f"kind must be 'lead' or 'referrer', not {kind!r}")


# --------------------------------------------------------------------------------------
# ValidationError → key paths a person can read
# --------------------------------------------------------------------------------------
_BARE_KEY = re.compile(r"^[A-Za-z0-9_-]+$")
_TOML_TYPE = {str: "text", int: "an integer", float: "a number", bool: "true/false", list: "a list", dict: "a table"}


def toml_key(key: str) -> str:
    """A key as TOML spells it: bare when it can be, else quoted (``"address.street"``)."""
    return tomli_w.dumps({key: 0})[: -len(" = 0\n")]


def format_key_path(parts: tuple[Any, ...] | list[Any]) -> str:
    """``("customer_sync", "return_fields", "Referral Link")`` → ``customer_sync.return_fields."Referral Link"``."""
    out = ""
    for part in parts:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            text = str(part) if _BARE_KEY.match(str(part)) else toml_key(str(part))
            out += f".{text}" if out else text
    return out


def _type_name(value: Any) -> str:
    for kind, name in _TOML_TYPE.items():
        if type(value) is kind:
            return name
    return type(value).__name__


def _message_for(error: Any) -> str:
    kind, ctx, given = error["type"], error.get("ctx") or {}, error.get("input")
    if kind in ("literal_error", "enum"):
        expected = re.findall(r"'([^']*)'", str(ctx.get("expected", "")))
        return f"unknown value {given!r} (expected one of: {_one_of(expected)}){did_you_mean(given, expected)}"
    if kind in ("int_type", "int_parsing"):
        return f"must be an integer, not {_type_name(given)} {given!r}"
    if kind in ("string_type",):
        return f"must be text (in quotes), not {_type_name(given)} {given!r}"
    if kind in ("bool_type", "bool_parsing"):
        return f"must be true or false, not {_type_name(given)} {given!r}"
    if kind in ("list_type",):
        return f"must be a list like [\"a\", \"b\"], not {_type_name(given)} {given!r}"
    if kind in ("dict_type", "model_type", "model_attributes_type"):
        return f"must be a table, not {_type_name(given)} {given!r}"
    if kind == "union_tag_not_found":
        return "must be a table with one of from / value / select / template"
    if kind == "missing":
        return "is required"
    if kind == "string_too_short":
        return "must not be empty"
    message = str(error["msg"])
    message = re.sub(r"^(Value error|Assertion failed), ", "", message)
    return message.replace("Input should be", "must be")


def _problems(exc: ValidationError) -> list[tuple[str, str]]:
    problems: list[tuple[str, str]] = []
    for error in exc.errors():
        loc = list(error["loc"])
        # A tagged union adds the tag to the location: "fields.name.from.from" → "fields.name.from".
        loc = [part for i, part in enumerate(loc) if not (i > 0 and part == loc[i - 1] and part in VALUE_KINDS)]
        ctx = error.get("ctx") or {}
        if error["type"] in ("unknown_key", "secret_in_config"):
            loc.append(ctx["key"])
        elif error["type"] == "union_tag_invalid":
            continue  # the shape check already said what is wrong
        problem = (format_key_path(loc), _message_for(error))
        if problem not in problems:
            problems.append(problem)
    return problems or [("", "invalid config")]


# --------------------------------------------------------------------------------------
# Load / parse / save
# --------------------------------------------------------------------------------------
_LINE_COLUMN = re.compile(r"\(at line (\d+), column (\d+)\)")


def parse_config(data: dict[str, Any], *, path: Path | None = None) -> Config:
    """Validate a decoded TOML document. Raises ConfigSchemaError with every key path."""
    try:
        return Config.model_validate(data)
    except ValidationError as exc:
        raise ConfigSchemaError(_problems(exc), path=path) from None


def parse_config_text(text: str, *, path: Path | None = None) -> Config:
    """Parse TOML text (syntax errors: line and column) and validate it."""
    shown = path or Path("<config>")
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        reason = str(exc)
        where = _LINE_COLUMN.search(reason)
        line: int | None
        column: int | None
        if where:
            line, column = int(where.group(1)), int(where.group(2))
        elif "(at end of document)" in reason:
            last_lines = text.split("\n")
            line, column = len(last_lines), len(last_lines[-1]) + 1
        else:
            line = column = None
        reason = _LINE_COLUMN.sub("", reason).replace("(at end of document)", "at the end of the file").strip()
        place = f"{shown}:{line}:{column}" if line else str(shown)
        raise ConfigSyntaxError(
            f"{place}: TOML syntax error: {reason}",
            path=shown,
            line=line,
            column=column,
            hint="fix the line shown (strings need quotes; each [section] appears once)",
        ) from None
    return parse_config(data, path=path)


def load_config(path: str | os.PathLike[str]) -> Config:
    """Read and validate the config file. Every failure is a ConfigError (exit 3)."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise ConfigError(f"no config file at {path}", hint="run `stsync connect` to create it") from None
    except IsADirectoryError:
        raise ConfigError(f"{path} is a directory, not a config file", hint="pass the TOML file with --config") from None
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror or exc}") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path} is not UTF-8 text (byte {exc.start})", hint="save the file as UTF-8") from None
    return parse_config_text(text, path=path)


# --------------------------------------------------------------------------------------
# Defaults and endpoints
# --------------------------------------------------------------------------------------
def default_config(
    *,
    environment: Environment | str = Environment.PRODUCTION,
    tenant_id: int | None = None,
    client_id: str | None = None,
    booking_provider: int | None = None,
    campaign_id: int | None = None,
) -> Config:
    """The seed's default mapping (setup guide Step 5; SPEC §3) with the given identity."""
    return Config.model_validate(
        {
            "servicetitan": {
                "environment": environment,
                **{
                    k: v
                    for k, v in {"tenant_id": tenant_id, "client_id": client_id, "booking_provider": booking_provider}.items()
                    if v is not None
                },
            },
            "referral_factory": {"campaign_id": campaign_id} if campaign_id is not None else {},
            "leads": {
                "action": Action.CREATE_BOOKING,
                "fields": {
                    "source": {"from": "campaign_name"},
                    "name": {"from": "first_name"},
                    "email": {"from": "email"},
                    "summary": {"value": "Referral"},
                    "is_first_time_client": {"select": "yes"},
                    "external_id": {"from": "referral_code"},
                },
                "qualification": {"rule": QualificationRule.NONE},
            },
            "referrers": {"action": Action.NOTHING},
            "customer_sync": {
                "mode": SyncMode.ONE_TIME,
                "include_inactive": False,
                "fields": {"first_name": {"from": "customer.first_name"}, "email": {"from": "contact.email"}},
                "return_fields": {"Referral Link": ReturnValue.REFERRAL_LINK, "Referral Code": ReturnValue.REFERRAL_CODE},
            },
        }
    )


def limit_warnings(config: Config) -> list[str]:
    """Each ``[limits]`` value above what the service documents, as a warning for the user."""
    limits = config.limits
    warnings: list[str] = []
    if limits.servicetitan_per_second > SERVICETITAN_DOCUMENTED_PER_SECOND:
        warnings.append(
            f"limits.servicetitan_per_second = {limits.servicetitan_per_second} is above ServiceTitan's documented "
            f"{SERVICETITAN_DOCUMENTED_PER_SECOND} calls per second per app and tenant: requests past it are refused "
            "with 429 and retried, which is slower than staying under it "
            f"(set it to {SERVICETITAN_DOCUMENTED_PER_SECOND} or less)"
        )
    if limits.referral_factory_per_minute > REFERRAL_FACTORY_DOCUMENTED_PER_MINUTE:
        warnings.append(
            f"limits.referral_factory_per_minute = {limits.referral_factory_per_minute} is above Referral Factory's "
            f"documented {REFERRAL_FACTORY_DOCUMENTED_PER_MINUTE} calls per minute: repeated 429s get this machine's IP "
            f"blocked (set it to {REFERRAL_FACTORY_DOCUMENTED_PER_MINUTE} or less)"
        )
    return warnings


@dataclass(frozen=True)
class Endpoints:
    st_auth_url: str
    st_api_url: str
    rf_api_url: str


def resolve_endpoints(config: Config) -> Endpoints:
    """servicetitan.environment → URLs; config keys override; STSYNC_* env variables win (SPEC §2)."""
    integration = config.servicetitan.environment == Environment.INTEGRATION
    auth_default, api_default = INTEGRATION_ENDPOINTS if integration else PRODUCTION_ENDPOINTS

    def pick(variable: envvars.EnvVar, configured: str | None, default: str) -> str:
        chosen = str(envvars.resolve(variable, configured=configured, default=default)).rstrip("/")
        if plain_http_elsewhere(chosen):
            from_env = envvars.read(variable) is not None
            where = f"the environment variable {variable.name}" if from_env else f"{variable.config_key} in the config"
            raise ConfigError(
                f"{where} is a plain http URL ({chosen}): credentials would cross the network unencrypted",
                key_path=None if from_env else variable.config_key,
                hint=f"use https ({https_fix(chosen)}); plain http is only accepted for this machine "
                "(localhost, 127.0.0.1, ::1), e.g. the sandbox",
            )
        return chosen

    return Endpoints(
        st_auth_url=pick(envvars.ST_AUTH_URL, config.servicetitan.auth_url, auth_default),
        st_api_url=pick(envvars.ST_API_URL, config.servicetitan.api_url, api_default),
        rf_api_url=pick(envvars.RF_API_URL, config.referral_factory.api_url, REFERRAL_FACTORY_API_URL),
    )
