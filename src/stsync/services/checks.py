"""The checks behind ``stsync validate`` (and reused by ``stsync diagnose``).

Each check is one small function returning one ``Check``: PASS, WARN or FAIL, what it found,
and — when it is not a pass — what to do about it. A check never raises for the condition it
checks: a wrong booking provider, a missing secret or a paused campaign is a FAIL, not an
exception. Only a bug escapes.

Offline checks read the config (and which secrets exist, never their values). Online checks
take an open ``Connection`` and make one or two read-only calls each, in the order a person
would debug: token → app key → booking provider → Referral Factory key → campaign → return
fields. The wording of the failures is the troubleshooting guide's where it has one.
"""

from __future__ import annotations

import re
import weakref
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from stsync import credentials
from stsync.credentials import Secret
from stsync.errors import AuthError, ConfigError, StsyncError
from stsync.mapping.overview import ACTION_LABELS
from stsync.mapping.return_fields import resolve_custom_field_type
from stsync.mapping.validation import (
    booking_mapping_problems,
    check_return_field,
    customer_mapping_problems,
    incomplete_address_parts,
    missing_required,
)
from stsync.mapping.vocabulary import BOOKING_TARGET_LABELS
from stsync.servicetitan.vocabulary import JOB_STATUSES
from stsync.vocabulary import Action, Environment, Kind, QualificationRule, UnqualifyEvent

if TYPE_CHECKING:
    from stsync.connection import Connection
    from stsync.storage.config import Config
    from stsync.storage.paths import ConnectionPaths

Status = Literal["pass", "warn", "fail"]
PASS: Status = "pass"
WARN: Status = "warn"
FAIL: Status = "fail"

# Categories group the table and tell diagnose which part of the setup a check covers.
CONFIG = "config"
SECRETS = "secrets"
MAPPING = "mapping"
SERVICETITAN = "servicetitan"
REFERRAL_FACTORY = "referral_factory"


# The troubleshooting guide's "Common causes", verbatim where a check matches one.
NOTHING_TO_ACTION = (
    '"Nothing to action" is selected — if the Leads tab dropdown is set to "Nothing to action," '
    "no bookings will be created in ServiceTitan"
)
REQUIRED_NOT_MAPPED = (
    "Required fields not mapped — if any required field in the mapping is empty, the integration will not send data"
)
BOOKING_PROVIDER_INCORRECT = (
    "Booking Provider Value is incorrect — if the wrong Booking Provider Value was entered during the "
    "Finalize step, bookings may fail"
)
BOOKING_PROVIDER_FIX = (
    "You can find the correct value in your ServiceTitan account under Settings → Integrations → "
    "API Application Access → your Referral Factory app details (\"Allowed 'booking_provider' value\"); "
    "then `stsync connect --booking-provider <value>`"
)


@dataclass(frozen=True)
class Check:
    name: str
    status: Status
    message: str
    fix: str | None = None
    category: str = CONFIG
    # The SPEC §5 exit code this failure belongs to (3 config, 4 auth, 6 temporary, 1 other).
    exit_code: int | None = None

    @property
    def passed(self) -> bool:
        return self.status == PASS

    @property
    def failed(self) -> bool:
        return self.status == FAIL

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _fail(name: str, message: str, fix: str | None, category: str, exit_code: int = 3) -> Check:
    return Check(name, FAIL, message, fix, category, exit_code)


def _from_error(name: str, exc: StsyncError, category: str) -> Check:
    """A FAIL carrying an error's own words and exit code (auth 4, temporary 6, config 3)."""
    return Check(name, FAIL, str(exc), exc.hint, category, exc.exit_code)


# == offline ====================================================================================


def load_config_check(config_path: Path) -> tuple[Check, "Config | None"]:
    """The config file: TOML syntax (line and column) and schema (key paths)."""
    from stsync.storage.config import load_config

    name = "Config file"
    try:
        config = load_config(config_path)
    except ConfigError as exc:
        return _from_error(name, exc, CONFIG), None
    return Check(name, PASS, f"{config_path} is valid", category=CONFIG), config


