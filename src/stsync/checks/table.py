"""The check table: every check of connect, validate and diagnose as one ``CheckSpec`` —
its name (written only here), its category, what it needs first and how it runs — and the
plans each command runs.

Prerequisites, in the order a person would debug:

    Config file ─┬─ Connection settings, the mapping checks
                 ├─ ServiceTitan token ─ app key and tenant ─┬─ Booking Provider Value
                 │                                           └─ Return fields in ServiceTitan
                 └─ Referral Factory API key ─ Referral Factory campaign
    Secret store ─ Secrets
    State directory ─ Ledger ─ Last push run, Last customer sync, Last qualify run, Held referrals, Push failures
    Referral Factory rate limit (the shared 429/IP-block state; no request)

plus the values a live check cannot run without (the identity keys of the config, the
secrets), reported missing by "Connection settings" and "Secrets" (or "Secret store" when the
secrets could not even be listed).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from stsync import credentials
from stsync.checks import activity, live, offline
from stsync.checks.context import CheckContext, LiveAccess
from stsync.checks.result import (
    ACTIVITY,
    CONFIG,
    MAPPING,
    REFERRAL_FACTORY,
    SECRETS,
    SERVICETITAN,
    Verdict,
    fail_with,
    ok,
)
from stsync.checks.runner import CheckSpec, Input
from stsync.errors import StsyncError
from stsync.storage.config import Config
from stsync.storage.states import RunJob
from stsync.vocabulary import Kind

# == offline ====================================================================================


def _config_file(ctx: CheckContext) -> Verdict:
    verdict, ctx.config = offline.load_config_check(ctx.config_path)
    return verdict


def _secret_store(ctx: CheckContext) -> Verdict:
    verdict, described = offline.check_secret_store(ctx.paths)
    ctx.secrets_described = described
    # What the store said is what the live checks go by: a store that cannot be described has no secret.
    listed = described.get("secrets") or {}
    ctx.secret_sources = {name: (listed.get(name) or {}).get("source") for name in credentials.SECRET_NAMES}
    return verdict


def _config(check: Callable[[Config], Verdict]) -> Callable[[CheckContext], Verdict]:
    def run(ctx: CheckContext) -> Verdict:
        assert ctx.config is not None  # it needs the "Config file" check
        return check(ctx.config)

    return run


CONFIG_FILE = CheckSpec("Config file", CONFIG, _config_file, blocks="the config file could not be loaded")
SECRET_STORE = CheckSpec("Secret store", SECRETS, _secret_store, blocks="the secret store cannot be read")
SECRETS_PRESENT = CheckSpec(
    "Secrets", SECRETS, lambda ctx: offline.check_secrets_present(ctx.paths), needs=(SECRET_STORE,)
)
CONNECTION_SETTINGS = CheckSpec("Connection settings", CONFIG, _config(offline.check_identity), needs=(CONFIG_FILE,))
def _leads_action(ctx: CheckContext) -> Verdict:
    assert ctx.config is not None  # it needs the "Config file" check
    return offline.check_leads_action(ctx.config, nothing_is=ctx.nothing_to_action)


LEADS_ACTION = CheckSpec("Leads: when lead joins campaign", MAPPING, _leads_action, needs=(CONFIG_FILE,))
LIMITS = CheckSpec("Limits", CONFIG, _config(offline.check_limits), needs=(CONFIG_FILE,))
LEADS_MAPPING = CheckSpec(
    "Leads: field mapping",
    MAPPING,
    _config(lambda config: offline.check_required_fields(config, kind=Kind.LEAD)),
    needs=(CONFIG_FILE,),
)
REFERRERS_MAPPING = CheckSpec(
    "Referrers: field mapping",
    MAPPING,
    _config(lambda config: offline.check_required_fields(config, kind=Kind.REFERRER)),
    needs=(CONFIG_FILE,),
)
QUALIFICATION_RULE = CheckSpec("Qualification rule", MAPPING, _config(offline.check_qualification_rule), needs=(CONFIG_FILE,))
CUSTOMER_MAPPING = CheckSpec("Customers: field mapping", MAPPING, _config(offline.check_customer_mapping), needs=(CONFIG_FILE,))
RETURN_FIELDS = CheckSpec("Return fields", MAPPING, _config(offline.check_return_fields), needs=(CONFIG_FILE,))


# == activity (diagnose) ========================================================================


def _ledger(ctx: CheckContext) -> Verdict | None:
    verdict, ctx.ledger = activity.open_ledger(ctx.paths)
    return verdict


def _push_failures(ctx: CheckContext) -> Verdict:
    verdict, ctx.recent_failures = activity.check_push_failures(ctx.ledger)
    return verdict


STATE_DIR = CheckSpec(
    "State directory", ACTIVITY, lambda ctx: activity.check_state_dir(ctx.paths), blocks="the state directory cannot be used"
)
LEDGER = CheckSpec("Ledger", ACTIVITY, _ledger, needs=(STATE_DIR,), blocks="the ledger could not be opened")
RUN_LOCKS = CheckSpec("Runs in progress", ACTIVITY, lambda ctx: activity.check_run_locks(ctx.paths))


def _last_run(job: RunJob) -> Callable[[CheckContext], Verdict]:
    def run(ctx: CheckContext) -> Verdict:
        return activity.check_last_run(ctx.ledger, job, recheck=lambda failure: recheck(ctx, failure))

    return run


LAST_PUSH = CheckSpec("Last push run", ACTIVITY, _last_run(RunJob.PUSH), needs=(LEDGER,))
LAST_SYNC = CheckSpec("Last customer sync", ACTIVITY, _last_run(RunJob.SYNC), needs=(LEDGER,))
LAST_QUALIFY = CheckSpec("Last qualify run", ACTIVITY, _last_run(RunJob.QUALIFY), needs=(LEDGER,))
HELD_REFERRALS = CheckSpec("Held referrals", ACTIVITY, lambda ctx: activity.check_holds(ctx.ledger), needs=(LEDGER,))
PUSH_FAILURES = CheckSpec("Push failures", ACTIVITY, _push_failures, needs=(LEDGER,))
CREATES_IN_DOUBT = CheckSpec(
    "Creates in doubt", ACTIVITY, lambda ctx: activity.check_creates_in_doubt(ctx.ledger), needs=(LEDGER,)
)
CUSTOM_FIELD_REFUSALS = CheckSpec(
    "Customers' own custom fields", ACTIVITY, lambda ctx: activity.check_custom_field_refusals(ctx.ledger), needs=(LEDGER,)
)
RF_RATE_LIMIT = CheckSpec(
    "Referral Factory rate limit", ACTIVITY, lambda ctx: activity.check_referral_factory_throttle(ctx.paths)
)


# == live =======================================================================================


def _setting(key: str) -> Input:
    section, name = key.split(".")
    return Input(
        key,
        lambda ctx: ctx.config is not None and getattr(getattr(ctx.config, section), name) not in (None, ""),
        (CONNECTION_SETTINGS,),
    )


def _secret(secret: credentials.Secret) -> Input:
    return Input(secret.name, lambda ctx: ctx.has_secret(secret.name), (SECRETS_PRESENT, SECRET_STORE))


def _live(verify: Callable[[LiveAccess, Config], str]) -> Callable[[CheckContext], Verdict]:
    """A live verification as a check: any stsync error it meets is a FAIL of that error's class."""

    def run(ctx: CheckContext) -> Verdict:
        assert ctx.live is not None and ctx.config is not None  # set by the command before the live plan
        try:
            return ok(verify(ctx.live, ctx.config))
        except StsyncError as exc:
            return fail_with(exc)

    return run


