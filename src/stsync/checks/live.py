"""The live verifications, each written once, in the order a person would debug:
ServiceTitan token → app key and tenant → Booking Provider Value and return-field custom
fields; Referral Factory key → campaign.

Each makes one or two read-only calls and returns what it found (the PASS message), or raises
the failure in its final words: the client's error when it already says it (a refused key, an
unreachable remote), else an error of the failure's class carrying the troubleshooting guide's
words (a wrong Booking Provider Value, a paused campaign). ``connect`` lets the first failure
propagate; ``validate`` and ``diagnose`` turn it into a FAIL row (``checks.table``); a run
that would create something (``push-lead``, ``sync-customers``) asks ``launched_campaign``
once, before it sends anything.

Credentials go only where the configuration points. When ServiceTitan rejects the Client ID
/ Client Secret and the auth URL is the environment's default, the credentials may have been
made for the other environment (they are per environment): the token check then *asks* the
person at the terminal whether to try them on the other environment's token server (default
no) and sends them there only on a yes. Run without a terminal (cron, CI, ``--json``) it sends
nothing and says what to run if they are the other environment's.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

import httpx

from stsync.checks.context import LiveAccess
from stsync.connection import Connection, identity
from stsync.errors import AuthError, ConfigError, ReferralFactoryApiError
from stsync.logs import get_logger
from stsync.mapping.return_fields import resolve_custom_field_type
from stsync.storage.config import INTEGRATION_ENDPOINTS, PRODUCTION_ENDPOINTS
from stsync.vocabulary import Environment

if TYPE_CHECKING:
    from stsync.referralfactory.models import Campaign
    from stsync.storage.config import Config

log = get_logger(__name__)

BOOKING_PROVIDER_INCORRECT = (
    "Booking Provider Value is incorrect — if the wrong Booking Provider Value was entered during the "
    "Finalize step, bookings may fail"
)
BOOKING_PROVIDER_FIX = (
    "You can find the correct value in your ServiceTitan account under Settings → Integrations → "
    "API Application Access → your Referral Factory app details (\"Allowed 'booking_provider' value\"); "
    "then `stsync connect --booking-provider <value>`"
)
OTHER_ENVIRONMENT_TIMEOUT_SECONDS = 10.0


def verify_servicetitan_token(live: LiveAccess, config: Config) -> str:
    """A fresh token for the Client ID / Client Secret (per tenant and environment)."""
    st = config.servicetitan
    try:
        live.servicetitan.verify_token()
    except AuthError as exc:
        raise _token_refusal(live, config, exc) from exc
    return f"issued for client {st.client_id} ({st.environment})"


def _token_refusal(live: LiveAccess, config: Config, exc: AuthError) -> AuthError:
    """The refusal told apart: credentials of the other environment (when the person agreed to
    ask it), or which environment (and token endpoint) refused them."""
    environment = Environment(config.servicetitan.environment)
    other = environment.other
    if "Client ID / Client Secret" in str(exc) and _auth_url_is_the_default(live, config):
        other_url = _DEFAULT_AUTH_URL[other]
        question = (
            f"ServiceTitan's {environment} environment rejects the Client ID / Client Secret. Were they made for "
            f"{other}? Checking sends them to the {other} token server ({other_url})"
        )
        if not live.agrees(question):
            return AuthError(
                f"{exc}. The connection uses the {environment} environment ({live.endpoints.st_auth_url}); "
                f"credentials made for {other} are rejected there (they were not sent to {other} to check)",
                hint=f"if these credentials are for the {other} environment, run `stsync connect --environment {other}`; "
                "otherwise generate a new Client Secret and run `stsync connect`",
            )
        if _other_environment_accepts(live, config):
            return AuthError(
                f"ServiceTitan's {environment} environment rejects the Client ID / Client Secret, but the {other} "
                f"environment accepts them: they were made for {other}",
                hint=f"set servicetitan.environment = \"{other}\": `stsync connect --environment {other}`",
            )
    return AuthError(
        f"{exc}. The connection uses the {environment} environment ({live.endpoints.st_auth_url}); "
        f"credentials made for {other} are rejected there",
        hint=exc.hint,
    )


_DEFAULT_AUTH_URL = {Environment.PRODUCTION: PRODUCTION_ENDPOINTS[0], Environment.INTEGRATION: INTEGRATION_ENDPOINTS[0]}


def _auth_url_is_the_default(live: LiveAccess, config: Config) -> bool:
    """An override (config or STSYNC_ST_AUTH_URL) names one server on purpose: no other is tried."""
    return live.endpoints.st_auth_url.rstrip("/") == _DEFAULT_AUTH_URL[Environment(config.servicetitan.environment)]


def _other_environment_accepts(live: LiveAccess, config: Config) -> bool:
    """Whether the other environment's token endpoint accepts these credentials (asked only
    after the person agreed). One POST, no retry, a short timeout."""
    other = _DEFAULT_AUTH_URL[Environment(config.servicetitan.environment).other]
    secret = live.client_secret()
    if not secret:
        return False
    try:
        with httpx.Client(timeout=OTHER_ENVIRONMENT_TIMEOUT_SECONDS) as http:
            response = http.post(
                f"{other}/connect/token",
                data={
                    "grant_type": "client_credentials",
                    "client_id": str(config.servicetitan.client_id),
                    "client_secret": secret,
                },
                headers={"Accept": "application/json"},
            )
    except httpx.HTTPError as exc:
        log.info("could not ask the token endpoint %s: %s", other, type(exc).__name__)
        return False
    try:
        return response.is_success and bool(response.json().get("access_token"))
    except (ValueError, AttributeError):
        return False


def verify_servicetitan_app_key(live: LiveAccess, config: Config) -> str:
    """The ST-App-Key and the tenant's CRM access: one read of the customer custom-field types."""
    types = live.custom_field_types()
    return f"tenant {config.servicetitan.tenant_id} readable ({len(types)} customer custom field types)"