def check_config(config_path: Path) -> Check:
    return load_config_check(config_path)[0]


def check_identity(config: "Config") -> Check:
    """Tenant ID, Client ID, Booking Provider Value and campaign ID are set (Steps 1–3)."""
    values = {
        "servicetitan.tenant_id": config.servicetitan.tenant_id,
        "servicetitan.client_id": config.servicetitan.client_id,
        "servicetitan.booking_provider": config.servicetitan.booking_provider,
        "referral_factory.campaign_id": config.referral_factory.campaign_id,
    }
    missing = [key for key, value in values.items() if value in (None, "")]
    if missing:
        return _fail("Connection settings", "not set: " + ", ".join(missing), "run `stsync connect`", CONFIG)
    st = config.servicetitan
    return Check(
        "Connection settings",
        PASS,
        f"{st.environment} tenant {st.tenant_id}, booking provider {st.booking_provider}, "
        f"campaign {config.referral_factory.campaign_id}",
        category=CONFIG,
    )


def check_secrets_present(paths: "ConnectionPaths") -> Check:
    """The three secrets can be found (environment, keyring or file). Names only, never values."""
    from stsync.storage.secrets import SecretStore

    name = "Secrets"
    store = SecretStore(paths)
    missing: list[Secret] = []
    try:
        for secret in credentials.SECRETS:
            if not store.get(secret.name):
                missing.append(secret)
    except ConfigError as exc:  # no usable secret store (SecretStoreUnavailable)
        return _from_error(name, exc, SECRETS)
    if missing:
        listed = ", ".join(f"{s.label} ({s.name}, or env {s.env_var.name})" for s in missing)
        found_in = "; ".join(f"the {s.label} is in {s.where}" for s in missing)
        return _fail(name, f"missing: {listed}", f"run `stsync connect` (or set the environment variables); {found_in}", SECRETS)
    where = ", ".join(f"{secret.name} ({store.source(secret.name) or 'found'})" for secret in credentials.SECRETS)
    return Check(name, PASS, f"found: {where}", category=SECRETS)


def check_leads_action(config: "Config", *, nothing_is: Status = WARN) -> Check:
    """Step 4: when a lead joins the campaign, a booking is created (not "Nothing to action")."""
    name = "Leads: when lead joins campaign"
    if config.leads.action == Action.CREATE_BOOKING:
        return Check(name, PASS, ACTION_LABELS[Action.CREATE_BOOKING], category=MAPPING)
    return Check(
        name,
        nothing_is,
        NOTHING_TO_ACTION,
        "stsync map action leads create-booking",
        MAPPING,
        3 if nothing_is == FAIL else None,
    )


def check_required_fields(config: "Config", *, kind: Kind = Kind.LEAD) -> Check:
    """Step 5 / 7: every required booking field is mapped (else the seed's "Setup Required"),
    and every mapped one names a real target, source field and option."""
    section = config.booking_section(kind)
    section_key = section.section_name
    name = f"{section_key.capitalize()}: field mapping"
    problems = booking_mapping_problems(section)
    missing = missing_required(section)
    creates = section.action == Action.CREATE_BOOKING
    if missing and creates:
        labels = ", ".join(f"{BOOKING_TARGET_LABELS[t]} ({t})" for t in missing)
        extra = f"; also {problems[0]}" if problems else ""
        return _fail(
            name,
            f"Setup Required: {labels} not mapped. {REQUIRED_NOT_MAPPED}{extra}",
            f"stsync map set {missing[0]} --from <field> --for {section_key}  (see `stsync map show --for {section_key}`)",
            MAPPING,
        )
    if problems:
        first = problems[0]
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        return _fail(name, f"{first.key_path}: {first}{more}", first.hint, MAPPING)
    if not creates:
        who = "referred leads" if section_key == "leads" else "referrers"
        return Check(name, PASS, f"not used: {who} are not sent to ServiceTitan (Nothing to action)", category=MAPPING)
    partial = incomplete_address_parts(section)
    if partial:
        return Check(
            name,
            WARN,
            "the address is mapped without " + ", ".join(partial) + ": ServiceTitan needs all of them, "
            "so no address will be sent",
            f"map them too (stsync map set {partial[0]} --from <field> --for {section_key}) or unmap the others",
            MAPPING,
        )
    mapped = len(section.fields)
    return Check(name, PASS, f"all 6 required fields mapped ({mapped} in all)", category=MAPPING)


