"""Offline checks: the config file, the connection settings, the mapping, and which secrets
exist (where each comes from, never its value). Each is a function of the config (or of the
paths) returning a ``Verdict``; a broken setup is a FAIL, never an exception.

The wording of a failure is the troubleshooting guide's where it has one (``NOTHING_TO_ACTION``,
``REQUIRED_NOT_MAPPED``).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from stsync import credentials
from stsync.checks.result import FAIL, WARN, Status, Verdict, fail, fail_with, ok, warn
from stsync.credentials import Secret
from stsync.errors import ConfigError, SecretStoreUnavailable
from stsync.mapping.overview import ACTION_LABELS
from stsync.mapping.validation import (
    booking_mapping_problems,
    check_return_field,
    customer_mapping_problems,
    incomplete_address_parts,
    missing_required,
)
from stsync.mapping.vocabulary import BOOKING_TARGET_LABELS
from stsync.servicetitan.vocabulary import JOB_STATUSES
from stsync.storage.config import Config, limit_warnings, load_config
from stsync.storage.secrets import SecretStore
from stsync.vocabulary import Action, Kind, QualificationRule, UnqualifyEvent

if TYPE_CHECKING:
    from stsync.storage.paths import ConnectionPaths

# The troubleshooting guide's "Common causes", verbatim where a check matches one.
NOTHING_TO_ACTION = (
    '"Nothing to action" is selected — if the Leads tab dropdown is set to "Nothing to action," '
    "no bookings will be created in ServiceTitan"
)
REQUIRED_NOT_MAPPED = (
    "Required fields not mapped — if any required field in the mapping is empty, the integration will not send data"
)


# == config and secrets =========================================================================


def load_config_check(config_path: Path) -> tuple[Verdict, Config | None]:
    """The config file: TOML syntax (line and column) and schema (key paths)."""
    try:
        config = load_config(config_path)
    except ConfigError as exc:
        return fail_with(exc), None
    return ok(f"{config_path} is valid"), config


def check_identity(config: Config) -> Verdict:
    """Tenant ID, Client ID, Booking Provider Value and campaign ID are set (Steps 1–3)."""
    values = {
        "servicetitan.tenant_id": config.servicetitan.tenant_id,
        "servicetitan.client_id": config.servicetitan.client_id,
        "servicetitan.booking_provider": config.servicetitan.booking_provider,
        "referral_factory.campaign_id": config.referral_factory.campaign_id,
    }
    missing = [key for key, value in values.items() if value in (None, "")]
    if missing:
        return fail("not set: " + ", ".join(missing), "run `stsync connect`")
    st = config.servicetitan
    return ok(
        f"{st.environment} tenant {st.tenant_id}, booking provider {st.booking_provider}, "
        f"campaign {config.referral_factory.campaign_id}"
    )


def check_secrets_present(paths: ConnectionPaths) -> Verdict:
    """The three secrets can be found (environment, keyring or file). Names only, never values."""
    store = SecretStore(paths)
    missing: list[Secret] = []
    try:
        for secret in credentials.SECRETS:
            if not store.get(secret.name):
                missing.append(secret)
    except ConfigError as exc:  # no usable secret store (SecretStoreUnavailable)
        return fail_with(exc)
    if missing:
        listed = ", ".join(f"{s.label} ({s.name}, or env {s.env_var.name})" for s in missing)
        found_in = "; ".join(f"the {s.label} is in {s.where}" for s in missing)
        return fail(f"missing: {listed}", f"run `stsync connect` (or set the environment variables); {found_in}")
    where = ", ".join(f"{secret.name} ({store.source(secret.name) or 'found'})" for secret in credentials.SECRETS)
    return ok(f"found: {where}")


def check_secret_store(paths: ConnectionPaths) -> tuple[Verdict, dict[str, Any]]:
    """The secret store in use: which keyring backend, and where each secret comes from.

    FAIL when the keyring cannot be used and a secret is in neither the environment nor the
    file store: the headless box's three remedies. Never reads a value into the result.
    """
    store = SecretStore(paths)
    try:
        described = store.describe()
    except ConfigError as exc:  # e.g. a damaged secrets file
        return fail_with(exc), {}
    sources = {secret: info.get("source") for secret, info in described["secrets"].items()}
    backend = described["backend"]
    where = ", ".join(f"{secret} ← {source or 'nowhere'}" for secret, source in sources.items())
    lax_file = described.get("file_exists") and described.get("file_mode") not in (None, oct(0o600))
    if described.get("store") == "file":
        # The keyring is not this connection's store: whatever state it is in does not matter.
        if lax_file:
            return (
                warn(
                    f"the secrets file {described['file']} has mode {described['file_mode']}: other users of this "
                    "machine may read it",
                    f"chmod 600 {described['file']}",
                ),
                described,
            )
        return ok(f"the file store ([secrets] store = \"file\"), {described['file']}; {where}"), described
    if not described["keyring_usable"]:
        unread = [secret for secret, source in sources.items() if source is None]
        problem = described.get("keyring_problem") or f"the OS keyring ({backend}) cannot be used"
        if unread and described.get("recorded", "unknown") is None:
            return (
                fail(
                    f"not connected — no secret is stored for this connection ({', '.join(unread)} missing); "
                    f"the OS keyring cannot be used here: {problem}",
                    f"run `stsync connect` (with `--secrets-store file` where no keyring can be unlocked), or "
                    f"{SecretStoreUnavailable.ENV_REMEDY}",
                ),
                described,
            )
        if unread:
            remedy = SecretStoreUnavailable(problem, locked=bool(described.get("keyring_locked")))
            return (
                fail(
                    f"{problem}; {', '.join(unread)} cannot be read from it and are in neither the environment "
                    "nor the file store",
                    remedy.hint,
                    remedy.exit_code,
                ),
                described,
            )
        return ok(f"the OS keyring cannot be used ({problem}), but every secret is found elsewhere: {where}"), described
    if lax_file:
        return (
            warn(
                f"keyring backend {backend}; the secrets file {described['file']} has mode {described['file_mode']}: "
                "other users of this machine may read it",
                f"chmod 600 {described['file']}",
            ),
            described,
        )
    return ok(f"keyring backend {backend}; {where}"), described


def check_limits(config: Config) -> Verdict:
    """``[limits]`` within what the services document (above it only earns 429s)."""
    warnings = limit_warnings(config)
    if warnings:
        return warn("; ".join(warnings), "lower the value in [limits] (stsync spaces its requests just under the limit)")
    limits = config.limits
    return ok(
        f"ServiceTitan {limits.servicetitan_per_second}/s, Referral Factory {limits.referral_factory_per_minute}/min, "
        f"{limits.workers} workers, retries for {limits.retry_budget_seconds} s"
    )


# == mapping ====================================================================================


def check_leads_action(config: Config, *, nothing_is: Status = WARN) -> Verdict:
    """Step 4: when a lead joins the campaign, a booking is created (not "Nothing to action")."""
    if config.leads.action == Action.CREATE_BOOKING:
        return ok(ACTION_LABELS[Action.CREATE_BOOKING])
    return Verdict(nothing_is, NOTHING_TO_ACTION, "stsync map action leads create-booking", 3 if nothing_is == FAIL else None)


def check_required_fields(config: Config, *, kind: Kind) -> Verdict:
    """Step 5 / 7: every required booking field is mapped (else the seed's "Setup Required"),
    and every mapped one names a real target, source field and option."""
    section = config.booking_section(kind)
    section_key = section.section_name
    problems = booking_mapping_problems(section)
    missing = missing_required(section)
    creates = section.action == Action.CREATE_BOOKING
    if missing and creates:
        labels = ", ".join(f"{BOOKING_TARGET_LABELS[t]} ({t})" for t in missing)
        extra = f"; also {problems[0]}" if problems else ""
        return fail(
            f"Setup Required: {labels} not mapped. {REQUIRED_NOT_MAPPED}{extra}",
            f"stsync map set {missing[0]} --from <field> --for {section_key}  (see `stsync map show --for {section_key}`)",
        )
    if problems:
        first = problems[0]
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        return fail(f"{first.key_path}: {first}{more}", first.hint)
    if not creates:
        who = "referred leads" if section_key == "leads" else "referrers"
        return ok(f"not used: {who} are not sent to ServiceTitan (Nothing to action)")
    partial = incomplete_address_parts(section)
    if partial:
        return warn(
            "the address is mapped without " + ", ".join(partial) + ": ServiceTitan needs all of them, "
            "so no address will be sent",
            f"map them too (stsync map set {partial[0]} --from <field> --for {section_key}) or unmap the others",
        )
    return ok(f"all 6 required fields mapped ({len(section.fields)} in all)")


def check_qualification_rule(config: Config) -> Verdict:
    """Step 6: the rule is consistent (a real job status; something pushed to qualify)."""
    qualification = config.leads.qualification
    rule = qualification.rule
    if rule == QualificationRule.JOB_STATUS and qualification.job_status not in JOB_STATUSES:
        return fail(
            f"job_status {qualification.job_status!r} is not one of " + ", ".join(JOB_STATUSES),
            "stsync map qualify job-status --status Completed",
        )
    described = {
        QualificationRule.NONE: "Do not qualify my referrals",
        QualificationRule.JOB_CREATED: "qualify when the booking becomes a job",
    }.get(rule, f"qualify when the booking becomes a job and reaches {qualification.job_status}")
    if rule != QualificationRule.NONE and config.leads.action != Action.CREATE_BOOKING:
        return warn(
            f"{described}, but leads are not sent to ServiceTitan (Nothing to action): nothing can qualify",
            "stsync map action leads create-booking",
        )
    if rule != QualificationRule.JOB_STATUS and qualification.job_status is not None:
        return warn(
            f"{described}; job_status {qualification.job_status!r} is ignored with rule '{rule}'",
            "stsync map qualify job-status --status <status>, or remove job_status",
        )
    cancels = UnqualifyEvent.JOB_CANCELED in qualification.unqualify_on
    if cancels and rule == QualificationRule.JOB_STATUS and qualification.job_status == "Canceled":
        return warn(
            "qualifies on Canceled and also unqualifies on job_canceled: every qualification is taken back",
            "pick another status, or drop job_canceled from unqualify_on",
        )
    unqualify = f"; unqualified on {', '.join(qualification.unqualify_on)}" if qualification.unqualify_on else ""
    hold = ""
    if qualification.hold_days and rule != QualificationRule.NONE:
        hold = f"; held {qualification.hold_days} day{'s' if qualification.hold_days != 1 else ''} without a cancellation first"
    return ok(described + unqualify + hold)


def check_customer_mapping(config: Config) -> Verdict:
    """Customers → referrers: every target, source field and template is real."""
    problems = [p for p in customer_mapping_problems(config.customer_sync) if "return_fields" not in (p.key_path or "")]
    if problems:
        first = problems[0]
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        return fail(f"{first.key_path}: {first}{more}", first.hint)
    return ok(f"{len(config.customer_sync.fields)} Referral Factory field(s) mapped")


def check_return_fields(config: Config) -> Verdict:
    """Map Return Fields: well-formed (a custom field name = referral_link | referral_code)."""
    return_fields = config.customer_sync.return_fields
    for field_name, value in return_fields.items():
        try:
            check_return_field(field_name, value)
        except ConfigError as exc:
            return fail(f"{exc.key_path}: {exc}", exc.hint)
    if not return_fields:
        return ok("none configured (nothing is written back to ServiceTitan)")
    names: dict[str, list[str]] = {}
    for field_name in return_fields:
        names.setdefault(field_name.strip().casefold(), []).append(field_name)
    twice = [group for group in names.values() if len(group) > 1]
    if twice:
        return fail(
            "the same custom field is named twice: " + " and ".join(repr(n) for n in twice[0]),
            "keep one (stsync map return-field NAME --remove)",
        )
    return ok(", ".join(f"{n} ← {v}" for n, v in return_fields.items()))
