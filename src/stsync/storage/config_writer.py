"""Writing the config file: ``render_config`` (the model as commented TOML text) and
``save_config`` (that text, atomically).

Guarantees:
- ``render_config(config)`` lays the file out in SPEC order with stsync's own comments;
  tomli-w formats every key and value. ``examples/config.toml`` IS
  ``render_config(default_config(...))`` (a test checks it byte for byte).
- ``save_config(config, path)`` re-reads the text it is about to write (``parse_config_text``):
  stsync never writes a config it could not load. The file is replaced by rename (temp file,
  fsync), keeping the old file's permissions. Failures are ``ConfigError`` (exit 3).
- Comments a person added by hand are not kept: the header says so.
- ``toml_value(v)``: a value exactly as the file spells it (``map set`` echoes it so).
"""

from __future__ import annotations

import os
import tempfile
from enum import StrEnum
from pathlib import Path
from typing import Any

import tomli_w

from stsync import envvars
from stsync.durations import format_duration
from stsync.errors import ConfigError
from stsync.servicetitan.vocabulary import BOOKING_TARGETS, JOB_STATUSES, REQUIRED_BOOKING_TARGETS
from stsync.storage.config import (
    MAX_HOLD_DAYS,
    MAX_PAGE_SIZE,
    PRODUCTION_ENDPOINTS,
    REFERRAL_FACTORY_API_URL,
    Config,
    FieldSpec,
    Limits,
    LoggingSettings,
    NotifySettings,
    ScheduleSettings,
    ServiceTitanSettings,
    parse_config_text,
    toml_key,
)
from stsync.vocabulary import (
    DEFAULT_JOB_STATUS,
    Action,
    Environment,
    LogFormat,
    QualificationRule,
    ReturnValue,
    SecretsStore,
    SyncMode,
    UnqualifyEvent,
)

# --------------------------------------------------------------------------------------
# Rendering (tomli-w formats every key and value; the layout and comments are ours)
# --------------------------------------------------------------------------------------
_COMMENT_COLUMN = 45


def toml_value(value: Any) -> str:
    """A value exactly as the file spells it (``map set`` echoes it so); lists on one line."""
    if isinstance(value, (list, tuple)):
        # tomli-w spreads arrays over lines; our lists are short lists of scalars.
        return "[" + ", ".join(toml_value(item) for item in value) + "]"
    return tomli_w.dumps({"v": value})[len("v = ") : -1]


def _line(key: str, value: Any, comment: str | None = None) -> str:
    text = f"{toml_key(key)} = {toml_value(value)}"
    return _with_comment(text, comment)


def _with_comment(text: str, comment: str | None) -> str:
    if not comment:
        return text
    return f"{text.ljust(_COMMENT_COLUMN - 1)} # {comment}" if len(text) < _COMMENT_COLUMN - 1 else f"{text}  # {comment}"


def _spec_line(target: str, spec: FieldSpec, *, labelled: bool) -> str:
    text = f"{toml_key(target)} = {{ {spec.kind} = {toml_value(spec.payload)} }}"
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

    connection_comment = "names this connection's state directory and keyring entries"
    if config.connection is None:
        out.append(_with_comment('# connection = "default"', f"{connection_comment}; set by `stsync connect`"))
    else:
        out.append(_line("connection", config.connection, f"{connection_comment}; one config file per name"))
    out.append("")

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
    out.append(
        _optional_line(
            "auth_url", st.auth_url, f'"{PRODUCTION_ENDPOINTS[0]}"', f"endpoint overrides; {envvars.ST_AUTH_URL.name} wins"
        )
    )
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

    out.append("# Where `stsync connect` stored the secrets (never the secrets themselves).")
    out.append("[secrets]")
    store_comment = f"{_choices(SecretsStore)}: the OS keyring, or a 0600 file in the state directory"
    out.append(_line("store", config.secrets.store, store_comment))
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
        out.append(_with_comment(f"# unqualify_on = {toml_value([str(event) for event in UnqualifyEvent])}", unqualify_comment))
    out.append(
        _line(
            "hold_days",
            qualification.hold_days,
            f"0–{MAX_HOLD_DAYS}: days the job must keep meeting the rule, not canceled, before qualifying",
        )
    )
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

    out.append("# stsync stays under these: ServiceTitan documents 60 calls per second, Referral Factory 600 per")
    out.append("# minute. Retries give up after retry_budget_seconds; workers run batch work in parallel.")
    out.append("# A create whose answer was lost is looked up again for lookup_grace_seconds, never re-sent by that run.")
    out.append("[limits]")
    for key in Limits.model_fields:
        out.append(_line(key, getattr(limits, key)))
    out.append("")

    out.extend(_schedule_lines(config.schedule))
    out.append("")
    out.extend(_notify_lines(config.notify))
    out.append("")
    out.extend(_logging_lines(config.logging))
    out.append("")

    webhook = config.webhook
    out.append("# `stsync serve`: connections held open at most, and worker threads (paced by [limits]).")
    out.append("[webhook]")
    proxy_comment = "the reverse proxy; X-Forwarded-* from others is dropped"
    out.append(_optional_line("trusted_proxy", webhook.trusted_proxy, '"127.0.0.1"', proxy_comment))
    out.append(_line("max_connections", webhook.max_connections))
    out.append(_line("workers", webhook.workers))
    out.append("")
    aliases = webhook.aliases
    if aliases:
        out.append("# Extra payload key spellings `stsync serve` accepts: lead field = [keys].")
        out.append("[webhook.aliases]")
        out.extend(_line(name, list(keys)) for name, keys in aliases.items())
    else:
        out.append(_with_comment("# [webhook.aliases]", "extra payload key spellings `stsync serve` accepts"))
        out.append('# referral_code = ["code", "referralCode"]')
    return "\n".join(out) + "\n"


