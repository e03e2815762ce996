"""The connection's TOML config (SPEC §3): pydantic models, load with precise errors, save.

Loading tells the user exactly where a problem is: TOML syntax errors carry the file, line and
column; schema errors carry the key path (``leads.fields.name: unknown value kind 'frm' (did you
mean 'from'?)``); unknown keys are errors with a suggestion. Which *targets* and *sources* a
mapping may name is the mapping engine's business (services/mapping.py): here a field table is
an ordered ``dict[str, FieldSpec]``.

Saving writes the file in SPEC order with the same comments as ``examples/config.toml`` (the
example IS ``save_config(default_config(...))``), values formatted by tomli-w. Comments a user
added by hand are not kept: the file says so at the top.
"""

from __future__ import annotations

import difflib
import os
import re
import string
import tempfile
import tomllib
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal, Union

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
from stsync.errors import ConfigError
from stsync.servicetitan.vocabulary import BOOKING_TARGETS, JOB_STATUSES, REQUIRED_BOOKING_TARGETS
from stsync.vocabulary import (
    DEFAULT_JOB_STATUS,
    Action,
    Environment,
    QualificationRule,
    ReturnValue,
    SyncMode,
    UnqualifyEvent,
)

VALUE_KINDS = ("from", "value", "select", "template")
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


def _suggestion(word: str, choices: Any) -> str:
    """`` (did you mean 'x'?)`` when one choice is close, else ``""`` (case differences count as close)."""
    choices = [str(c) for c in choices]
    for choice in choices:
        if choice.lower() == str(word).lower():
            return f" (did you mean '{choice}'?)"
    close = difflib.get_close_matches(str(word), choices, n=1, cutoff=0.6)
    return f" (did you mean '{close[0]}'?)" if close else ""


def _problem(kind: str, message: str, **context: Any) -> PydanticCustomError:
    """A validation error whose text is final (pydantic would treat braces as placeholders)."""
    return PydanticCustomError(kind, "{message}", {"message": message, **context})


def _one_of(choices: Any) -> str:
    return ", ".join(f"'{c}'" for c in choices)


# --------------------------------------------------------------------------------------
# Field specs: how one target's value is made
# --------------------------------------------------------------------------------------
class _Spec(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True, populate_by_name=True)
    kind: ClassVar[str]
    label: ClassVar[str]  # the seed's "Data Type" column


class FromField(_Spec):
    """Dynamic Value: a source field (``{ from = "first_name" }``)."""

    kind: ClassVar[str] = "from"
    label: ClassVar[str] = "Dynamic Value"
    from_: str = Field(alias="from", min_length=1)

    @property
    def text(self) -> str:
        return self.from_


def _check_scalar(value: Any) -> Any:
    if not isinstance(value, (str, bool, int)):
        raise _problem("fixed_value_type", f"must be text, an integer or true/false, not {_type_name(value)} {value!r}")
    return value


class FixedValue(_Spec):
    """Fixed Value (Manual Input): the same text or number for every record."""

    kind: ClassVar[str] = "value"
    label: ClassVar[str] = "Fixed Value (Manual Input)"
    value: Annotated[Union[str, bool, int], BeforeValidator(_check_scalar)]

    @property
    def text(self) -> str:
        if isinstance(self.value, bool):
            return "true" if self.value else "false"
        return str(self.value)


class SelectValue(_Spec):
    """Manual Select: one of the target's options (which ones is the mapping engine's check)."""

    kind: ClassVar[str] = "select"
    label: ClassVar[str] = "Fixed Value (Manual Select)"
    select: str = Field(min_length=1)

    @property
    def text(self) -> str:
        return self.select


class TemplateValue(_Spec):
    """Several source fields joined: ``{ template = "{first_name} {meta.Last Name}" }``."""

    kind: ClassVar[str] = "template"
    label: ClassVar[str] = "Template"
    template: str = Field(min_length=1)

    @field_validator("template")
    @classmethod
    def _well_formed(cls, template: str) -> str:
        try:
            parsed = list(string.Formatter().parse(template))
        except ValueError as exc:
            raise _problem("template_syntax", f"template is not well formed: {exc}") from None
        names = [name for _, name, _, _ in parsed if name is not None]
        if any(not name.strip() for name in names):
            raise _problem("template_syntax", "template has an empty {}: name a field inside the braces")
        if not names:
            raise _problem(
                "template_syntax", "template names no field: use { value = ... } for fixed text, or add {first_name}-style fields"
            )
        return template

    @property
    def text(self) -> str:
        return self.template


