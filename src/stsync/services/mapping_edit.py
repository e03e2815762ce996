"""Editing the mapping in the config file: ``stsync map set|unset|action|qualify|return-field|reset``.

Every edit is read → change → check → write: the config is loaded (or, before ``stsync
connect`` has written one, started from the seed's default), the change is validated the way
the mapping engine will use it (an unknown target or source field names the closest one; a
select value must be one of the target's options; a template's every field must exist), and
the file is rewritten by ``storage.config_writer.save_config`` (tomli-w, SPEC order, stsync's
own comments). Comments a person added by hand cannot survive that rewrite: the result counts
them so the command can say so.

``for_section(word)`` reads a ``--for`` option (leads | referrers | customers; ``UsageError``
with a suggestion otherwise), for these edits and for ``map show``.

What a person typed and the mapping refuses — an unknown target or field, an option a target
does not have, a fixed External Id — is a ``UsageError`` (exit 2), like every other mistake on
a command line (``map qualify --status Complted`` too); the config file's own problems stay
``ConfigError`` (exit 3).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

from stsync.errors import ConfigError, UsageError
from stsync.mapping.overview import ACTION_LABELS, hold_label, qualification_label
from stsync.mapping.validation import (
    check_booking_spec,
    check_booking_target,
    check_referrer_spec,
    check_referrer_target,
    check_return_field,
    missing_required,
)
from stsync.mapping.vocabulary import REQUIRED_REFERRER_TARGETS, select_options, target_kind
from stsync.servicetitan.vocabulary import JOB_STATUSES, REQUIRED_BOOKING_TARGETS, JobStatus
from stsync.storage.config import (
    MAX_HOLD_DAYS,
    VALUE_KINDS,
    BookingSettings,
    Config,
    FieldSpec,
    default_config,
    field_spec,
    load_config,
    parse_config_text,
)
from stsync.storage.config_writer import render_config, save_config, toml_value
from stsync.suggestions import did_you_mean
from stsync.vocabulary import Action, Kind, QualificationRule, ReturnValue, UnqualifyEvent

FOR_CHOICES = ("leads", "referrers", "customers")


def _words(vocabulary: type[StrEnum]) -> dict[str, Any]:
    """What a person may type for each word: the config's spelling or the CLI's (dashes)."""
    return {spelling: word for word in vocabulary for spelling in (word.value, _dashed(word))}


def _dashed(word: str) -> str:
    return word.replace("_", "-")


ACTION_WORDS = _words(Action)
RULE_WORDS = _words(QualificationRule)
UNQUALIFY_WORDS = _words(UnqualifyEvent)


@dataclass
class EditResult:
    config_path: str
    section: str  # leads | referrers | customers | qualification | return_fields | mapping
    change: str  # one line: what the file now says
    changed: bool
    created_config: bool = False  # no config yet: started from the seed's default mapping
    dropped_comments: int = 0  # hand-written comment lines the rewrite could not keep
    warnings: list[str] = field(default_factory=list)
    setup_required: list[str] = field(default_factory=list)  # the section's missing required targets

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# == the edits ==================================================================================


def set_field(config_path: Path, target: str, *, kind: str, value: Any, for_: str = "leads") -> EditResult:
    """``map set TARGET --from|--value|--select|--template X [--for ...]``."""
    section = for_section(for_)
    if kind not in VALUE_KINDS:
        raise UsageError(f"unknown value kind {kind!r}{did_you_mean(kind, VALUE_KINDS)}")
    target = target.strip()
    with _typed():
        if section == "customers":
            check_referrer_target(target)
        else:
            check_booking_target(target, section_name=section)
        value = _normalise_value(section, target, kind, value)
        spec = field_spec(kind, value)
        if section == "customers":
            check_referrer_spec(target, spec)
        else:
            check_booking_spec(target, spec, section_name=section)
    # The exact TOML spelling the file gets.
    shown = f"{section}: {target} = {{ {kind} = {toml_value(value)} }}"

    def change(config: Config) -> bool:
        fields = _fields_of(config, section)
        before = fields.get(target)
        fields[target] = spec
        return before != spec

    return _edit(config_path, section, shown, change)


def unset_field(config_path: Path, target: str, *, for_: str = "leads") -> EditResult:
    """``map unset TARGET [--for ...]``: the target no longer gets a value."""
    section = for_section(for_)
    target = target.strip()

    def change(config: Config) -> bool:
        fields = _fields_of(config, section)
        if target in fields:
            del fields[target]
            return True
        with _typed():
            if section == "customers":
                check_referrer_target(target)
            else:
                check_booking_target(target, section_name=section)
        return False

    result = _edit(config_path, section, f"{section}: {target} unmapped", change)
    if not result.changed:
        result.change = f"{section}: {target} was not mapped"
    elif section != "customers" and target in REQUIRED_BOOKING_TARGETS:
        result.warnings.append(f"{target} is required: bookings cannot be created until it is mapped again")
    elif section == "customers" and target in REQUIRED_REFERRER_TARGETS:
        result.warnings.append(f"{target} is required: customers cannot become referrers until it is mapped again")
    return result


def set_action(config_path: Path, section: str, action: str) -> EditResult:
    """``map action leads|referrers create-booking|nothing`` (setup guide Steps 4 and 7)."""
    if section not in ("leads", "referrers"):
        raise UsageError(f"map action takes leads or referrers, not {section!r}{did_you_mean(section, ('leads', 'referrers'))}")
    chosen = ACTION_WORDS.get(action.strip().casefold())
    if chosen is None:
        dashed = [_dashed(word) for word in Action]
        raise UsageError(f"unknown action {action!r}{did_you_mean(action, dashed)}", hint=f"use {' or '.join(dashed)}")
    notes: list[str] = []

    def change(config: Config) -> bool:
        settings = _booking_settings(config, section)
        before = settings.action
        settings.action = chosen
        if section == "referrers" and chosen == Action.CREATE_BOOKING and not settings.fields:
            # The Referrers tab maps the same booking fields; start from what leads use.
            settings.fields = dict(config.leads.fields)
            notes.append("the referrers had no field mapping: started from the leads' (see `stsync map show --for referrers`)")
        return before != chosen

    label = ACTION_LABELS[chosen]
    result = _edit(config_path, section, f"{section}: action = {chosen} ({label})", change)
    result.warnings.extend(notes)
    if chosen == Action.NOTHING and section == "leads":
        result.warnings.append('"Nothing to action": referred leads will not be sent to ServiceTitan')
    return result


def set_qualification(
    config_path: Path,
    rule: str,
    *,
    status: str | None = None,
    unqualify_on: list[str] | None = None,
    hold_days: int | None = None,
) -> EditResult:
    """``map qualify none|job-created|job-status [--status S] [--unqualify-on EVENT ...]
    [--hold-days N]`` (Step 6). Options left out keep their value."""
    chosen = RULE_WORDS.get(rule.strip().casefold())
    if chosen is None:
        raise UsageError(
            f"unknown qualification rule {rule!r}{did_you_mean(rule, [_dashed(word) for word in QualificationRule])}",
            hint="use none, job-created or job-status --status <status>",
        )
    job_status: JobStatus | None = None
    if status is not None:
        if chosen != QualificationRule.JOB_STATUS:
            raise UsageError("--status only goes with job-status", hint="stsync map qualify job-status --status Completed")
        job_status = next((s for s in JOB_STATUSES if s.casefold() == status.strip().casefold()), None)
        if job_status is None:
            raise UsageError(
                f"{status!r} is not a ServiceTitan job status{did_you_mean(status, JOB_STATUSES)}: "
                "job-status needs one of " + ", ".join(JOB_STATUSES),
                hint="e.g. stsync map qualify job-status --status Completed",
            )
    elif chosen == QualificationRule.JOB_STATUS:
        raise UsageError(
            "job-status needs --status: one of " + ", ".join(JOB_STATUSES),
            hint="e.g. stsync map qualify job-status --status Completed",
        )
    events: list[UnqualifyEvent] | None = None
    if unqualify_on is not None:
        events = []
        for word in unqualify_on:
            if word.strip().casefold() == "none":
                continue
            event = UNQUALIFY_WORDS.get(word.strip().casefold())
            if event is None:
                raise UsageError(
                    f"unknown --unqualify-on event {word!r}{did_you_mean(word, [_dashed(event) for event in UnqualifyEvent])}",
                    hint="use job-canceled, booking-dismissed, or none",
                )
            if event not in events:
                events.append(event)
    if hold_days is not None and (isinstance(hold_days, bool) or not 0 <= hold_days <= MAX_HOLD_DAYS):
        raise UsageError(
            f"--hold-days must be a whole number of days from 0 to {MAX_HOLD_DAYS}, not {hold_days!r}",
            hint="e.g. stsync map qualify job-status --status Completed --hold-days 14 (0: qualify at once)",
        )

    def change(config: Config) -> bool:
        qualification = config.leads.qualification
        before = (qualification.rule, qualification.job_status, list(qualification.unqualify_on), qualification.hold_days)
        qualification.rule = chosen
        qualification.job_status = job_status
        if events is not None:
            qualification.unqualify_on = events
        if hold_days is not None:
            qualification.hold_days = hold_days
        return before != (qualification.rule, qualification.job_status, list(qualification.unqualify_on), qualification.hold_days)

    label = qualification_label(chosen, job_status)
    shown = f"job_status = {job_status} ({label})" if chosen == QualificationRule.JOB_STATUS else f"{chosen} ({label})"
    if events is not None:
        # Both changes confirmed: what the rule is now, and what takes a qualification back.
        taken_back = ", ".join(events) if events else "none (a qualification is never taken back)"
        shown += f"; unqualify_on = {taken_back}"
    if hold_days is not None:
        shown += f"; hold_days = {hold_days} ({hold_label(hold_days)})"
    result = _edit(config_path, "qualification", f"leads.qualification: rule = {shown}", change)
    config = load_or_default(Path(config_path))[0]
    if chosen == QualificationRule.NONE and config.leads.qualification.hold_days:
        result.warnings.append(
            f"hold_days = {config.leads.qualification.hold_days} has no effect while the rule is none"
        )
    if chosen != QualificationRule.NONE and config.leads.action != Action.CREATE_BOOKING:
        result.warnings.append(
            'leads action is "Nothing to action": no booking is created, so no referral can qualify '
            "(stsync map action leads create-booking)"
        )
    return result


def set_return_field(config_path: Path, name: str, value: str) -> EditResult:
    """``map return-field NAME referral_link|referral_code``: a customer custom field to write back."""
    name = name.strip()
    value = value.strip().replace("-", "_")
    with _typed():
        check_return_field(name, value)

    def change(config: Config) -> bool:
        fields = config.customer_sync.return_fields
        before = fields.get(name)
        fields[name] = ReturnValue(value)
        return before != value

    result = _edit(config_path, "return_fields", f'customer_sync.return_fields: "{name}" = {value}', change)
    result.warnings.append(
        f"the ServiceTitan customer custom field {name!r} must exist and be of type Text: "
        "`stsync validate --online` checks it"
    )
    return result


def remove_return_field(config_path: Path, name: str) -> EditResult:
    """``map return-field NAME --remove``."""
    name = name.strip()

    def change(config: Config) -> bool:
        fields = config.customer_sync.return_fields
        if name not in fields:
            raise UsageError(
                f"no return field named {name!r}{did_you_mean(name, fields)}",
                hint="see them with `stsync map show --for customers`",
            )
        del fields[name]
        return True

    return _edit(config_path, "return_fields", f'customer_sync.return_fields: "{name}" removed', change)


def reset_mapping(config_path: Path) -> EditResult:
    """``map reset``: [leads], [referrers] and [customer_sync] back to the seed's defaults;
    the connection itself (tenant, booking provider, campaign), limits and webhook keys are kept."""

    def change(config: Config) -> bool:
        defaults = default_config()
        before = (config.leads, config.referrers, config.customer_sync)
        config.leads = defaults.leads
        config.referrers = defaults.referrers
        config.customer_sync = defaults.customer_sync
        return before != (config.leads, config.referrers, config.customer_sync)

    return _edit(config_path, "mapping", "leads, referrers and customer_sync reset to the default mapping", change)


# == plumbing ===================================================================================


@contextmanager
def _typed() -> Iterator[None]:
    """Checks of what the person typed: the mapping's refusal is a usage error (see the module
    docstring), in the same words and with the same hint."""
    try:
        yield
    except ConfigError as exc:
        raise UsageError(str(exc), hint=exc.hint) from None


def for_section(for_: str | None) -> str:
    """A ``--for`` word (any case; none means leads) → leads | referrers | customers."""
    chosen = (for_ or "leads").strip().casefold()
    if chosen not in FOR_CHOICES:
        raise UsageError(f"--for takes leads, referrers or customers, not {for_!r}{did_you_mean(for_, FOR_CHOICES)}")
    return chosen


def _booking_settings(config: Config, section: str) -> BookingSettings:
    return config.booking_section(Kind.LEAD if section == "leads" else Kind.REFERRER)


def _fields_of(config: Config, section: str) -> dict[str, FieldSpec]:
    if section == "customers":
        return config.customer_sync.fields
    return _booking_settings(config, section).fields


def _normalise_value(section: str, target: str, kind: str, value: Any) -> Any:
    """What the file should hold: options in their canonical spelling, IDs as numbers."""
    if not isinstance(value, str):
        return value
    text = value.strip()
    if section == "customers":
        return text
    if kind == "select":
        options = select_options(target)
        return next((o for o in options if o.casefold() == text.casefold()), text)
    if kind == "value" and target_kind(target) == "integer" and text.isdigit():
        return int(text)
    return text


def load_or_default(path: Path) -> tuple[Config, bool, str | None]:
    """(config, created, the file's text) — a missing file starts from the seed's default."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return default_config(), True, None
    except (OSError, UnicodeDecodeError):
        return load_config(path), False, None  # load_config words the failure
    return parse_config_text(text, path=path), False, text


def _edit(config_path: Path, section: str, shown: str, change: Callable[[Config], bool]) -> EditResult:
    path = Path(config_path)
    config, created, text = load_or_default(path)
    original_render = render_config(config)
    edited = config.model_copy(deep=True)
    changed = change(edited)
    dropped = 0
    if changed or created:
        new_render = render_config(edited)
        if text is not None:
            kept = set(comment_lines(original_render)) | set(comment_lines(new_render))
            dropped = sum(1 for comment in comment_lines(text) if comment not in kept)
        save_config(edited, path)
    result = EditResult(
        config_path=str(path), section=section, change=shown, changed=changed, created_config=created, dropped_comments=dropped
    )
    if section in ("leads", "referrers"):
        settings = _booking_settings(edited, section)
        missing = missing_required(settings)
        if settings.action == Action.CREATE_BOOKING and missing:
            result.setup_required = missing
    return result


def comment_lines(text: str) -> list[str]:
    """The text of every TOML comment in ``text`` (a ``#`` outside any string), stripped."""
    comments: list[str] = []
    in_string: str | None = None  # the delimiter of the open string: ", ', \"\"\" or '''
    i, n = 0, len(text)
    while i < n:
        ch = text[i]
        if in_string is not None:
            if in_string in ('"', '"""') and ch == "\\":
                i += 2
                continue
            if text.startswith(in_string, i):
                i += len(in_string)
                in_string = None
                continue
            if ch == "\n" and len(in_string) == 1:
                in_string = None  # an unterminated one-line string: the loader reports it
            i += 1
            continue
        if ch == "#":
            end = text.find("\n", i)
            end = n if end == -1 else end
            comment = text[i + 1 : end].strip()
            if comment:
                comments.append(comment)
            i = end
            continue
        for delimiter in ('"""', "'''", '"', "'"):
            if text.startswith(delimiter, i):
                in_string = delimiter
                i += len(delimiter)
                break
        else:
            i += 1
    return comments