def verify_booking_provider(live: LiveAccess, config: Config) -> str:
    """The Booking Provider Value belongs to this app and tenant (troubleshooting guide)."""
    booking_provider = identity("booking_provider", config.servicetitan.booking_provider)
    try:
        live.servicetitan.check_booking_provider(booking_provider)
    except AuthError as exc:
        if "booking provider" not in str(exc).casefold():
            raise  # the app key or the tenant, in the client's words
        detail = re.sub(r"^Booking Provider Value is incorrect:\s*", "", str(exc))
        raise AuthError(f"{BOOKING_PROVIDER_INCORRECT} ({detail})", hint=BOOKING_PROVIDER_FIX) from exc
    return f"{booking_provider} accepted by ServiceTitan"


def verify_return_field_types(live: LiveAccess, config: Config) -> str:
    """Each return field is a ServiceTitan customer custom field of type Text."""
    return_fields = config.customer_sync.return_fields
    if not return_fields:
        return "none configured"
    types = live.custom_field_types()
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
            problems.append(
                f"{field_type.name!r} is a {data_type} custom field, not Text: a referral link or code cannot be written to it"
            )
        else:
            found.append(f"{field_type.name} (Text, id {field_type.id})")
    if problems:
        raise ConfigError(
            "; ".join(problems),
            key_path="customer_sync.return_fields",
            hint="create them in ServiceTitan as customer custom fields of type Text (Settings → Custom Fields), "
            "or change the names with `stsync map return-field`",
        )
    return ", ".join(found)


def verify_referral_factory_key(live: LiveAccess, config: Config) -> str:
    """The Referral Factory API key (one active key per account: a new one revokes the old)."""
    next(iter(live.referral_factory.list_campaigns()), None)
    return "accepted"


def verify_campaign(live: LiveAccess, config: Config) -> str:
    """The campaign exists for this key and is launched (not draft or paused)."""
    campaign_id = identity("campaign_id", config.referral_factory.campaign_id)
    try:
        campaign = live.referral_factory.get_campaign(campaign_id)
    except ReferralFactoryApiError as exc:
        if exc.status != 404:
            raise
        raise ConfigError(
            f"Referral Factory campaign {campaign_id} was not found for this API key",
            key_path="referral_factory.campaign_id",
            hint="the campaign ID is under Edit Campaign → Integration tab → API in Referral Factory; "
            "then `stsync connect --campaign-id <id>`",
        ) from None
    live.campaign = campaign
    if campaign.status != "launched":
        raise ConfigError(
            f"Referral Factory campaign {campaign_id} ({campaign.name}) is {campaign.status or 'not launched'}, "
            "not launched: no new lead can join it",
            key_path="referral_factory.campaign_id",
            hint="launch the campaign in Referral Factory (Campaign Settings), or connect a launched one",
        )
    return f"{campaign_id} \"{campaign.name}\" is launched"


def launched_campaign(conn: Connection) -> Campaign:
    """The connection's campaign, read once, for a run about to create something (bookings,
    referrers): ``verify_campaign``'s ``ConfigError`` (exit 3, with its fix) unless it exists
    and is launched — so a paused campaign stops the run before anything is sent, instead of
    failing every record."""
    live = LiveAccess.of(conn)
    verify_campaign(live, conn.config)
    assert live.campaign is not None  # verify_campaign learned it
    return live.campaign