def check_qualification_rule(config: "Config") -> Check:
    """Step 6: the rule is consistent (a real job status; something pushed to qualify)."""
    name = "Qualification rule"
    qualification = config.leads.qualification
    rule = qualification.rule
    if rule == QualificationRule.JOB_STATUS and qualification.job_status not in JOB_STATUSES:
        return _fail(
            name,
            f"job_status {qualification.job_status!r} is not one of " + ", ".join(JOB_STATUSES),
            "stsync map qualify job-status --status Completed",
            MAPPING,
        )
    described = {
        QualificationRule.NONE: "Do not qualify my referrals",
        QualificationRule.JOB_CREATED: "qualify when the booking becomes a job",
    }.get(rule, f"qualify when the booking becomes a job and reaches {qualification.job_status}")
    if rule != QualificationRule.NONE and config.leads.action != Action.CREATE_BOOKING:
        return Check(
            name,
            WARN,
            f"{described}, but leads are not sent to ServiceTitan (Nothing to action): nothing can qualify",
            "stsync map action leads create-booking",
            MAPPING,
        )
    if rule != QualificationRule.JOB_STATUS and qualification.job_status is not None:
        return Check(
            name, WARN, f"{described}; job_status {qualification.job_status!r} is ignored with rule '{rule}'",
            "stsync map qualify job-status --status <status>, or remove job_status", MAPPING,
        )
    cancels = UnqualifyEvent.JOB_CANCELED in qualification.unqualify_on
    if cancels and rule == QualificationRule.JOB_STATUS and qualification.job_status == "Canceled":
        return Check(
            name, WARN, "qualifies on Canceled and also unqualifies on job_canceled: every qualification is taken back",
            "pick another status, or drop job_canceled from unqualify_on", MAPPING,
        )
    unqualify = f"; unqualified on {', '.join(qualification.unqualify_on)}" if qualification.unqualify_on else ""
    return Check(name, PASS, described + unqualify, category=MAPPING)


def check_customer_mapping(config: "Config") -> Check:
    """Customers → referrers: every target, source field and template is real."""
    name = "Customers: field mapping"
    fields_problems = [p for p in customer_mapping_problems(config.customer_sync) if "return_fields" not in (p.key_path or "")]
    if fields_problems:
        first = fields_problems[0]
        more = f" (and {len(fields_problems) - 1} more)" if len(fields_problems) > 1 else ""
        return _fail(name, f"{first.key_path}: {first}{more}", first.hint, MAPPING)
    return Check(name, PASS, f"{len(config.customer_sync.fields)} Referral Factory field(s) mapped", category=MAPPING)


def check_return_fields(config: "Config") -> Check:
    """Map Return Fields: well-formed (a custom field name = referral_link | referral_code)."""
    name = "Return fields"
    return_fields = config.customer_sync.return_fields
    for field_name, value in return_fields.items():
        try:
            check_return_field(field_name, value)
        except ConfigError as exc:
            return _fail(name, f"{exc.key_path}: {exc}", exc.hint, MAPPING)
    if not return_fields:
        return Check(name, PASS, "none configured (nothing is written back to ServiceTitan)", category=MAPPING)
    names = {}
    for field_name in return_fields:
        names.setdefault(field_name.strip().casefold(), []).append(field_name)
    twice = [group for group in names.values() if len(group) > 1]
    if twice:
        return _fail(
            name, "the same custom field is named twice: " + " and ".join(repr(n) for n in twice[0]),
            "keep one (stsync map return-field NAME --remove)", MAPPING,
        )
    shown = ", ".join(f"{n} ← {v}" for n, v in return_fields.items())
    return Check(name, PASS, shown, category=MAPPING)