_SCHEDULE_COMMENTS = {
    "push": "push-lead --new",
    "qualify": "qualify",
    "sync": "sync-customers --ongoing",
    "full_sync": "sync-customers --ongoing --full",
    "full_qualify": "qualify --full (when qualify has it)",
    "jitter": "each start waits up to this (at most half the interval)",
    "overdue_after": "overdue after this many intervals without success",
}


def _default_or_line(key: str, value: Any, default: Any, text: str, comment: str) -> str:
    """A value left at its default is shown commented out: the file says what applies."""
    line = f"{toml_key(key)} = {text}"
    return _with_comment(line if value != default else f"# {line}", comment)


def _schedule_lines(schedule: ScheduleSettings) -> list[str]:
    out = [
        "# `stsync run`: how often each job runs (\"30s\", \"5m\", \"1h\", \"7d\", seconds, or \"off\");",
        "# `stsync status` and the overdue alert expect the same when cron runs the jobs.",
        "[schedule]",
    ]
    for key, info in ScheduleSettings.model_fields.items():
        value = getattr(schedule, key)
        text = toml_value(value) if key == "overdue_after" else toml_value(format_duration(value))
        if key == "overdue_after" and float(value).is_integer():
            text = toml_value(int(value))
        out.append(_default_or_line(key, value, info.default, text, _SCHEDULE_COMMENTS[key]))
    return out


def _notify_lines(notify: NotifySettings) -> list[str]:
    fields = NotifySettings.model_fields
    timeout = notify.timeout_seconds
    return [
        "# Alerts when a human must act. The URLs hold tokens: prefer the environment variables.",
        "[notify]",
        _optional_line(
            "webhook_url",
            notify.webhook_url,
            '"https://hooks.slack.com/services/…"',
            f"JSON alerts; {envvars.NOTIFY_WEBHOOK_URL.name} wins",
        ),
        _optional_line(
            "ping_url",
            notify.ping_url,
            '"https://hc-ping.com/<key>/stsync-{job}"',
            f"healthchecks.io style; {envvars.NOTIFY_PING_URL.name} wins",
        ),
        _default_or_line(
            "remind_after",
            notify.remind_after,
            fields["remind_after"].default,
            toml_value(format_duration(notify.remind_after)),
            "a problem still there is reported again after this long",
        ),
        _default_or_line(
            "timeout_seconds",
            timeout,
            fields["timeout_seconds"].default,
            toml_value(int(timeout) if float(timeout).is_integer() else timeout),
            "each send gives up after this (and 1 s more)",
        ),
    ]


def _logging_lines(logging_settings: LoggingSettings) -> list[str]:
    value = logging_settings.format
    choices = " | ".join(f'"{word}"' for word in LogFormat)
    return [
        "[logging]",
        _default_or_line(
            "format",
            value,
            LoggingSettings.model_fields["format"].default,
            toml_value(str(value)),
            f"{choices}; {envvars.LOG_FORMAT.name} and --log-format win",
        ),
    ]


def _optional_line(key: str, value: Any, placeholder: str, comment: str) -> str:
    if value is None:
        return _with_comment(f"# {key} = {placeholder}", comment)
    return _line(key, value, comment)


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