ST_TOKEN = CheckSpec(
    "ServiceTitan token",
    SERVICETITAN,
    _live(live.verify_servicetitan_token),
    needs=(CONFIG_FILE,),
    inputs=(
        _setting("servicetitan.tenant_id"),
        _setting("servicetitan.client_id"),
        _secret(credentials.ST_CLIENT_SECRET),
        _secret(credentials.ST_APP_KEY),
    ),
    blocks="the ServiceTitan token was refused",
)
ST_APP_KEY = CheckSpec(
    "ServiceTitan app key and tenant access",
    SERVICETITAN,
    _live(live.verify_servicetitan_app_key),
    needs=(ST_TOKEN,),
    blocks="ServiceTitan refused the app key or the tenant",
)
BOOKING_PROVIDER = CheckSpec(
    "Booking Provider Value",
    SERVICETITAN,
    _live(live.verify_booking_provider),
    needs=(ST_APP_KEY,),
    inputs=(_setting("servicetitan.booking_provider"),),
)
ST_RETURN_FIELDS = CheckSpec(
    "Return fields in ServiceTitan", SERVICETITAN, _live(live.verify_return_field_types), needs=(ST_APP_KEY,)
)
RF_KEY = CheckSpec(
    "Referral Factory API key",
    REFERRAL_FACTORY,
    _live(live.verify_referral_factory_key),
    needs=(CONFIG_FILE,),
    inputs=(_secret(credentials.RF_API_KEY),),
    blocks="the Referral Factory key was refused",
)
CAMPAIGN = CheckSpec(
    "Referral Factory campaign",
    REFERRAL_FACTORY,
    _live(live.verify_campaign),
    needs=(RF_KEY,),
    inputs=(_setting("referral_factory.campaign_id"),),
)


