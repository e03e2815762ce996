"""The seven values ``stsync connect`` asks for, named once: the connection's three secrets
(store name, environment variable, label, option, where a person finds each one; SPEC §2) and
its four identity settings (config key, label, option, where).

Names only, never values: the secrets live in the environment, the OS keyring or the opt-in
secrets file (``storage/secrets.py`` reads and writes them), the settings in the config. Every
message that names one of them — ``connect``'s prompts, ``validate``'s Secrets check, the "no
usable secret store" hint — takes its words from these tables, and each ``where`` is word for
word the README's "Getting your credentials" table (a test compares them).

Leaf module: imports only ``envvars``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from stsync import envvars


@dataclass(frozen=True)
class Secret:
    name: str  # the store's key (keyring username suffix, secrets-file key)
    env_var: envvars.EnvVar
    label: str  # ServiceTitan's and Referral Factory's own words for it
    option: str  # the `stsync connect` option that sets it
    where: str  # where a person finds it


ST_CLIENT_SECRET = Secret(
    "st_client_secret",
    envvars.ST_CLIENT_SECRET,
    "ServiceTitan Client Secret",
    "--client-secret",
    "ServiceTitan → Settings → Integrations → API Application Access → your app → Client Secret "
    "(Generate, then Copy: it is shown once; per tenant and per environment)",
)
ST_APP_KEY = Secret(
    "st_app_key",
    envvars.ST_APP_KEY,
    "ServiceTitan App Key",
    "--app-key",
    "the ServiceTitan developer portal → My Apps → your app → Application Key (ak1.…)",
)
RF_API_KEY = Secret(
    "rf_api_key",
    envvars.RF_API_KEY,
    "Referral Factory API key",
    "--rf-api-key",
    "Referral Factory → Campaign Settings → Integrations and API → API & Webhooks → Copy API Key "
    "(one active key per account)",
)

SECRETS: tuple[Secret, ...] = (ST_CLIENT_SECRET, ST_APP_KEY, RF_API_KEY)
SECRET_NAMES: tuple[str, ...] = tuple(secret.name for secret in SECRETS)
BY_NAME: Mapping[str, Secret] = {secret.name: secret for secret in SECRETS}


@dataclass(frozen=True)
class Setting:
    """An identity value of the connection: not secret, kept in the config."""

    name: str  # the config key's last part (and ``connect``'s value name)
    config_key: str
    label: str
    option: str
    where: str


TENANT_ID = Setting(
    "tenant_id",
    "servicetitan.tenant_id",
    "ServiceTitan Tenant ID",
    "--tenant-id",
    "ServiceTitan → Settings → Integrations → API Application Access, in the top-right corner",
)
CLIENT_ID = Setting(
    "client_id",
    "servicetitan.client_id",
    "ServiceTitan Client ID",
    "--client-id",
    "ServiceTitan → Settings → Integrations → API Application Access → your app → Client ID → Copy",
)
BOOKING_PROVIDER = Setting(
    "booking_provider",
    "servicetitan.booking_provider",
    "Booking Provider Value",
    "--booking-provider",
    "ServiceTitan → Settings → Integrations → API Application Access → your app → "
    "\"Allowed 'booking_provider' value\" → Copy",
)
CAMPAIGN_ID = Setting(
    "campaign_id",
    "referral_factory.campaign_id",
    "Referral Factory campaign ID",
    "--campaign-id",
    "Referral Factory → Edit Campaign → Integration tab → API",
)

SETTINGS: tuple[Setting, ...] = (TENANT_ID, CLIENT_ID, BOOKING_PROVIDER, CAMPAIGN_ID)
# What `stsync connect` asks for, in the setup guide's order (Steps 1–3, then Referral Factory).
CONNECT_VALUES: tuple[Secret | Setting, ...] = (
    TENANT_ID,
    CLIENT_ID,
    ST_CLIENT_SECRET,
    BOOKING_PROVIDER,
    ST_APP_KEY,
    RF_API_KEY,
    CAMPAIGN_ID,
)
CONNECT_VALUE_BY_NAME: Mapping[str, Secret | Setting] = {value.name: value for value in CONNECT_VALUES}


def secret(name: str) -> Secret:
    """The secret called ``name``; ``ValueError`` naming the known ones otherwise."""
    try:
        return BY_NAME[name]
    except KeyError:
        raise ValueError(f"unknown secret {name!r} (known: {', '.join(SECRET_NAMES)})") from None


def clean(value: str | None) -> str | None:
    """A secret as stsync uses it, from wherever it was read (environment, prompt, flag, keyring,
    secrets file): without surrounding whitespace — the newline of ``$(cat key.txt)``, the CR of
    a CRLF env file or of a paste — and ``None`` when nothing is left. Inner characters are the
    secret's own and kept."""
    if value is None:
        return None
    return value.strip() or None


def env_var_names() -> str:
    """``STSYNC_ST_CLIENT_SECRET, STSYNC_ST_APP_KEY, STSYNC_RF_API_KEY`` — for hints."""
    return ", ".join(secret.env_var.name for secret in SECRETS)


def connect_value(name: str) -> Secret | Setting:
    """A value ``connect`` asks for, by name (``tenant_id``, ``st_client_secret``, …)."""
    try:
        return CONNECT_VALUE_BY_NAME[name]
    except KeyError:
        raise ValueError(f"unknown connect value {name!r} (known: {', '.join(CONNECT_VALUE_BY_NAME)})") from None


def secret_for_assignment(name: str) -> Secret | None:
    """The secret a ``NAME=value`` line names: its store name or its environment variable,
    in any case (``st_client_secret``, ``STSYNC_ST_CLIENT_SECRET``); None for anything else."""
    wanted = name.strip().casefold()
    return next((s for s in SECRETS if wanted in (s.name.casefold(), s.env_var.name.casefold())), None)