SPEC_CLASSES: dict[str, type[_Spec]] = {"from": FromField, "value": FixedValue, "select": SelectValue, "template": TemplateValue}


def _check_spec_shape(raw: Any) -> Any:
    """Exactly one known kind per field; a helpful message for everything else."""
    if isinstance(raw, _Spec):
        return raw
    if not isinstance(raw, dict):
        shown = f'"{raw}"' if isinstance(raw, str) else repr(raw)
        raise _problem("field_spec_shape", f"must be a table with one of from / value / select / template, e.g. {{ from = {shown} }}")
    if not raw:
        raise _problem("field_spec_shape", "is empty: give one of from / value / select / template")
    unknown = [key for key in raw if key not in VALUE_KINDS]
    if unknown:
        key = unknown[0]
        raise _problem("field_spec_kind", f"unknown value kind '{key}'{_suggestion(key, VALUE_KINDS)}")
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
    Union[
        Annotated[FromField, Tag("from")],
        Annotated[FixedValue, Tag("value")],
        Annotated[SelectValue, Tag("select")],
        Annotated[TemplateValue, Tag("template")],
    ],
    Discriminator(_spec_kind),
    BeforeValidator(_check_spec_shape),
]


def field_spec(kind: str, value: Any) -> FromField | FixedValue | SelectValue | TemplateValue:
    """A spec from a kind name and its value (``map set --from F`` → ``field_spec("from", F)``).

    Raises ConfigError naming the problem (an empty value, a malformed template, a bad kind).
    """
    if kind not in SPEC_CLASSES:
        raise ConfigError(f"unknown value kind '{kind}'{_suggestion(kind, VALUE_KINDS)}")
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
    from urllib.parse import urlsplit

    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.netloc or parts.query or parts.fragment:
        raise _problem("url", f"must be an http(s) URL like https://api.example.com, not {value!r}")
    return value


# Names that are always dotted (SPEC §3): `address.street = "x"` is target "address.street".
_DOTTED_PREFIXES = ("address", "meta", "custom", "contact", "customer")


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
            and (key in _DOTTED_PREFIXES or all(isinstance(v, dict) for v in value.values()))
        )
        items = [(f"{key}.{k}", v) for k, v in _flatten_dotted(value).items()] if nested else [(key, value)]
        for name, spec in items:
            if name in flat:
                raise _problem("duplicate_target", f"'{name}' is given twice (quoted and dotted)")
            flat[name] = spec
    return flat


FieldTable = Annotated[dict[str, FieldSpec], BeforeValidator(_flatten_dotted)]


class _Section(BaseModel):
    """Strict (TOML gives real types), unknown keys rejected with a suggestion."""

    model_config = ConfigDict(extra="forbid", strict=True, validate_default=True)

    @model_validator(mode="before")
    @classmethod
    def _reject_unknown_keys(cls, data: Any) -> Any:
        if isinstance(data, dict):
            known = [info.alias or name for name, info in cls.model_fields.items()]
            for key in data:
                if key not in known and key not in cls.model_fields:
                    raise _problem("unknown_key", f"unknown key '{key}'{_suggestion(key, known)}", key=key)
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


class Qualification(_Section):
    rule: RuleWord = QualificationRule.NONE
    job_status: Literal[JOB_STATUSES] | None = None  # type: ignore[valid-type]
    unqualify_on: list[UnqualifyWord] = Field(default_factory=list)

    @model_validator(mode="after")
    def _default_status(self) -> "Qualification":
        # "rule = job_status" alone means the seed's example: the job reached Completed.
        if self.rule == QualificationRule.JOB_STATUS and self.job_status is None:
            self.job_status = DEFAULT_JOB_STATUS
        return self


class LeadSettings(_Section):
    action: ActionWord = Action.CREATE_BOOKING
    fields: FieldTable = Field(default_factory=dict)
    qualification: Qualification = Field(default_factory=Qualification)


class ReferrerSettings(_Section):
    action: ActionWord = Action.NOTHING
    fields: FieldTable = Field(default_factory=dict)


class CustomerSyncSettings(_Section):
    mode: SyncModeWord = SyncMode.ONE_TIME
    include_inactive: bool = False
    fields: FieldTable = Field(default_factory=dict)
    return_fields: dict[str, ReturnValueWord] = Field(default_factory=dict)