OFFLINE_CONFIG_CHECKS: tuple[Callable[["Config"], Check], ...] = (
    check_identity,
    check_leads_action,
    check_required_fields,
    lambda config: check_required_fields(config, kind=Kind.REFERRER),
    check_qualification_rule,
    check_customer_mapping,
    check_return_fields,
)


def offline_checks(config: "Config") -> list[Check]:
    return [check(config) for check in OFFLINE_CONFIG_CHECKS]


# == online =====================================================================================


def _guarded(name: str, category: str, probe: Callable[[], Check]) -> Check:
    """Run a live probe; any stsync error it meets becomes a FAIL with that error's exit code."""
    try:
        return probe()
    except StsyncError as exc:
        return _from_error(name, exc, category)


def check_servicetitan_token(conn: "Connection") -> Check:
    """A fresh token for the Client ID / Client Secret (per tenant and environment)."""
    name = "ServiceTitan token"

    def probe() -> Check:
        conn.servicetitan.verify_token()
        st = conn.config.servicetitan
        return Check(name, PASS, f"issued for client {st.client_id} ({st.environment})", category=SERVICETITAN)

    result = _guarded(name, SERVICETITAN, probe)
    if result.failed and result.exit_code == 4:
        env = Environment(conn.config.servicetitan.environment)
        other = env.other
        return Check(
            name, FAIL, f"{result.message}. The connection uses the {env} environment ({conn.endpoints.st_auth_url}); "
            f"credentials made for {other} are rejected there",
            result.fix, SERVICETITAN, 4,
        )
    return result


# One read of the custom-field types per connection serves the app-key and return-field checks.
_custom_field_types: "weakref.WeakKeyDictionary[Any, list]" = weakref.WeakKeyDictionary()


def _field_types(conn: "Connection") -> list:
    types = _custom_field_types.get(conn)
    if types is None:
        types = conn.servicetitan.list_custom_field_types()
        _custom_field_types[conn] = types
    return types


def check_servicetitan_app_key(conn: "Connection") -> Check:
    """The ST-App-Key and the tenant's CRM access: one read of the customer custom-field types."""
    name = "ServiceTitan app key and tenant access"

    def probe() -> Check:
        types = _field_types(conn)
        return Check(name, PASS, f"tenant {conn.config.servicetitan.tenant_id} readable ({len(types)} customer custom field types)", category=SERVICETITAN)

    return _guarded(name, SERVICETITAN, probe)


def check_booking_provider(conn: "Connection") -> Check:
    """The Booking Provider Value belongs to this app and tenant (troubleshooting guide)."""
    name = "Booking Provider Value"

    def probe() -> Check:
        bp = conn.booking_provider
        try:
            conn.servicetitan.check_booking_provider(bp)
        except AuthError as exc:
            if "booking provider" in str(exc).casefold():
                detail = re.sub(r"^Booking Provider Value is incorrect:\s*", "", str(exc))
                return Check(name, FAIL, f"{BOOKING_PROVIDER_INCORRECT} ({detail})", BOOKING_PROVIDER_FIX, SERVICETITAN, 4)
            raise
        return Check(name, PASS, f"{bp} accepted by ServiceTitan", category=SERVICETITAN)

    return _guarded(name, SERVICETITAN, probe)


