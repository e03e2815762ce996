"""The connection's three secrets, named once: store name, environment variable, label, option,
and where a person finds each one (SPEC §2).

Names only, never values: the values live in the environment, the OS keyring or the opt-in
secrets file (``storage/secrets.py`` reads and writes them). Every message that names a secret
— ``connect``'s prompts, ``validate``'s Secrets check, the "no usable secret store" hint —
takes its words from this table.

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