class Limits(_Section):
    servicetitan_per_second: int = Field(60, ge=1)
    referral_factory_per_minute: int = Field(600, ge=1)
    retry_budget_seconds: int = Field(120, ge=0)
    workers: int = Field(8, ge=1, le=64)


class WebhookSettings(_Section):
    """Extra key spellings ``stsync serve`` accepts in a payload: lead field → alternative keys."""

    aliases: dict[str, list[Annotated[str, Field(min_length=1)]]] = Field(default_factory=dict)


class Config(_Section):
    servicetitan: ServiceTitanSettings = Field(default_factory=ServiceTitanSettings)
    referral_factory: ReferralFactorySettings = Field(default_factory=ReferralFactorySettings)
    leads: LeadSettings = Field(default_factory=LeadSettings)
    referrers: ReferrerSettings = Field(default_factory=ReferrerSettings)
    customer_sync: CustomerSyncSettings = Field(default_factory=CustomerSyncSettings)
    limits: Limits = Field(default_factory=Limits)
    webhook: WebhookSettings = Field(default_factory=WebhookSettings)


# --------------------------------------------------------------------------------------
# ValidationError → key paths a person can read
# --------------------------------------------------------------------------------------
_BARE_KEY = re.compile(r"^[A-Za-z0-9_-]+$")
_TOML_TYPE = {str: "text", int: "an integer", float: "a number", bool: "true/false", list: "a list", dict: "a table"}


def format_key_path(parts: tuple[Any, ...] | list[Any]) -> str:
    """``("customer_sync", "return_fields", "Referral Link")`` → ``customer_sync.return_fields."Referral Link"``."""
    out = ""
    for part in parts:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            text = str(part) if _BARE_KEY.match(str(part)) else tomli_w.dumps({str(part): 0})[: -len(" = 0\n")]
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
        return f"unknown value {given!r} (expected one of: {_one_of(expected)}){_suggestion(given, expected)}"
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
        if error["type"] == "unknown_key":
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