# == a failed run's cause, re-checked =============================================================


def cause_checks(failure: Mapping[str, Any]) -> tuple[CheckSpec, ...]:
    """The checks that verify the cause of a run's failure (its error's ``to_dict()``): when
    they all pass now, the cause is fixed. None for a failure no check can verify (a bug, a
    record's own)."""
    error_type = str(failure.get("type") or "")
    key_path = str(failure.get("key_path") or "")
    code = failure.get("exit_code")
    message = str(failure.get("message") or "")
    by_type: dict[str, tuple[CheckSpec, ...]] = {
        "StateUnusable": (STATE_DIR,),
        "LedgerDamaged": (LEDGER,),
        "SecretStoreUnavailable": (SECRET_STORE, SECRETS_PRESENT),
        "CoolingDown": (RF_RATE_LIMIT,),
    }
    if error_type in by_type:
        return by_type[error_type]
    by_key: tuple[tuple[str, tuple[CheckSpec, ...]], ...] = (
        ("referral_factory.campaign", (CAMPAIGN,)),
        ("customer_sync.return_fields", (RETURN_FIELDS, ST_RETURN_FIELDS)),
        ("customer_sync", (CUSTOMER_MAPPING,)),
        ("leads.qualification", (QUALIFICATION_RULE,)),
        ("leads", (LEADS_ACTION, LEADS_MAPPING)),
        ("referrers", (REFERRERS_MAPPING,)),
        ("servicetitan", (CONNECTION_SETTINGS, ST_TOKEN, BOOKING_PROVIDER)),
        ("limits", (LIMITS,)),
    )
    for prefix, specs in by_key:
        if key_path.startswith(prefix):
            return specs
    if code == 3:
        return (CONFIG_FILE, CONNECTION_SETTINGS, *MAPPING_CHECKS)
    if code == 4:
        if "Referral Factory" in message:
            return (RF_KEY, CAMPAIGN)
        return (ST_TOKEN, ST_APP_KEY, BOOKING_PROVIDER)
    if code == 6:  # a remote down or refusing past the budget: both answer the live checks now
        return (ST_TOKEN, ST_APP_KEY, RF_KEY, RF_RATE_LIMIT)
    return ()


def recheck(ctx: CheckContext, failure: Mapping[str, Any]) -> activity.Recheck | None:
    """How ``cause_checks(failure)`` answered in this run (their results in ``ctx``)."""
    specs = cause_checks(failure)
    if not specs:
        return None
    results = [(spec.name, ctx.results.get(spec.name)) for spec in specs]
    return activity.Recheck(
        passed=tuple(name for name, check in results if check is not None and not check.failed),
        failed=tuple(name for name, check in results if check is not None and check.failed),
        not_run=tuple(name for name, check in results if check is None),
    )


# == plans ======================================================================================

MAPPING_CHECKS = (LEADS_ACTION, LEADS_MAPPING, REFERRERS_MAPPING, QUALIFICATION_RULE, CUSTOMER_MAPPING, RETURN_FIELDS)
LIVE = (ST_TOKEN, ST_APP_KEY, BOOKING_PROVIDER, ST_RETURN_FIELDS, RF_KEY, CAMPAIGN)

VALIDATE_OFFLINE = (CONFIG_FILE, CONNECTION_SETTINGS, *MAPPING_CHECKS, LIMITS, SECRETS_PRESENT)
DIAGNOSE_OFFLINE = (
    CONFIG_FILE,
    SECRET_STORE,
    SECRETS_PRESENT,
    CONNECTION_SETTINGS,
    *MAPPING_CHECKS,
    LIMITS,
    STATE_DIR,
    LEDGER,
    RUN_LOCKS,
    HELD_REFERRALS,
    PUSH_FAILURES,
    CREATES_IN_DOUBT,
    CUSTOM_FIELD_REFUSALS,
    RF_RATE_LIMIT,
)
# After the live checks (or their skipping): a failed run's cause is re-judged by them.
DIAGNOSE_RUNS = (LAST_PUSH, LAST_SYNC, LAST_QUALIFY)
# connect proves what it stores, in validate's order: the token, the app key and tenant (so
# that a tenant the app cannot access is told apart from a wrong Booking Provider Value, which
# ServiceTitan may answer alike), the booking provider, the campaign (which also proves the
# key). Return fields are the mapping's business, checked by validate --online once the custom
# fields exist.
CONNECT = (ST_TOKEN, ST_APP_KEY, BOOKING_PROVIDER, CAMPAIGN)