def check_referral_factory_key(conn: "Connection") -> Check:
    """The Referral Factory API key (one active key per account: a new one revokes the old)."""
    name = "Referral Factory API key"

    def probe() -> Check:
        next(iter(conn.referral_factory.list_campaigns()), None)
        return Check(name, PASS, "accepted", category=REFERRAL_FACTORY)

    return _guarded(name, REFERRAL_FACTORY, probe)


def check_campaign(conn: "Connection") -> Check:
    """The campaign exists for this key and is launched (not draft or paused)."""
    from stsync.errors import ReferralFactoryApiError

    name = "Referral Factory campaign"

    def probe() -> Check:
        campaign_id = conn.campaign_id
        try:
            campaign = conn.referral_factory.get_campaign(campaign_id)
        except ReferralFactoryApiError as exc:
            if exc.status != 404:
                raise
            return _fail(
                name, f"campaign {campaign_id} was not found for this API key",
                "the campaign ID is under Edit Campaign → Integration tab → API in Referral Factory; "
                "then `stsync connect --campaign-id <id>`",
                REFERRAL_FACTORY,
            )
        if campaign.status != "launched":
            return _fail(
                name, f"campaign {campaign_id} ({campaign.name}) is {campaign.status or 'not launched'}, not launched: "
                "no new lead can join it",
                "launch the campaign in Referral Factory (Campaign Settings), or connect a launched one",
                REFERRAL_FACTORY,
            )
        return Check(name, PASS, f"{campaign_id} \"{campaign.name}\" is launched", category=REFERRAL_FACTORY)

    return _guarded(name, REFERRAL_FACTORY, probe)


def check_return_field_types(conn: "Connection") -> Check:
    """Each return field is a ServiceTitan customer custom field of type Text."""
    name = "Return fields in ServiceTitan"
    return_fields = conn.config.customer_sync.return_fields
    if not return_fields:
        return Check(name, PASS, "none configured", category=SERVICETITAN)

    def probe() -> Check:
        types = _field_types(conn)
        problems: list[str] = []
        found: list[str] = []
        for field_name in return_fields:
            try:
                field_type = resolve_custom_field_type(field_name, types, taken=return_fields)
            except ConfigError as exc:
                problems.append(str(exc))
                continue
            data_type = field_type.data_type or "unknown type"
            if data_type.casefold() != "text":
                problems.append(f"{field_type.name!r} is a {data_type} custom field, not Text: a referral link or code cannot be written to it")
            else:
                found.append(f"{field_type.name} (Text, id {field_type.id})")
        if problems:
            return _fail(
                name, "; ".join(problems),
                "create them in ServiceTitan as customer custom fields of type Text (Settings → Custom Fields), "
                "or change the names with `stsync map return-field`",
                SERVICETITAN,
            )
        return Check(name, PASS, ", ".join(found), category=SERVICETITAN)

    return _guarded(name, SERVICETITAN, probe)


def online_checks(conn: "Connection") -> list[Check]:
    """Live checks in debugging order; a check whose prerequisite failed is not run (its
    answer would only repeat the first failure)."""
    checks: list[Check] = []
    token = check_servicetitan_token(conn)
    checks.append(token)
    if token.passed:
        access = check_servicetitan_app_key(conn)
        checks.append(access)
        if access.passed:
            checks.append(check_booking_provider(conn))
            checks.append(check_return_field_types(conn))
    key = check_referral_factory_key(conn)
    checks.append(key)
    if key.passed:
        checks.append(check_campaign(conn))
    return checks


__all__ = [
    "Check",
    "FAIL",
    "PASS",
    "WARN",
    "check_booking_provider",
    "check_campaign",
    "check_config",
    "check_customer_mapping",
    "check_identity",
    "check_leads_action",
    "check_qualification_rule",
    "check_referral_factory_key",
    "check_required_fields",
    "check_return_field_types",
    "check_return_fields",
    "check_secrets_present",
    "check_servicetitan_app_key",
    "check_servicetitan_token",
    "load_config_check",
    "offline_checks",
    "online_checks",
]