def save_config(config: Config, path: str | os.PathLike[str]) -> None:
    """Write ``config`` atomically (temp file + rename), in SPEC order, commented.

    The text is re-read before it replaces the file: stsync never writes a config it could not
    load (e.g. a model changed with ``model_copy(update=...)``, which skips validation).
    """
    path = Path(path)
    text = render_config(config)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:  # e.g. a command-line argument with undecodable bytes
        raise ConfigError(
            f"cannot write {path}: a value contains {text[exc.start:exc.end]!r}, which is not valid text",
            hint="re-type the value (the file is UTF-8)",
        ) from None
    parse_config_text(text, path=path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        mode = path.stat().st_mode & 0o777
    except FileNotFoundError:
        umask = os.umask(0)
        os.umask(umask)
        mode = 0o666 & ~umask
    fd, temp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(temp, mode)
        os.replace(temp, path)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise


# --------------------------------------------------------------------------------------
# Rendering (tomli-w formats every key and value; the layout and comments are ours)
# --------------------------------------------------------------------------------------
_COMMENT_COLUMN = 45


def _toml_key(key: str) -> str:
    return tomli_w.dumps({key: 0})[: -len(" = 0\n")]


def _toml_value(value: Any) -> str:
    if isinstance(value, (list, tuple)):
        # tomli-w spreads arrays over lines; our lists are short lists of scalars.
        return "[" + ", ".join(_toml_value(item) for item in value) + "]"
    return tomli_w.dumps({"v": value})[len("v = ") : -1]


toml_key = _toml_key  # public names: `map` shows values exactly as the file spells them
toml_value = _toml_value


def _line(key: str, value: Any, comment: str | None = None) -> str:
    text = f"{_toml_key(key)} = {_toml_value(value)}"
    return _with_comment(text, comment)


def _with_comment(text: str, comment: str | None) -> str:
    if not comment:
        return text
    return f"{text.ljust(_COMMENT_COLUMN - 1)} # {comment}" if len(text) < _COMMENT_COLUMN - 1 else f"{text}  # {comment}"


def _spec_line(target: str, spec: FromField | FixedValue | SelectValue | TemplateValue, *, labelled: bool) -> str:
    raw = getattr(spec, "from_" if spec.kind == "from" else spec.kind)
    text = f"{_toml_key(target)} = {{ {spec.kind} = {_toml_value(raw)} }}"
    return _with_comment(text, spec.label if labelled else None)


_HEADER = [
    "# stsync: one connection = a ServiceTitan tenant + booking provider + a Referral Factory campaign.",
    "# No secrets here: they live in the OS keyring or in STSYNC_* environment variables (`stsync connect`).",
    "# `stsync connect` and `stsync map ...` rewrite this file with these comments; notes you add are not kept.",
    "# Check it with `stsync validate`; see the mapping with `stsync map show`.",
]

_LEAD_SOURCES = (
    "first_name, email, referral_code, referral_link, campaign_id,",
    "campaign_name, source, signed_up_at, referrer_first_name, referrer_email, referrer_code, meta.<form field label>",
)


def _booking_fields_help() -> list[str]:
    optional = [t for t in BOOKING_TARGETS if t not in REQUIRED_BOOKING_TARGETS and not t.startswith("address.")]
    return [
        "# ServiceTitan booking field = how its value is made:",
        '#   { from = "first_name" }            Dynamic Value: a Referral Factory field',
        '#   { value = "Referral" }             Fixed Value (Manual Input): the same for every lead',
        '#   { select = "yes" }                 Manual Select: is_first_time_client yes|no,',
        "#                                      customer_type Residential|Commercial, priority Low|Normal|High|Urgent",
        '#   { template = "{first_name} {meta.Last Name}" }   several fields joined',
        f"# Required (*): {', '.join(REQUIRED_BOOKING_TARGETS)}.",
        '# Optional: phone, "address.street" (unit, city, state, zip, country),',
        f"#   {', '.join(optional[1:])}.",
        f"# Referral Factory fields: {_LEAD_SOURCES[0]}",
        f"#   {_LEAD_SOURCES[1]}.",
    ]


def _choices(vocabulary: type[StrEnum]) -> str:
    """``"one_time" | "ongoing"``: a vocabulary's values as the comment beside its key."""
    return " | ".join(f'"{word}"' for word in vocabulary)


def render_config(config: Config) -> str:
    """The config as TOML text, in SPEC order, with the example's comments."""
    st, rf, leads, referrers, sync, limits = (
        config.servicetitan,
        config.referral_factory,
        config.leads,
        config.referrers,
        config.customer_sync,
        config.limits,
    )
    out: list[str] = [*_HEADER, ""]

    out.append("[servicetitan]")
    out.append(_line("environment", st.environment, _choices(Environment)))
    identity = (
        ("tenant_id", st.tenant_id, "Settings → Integrations → API Application Access", "1234567"),
        ("client_id", st.client_id, None, '"cid.xxxxx"'),
        ("booking_provider", st.booking_provider, "the \"Allowed 'booking_provider' value\"", "42"),
    )
    for key, value, comment, placeholder in identity:
        if value is None:
            out.append(_with_comment(f"# {key} = {placeholder}", "set by `stsync connect`"))
        else:
            out.append(_line(key, value, comment))
    out.append(_optional_line("auth_url", st.auth_url, f'"{PRODUCTION_ENDPOINTS[0]}"', f"endpoint overrides; {envvars.ST_AUTH_URL.name} wins"))
    out.append(_optional_line("api_url", st.api_url, f'"{PRODUCTION_ENDPOINTS[1]}"', f"{envvars.ST_API_URL.name} wins"))
    page_size_comment = f"rows per page when listing (at most {MAX_PAGE_SIZE})"
    if st.page_size == ServiceTitanSettings.model_fields["page_size"].default:
        out.append(_with_comment(f"# page_size = {st.page_size}", page_size_comment))
    else:
        out.append(_line("page_size", st.page_size, page_size_comment))
    out.append("")

    out.append("[referral_factory]")
    if rf.campaign_id is None:
        out.append(_with_comment("# campaign_id = 7", "set by `stsync connect`"))
    else:
        out.append(_line("campaign_id", rf.campaign_id, "Edit Campaign → Integration tab → API"))
    out.append(_optional_line("api_url", rf.api_url, f'"{REFERRAL_FACTORY_API_URL}"', f"{envvars.RF_API_URL.name} wins"))
    out.append("")

    out.append("[leads]")
    out.append(_line("action", leads.action, f"{_choices(Action)} (when a lead joins)"))
    out.append("")
    out.extend(_booking_fields_help())
    out.append("[leads.fields]")
    out.extend(_spec_line(target, spec, labelled=True) for target, spec in leads.fields.items())
    out.append("")

    qualification = leads.qualification
    out.append("[leads.qualification]")
    out.append(_line("rule", qualification.rule, _choices(QualificationRule)))
    status_comment = f'with rule = "{QualificationRule.JOB_STATUS}": ' + "|".join(JOB_STATUSES)
    if qualification.job_status is None:
        out.append(_with_comment(f'# job_status = "{DEFAULT_JOB_STATUS}"', status_comment))
    else:
        out.append(_line("job_status", qualification.job_status, status_comment))
    unqualify_comment = "take a qualification back when this happens"
    if qualification.unqualify_on:
        out.append(_line("unqualify_on", list(qualification.unqualify_on), unqualify_comment))
    else:
        out.append(_with_comment(f"# unqualify_on = {_toml_value([str(event) for event in UnqualifyEvent])}", unqualify_comment))
    out.append("")

    out.append("[referrers]")
    out.append(_line("action", referrers.action, f"{_choices(Action)} (when a referrer joins)"))
    if referrers.fields:
        out.append("")
        out.append("[referrers.fields]")
        out.extend(_spec_line(target, spec, labelled=True) for target, spec in referrers.fields.items())
    else:
        out.append("# [referrers.fields] — same shape as [leads.fields]")
    out.append("")

    out.append("[customer_sync]")
    out.append(_line("mode", sync.mode, _choices(SyncMode)))
    out.append(_line("include_inactive", sync.include_inactive, "also enrol inactive customers"))
    out.append("")
    out.append("# Referral Factory user field = value from the ServiceTitan customer: customer.id, customer.name,")
    out.append("# customer.first_name, customer.last_name, customer.type, address.*, contact.email, contact.phone,")
    out.append("# custom.<custom field name> (same four kinds as [leads.fields]).")
    out.append("[customer_sync.fields]")
    out.extend(_spec_line(target, spec, labelled=False) for target, spec in sync.fields.items())
    if "meta.Last Name" not in sync.fields:
        out.append('# "meta.Last Name" = { from = "customer.last_name" }')
    out.append("")
    out.append(f"# ServiceTitan customer custom field = Referral Factory value written back: {' | '.join(ReturnValue)}")
    out.append("[customer_sync.return_fields]")
    out.extend(_line(name, value) for name, value in sync.return_fields.items())
    out.append("")

    out.append("# stsync stays under these (SPEC §6.4); retries give up after retry_budget_seconds.")
    out.append("[limits]")
    for key in Limits.model_fields:
        out.append(_line(key, getattr(limits, key)))
    out.append("")

    aliases = config.webhook.aliases
    if aliases:
        out.append("# Extra payload key spellings `stsync serve` accepts: lead field = [keys].")
        out.append("[webhook.aliases]")
        out.extend(_line(name, list(keys)) for name, keys in aliases.items())
    else:
        out.append(_with_comment("# [webhook.aliases]", "extra payload key spellings `stsync serve` accepts"))
        out.append('# referral_code = ["code", "referralCode"]')
    return "\n".join(out) + "\n"


def _optional_line(key: str, value: Any, placeholder: str, comment: str) -> str:
    if value is None:
        return _with_comment(f"# {key} = {placeholder}", comment)
    return _line(key, value, comment)


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
                **{k: v for k, v in {"tenant_id": tenant_id, "client_id": client_id, "booking_provider": booking_provider}.items() if v is not None},
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
        chosen = envvars.resolve(variable, configured=configured, default=default)
        return str(chosen).rstrip("/")

    return Endpoints(
        st_auth_url=pick(envvars.ST_AUTH_URL, config.servicetitan.auth_url, auth_default),
        st_api_url=pick(envvars.ST_API_URL, config.servicetitan.api_url, api_default),
        rf_api_url=pick(envvars.RF_API_URL, config.referral_factory.api_url, REFERRAL_FACTORY_API_URL),
    )


__all__ = [
    "Config",
    "ConfigSchemaError",
    "ConfigSyntaxError",
    "CustomerSyncSettings",
    "Endpoints",
    "FieldSpec",
    "FixedValue",
    "FromField",
    "LeadSettings",
    "Limits",
    "Qualification",
    "ReferralFactorySettings",
    "ReferrerSettings",
    "SelectValue",
    "ServiceTitanSettings",
    "TemplateValue",
    "WebhookSettings",
    "default_config",
    "field_spec",
    "format_key_path",
    "load_config",
    "parse_config",
    "parse_config_text",
    "render_config",
    "resolve_endpoints",
    "save_config",
    "toml_key",
    "toml_value",
]
