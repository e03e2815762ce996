"""Every ``STSYNC_*`` environment variable stsync reads, and the one rule that resolves a setting.

Guarantees:

- ``VARIABLES`` is the complete list: no module reads an ``STSYNC_*`` variable except through
  ``read`` / ``resolve`` here (tests/unit/test_envvars.py walks the source to keep it so), and
  the README and SPEC name exactly these.
- One precedence everywhere: a command-line option > the environment > the config key > the
  built-in default (SPEC §2). Cron and containers set the environment, so it beats the file.
- A value is taken without its surrounding whitespace (a trailing newline from ``$(cat …)``, the
  CR of a CRLF env file); an empty or blank value counts as unset, so ``STSYNC_ST_API_URL=``
  falls back to the config instead of pointing stsync at "".
- Nothing here logs or keeps a value: secrets are returned to the caller only.

Leaf module: the standard library only, importable from anywhere (the CLI imports it at start-up).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

PREFIX = "STSYNC_"


@dataclass(frozen=True)
class EnvVar:
    """One variable: its name, what it sets, the config key it overrides (if any), its doc."""

    name: str
    overrides: str
    doc: str
    config_key: str | None = None
    secret: bool = False


CONFIG = EnvVar(
    "STSYNC_CONFIG",
    overrides="the config file of the connection (`--config PATH` wins over it)",
    doc="Path of the connection's TOML config; its file name names the connection and its state directory.",
)
STATE_DIR = EnvVar(
    "STSYNC_STATE_DIR",
    overrides="the platform's state directory (the parent of `<connection>/`)",
    doc="Where each connection keeps its ledger, locks, cached token, rate-limit budget and log.",
)
ST_AUTH_URL = EnvVar(
    "STSYNC_ST_AUTH_URL",
    overrides="ServiceTitan's auth server (the default comes from servicetitan.environment)",
    doc="Base URL of ServiceTitan's token endpoint (`/connect/token` is appended).",
    config_key="servicetitan.auth_url",
)
ST_API_URL = EnvVar(
    "STSYNC_ST_API_URL",
    overrides="ServiceTitan's API server (the default comes from servicetitan.environment)",
    doc="Base URL of ServiceTitan's v2 APIs.",
    config_key="servicetitan.api_url",
)
RF_API_URL = EnvVar(
    "STSYNC_RF_API_URL",
    overrides="Referral Factory's API base URL",
    doc="Base URL of Referral Factory's v2 API (ends in /api/v2).",
    config_key="referral_factory.api_url",
)
ST_CLIENT_SECRET = EnvVar(
    "STSYNC_ST_CLIENT_SECRET",
    overrides="the stored secret st_client_secret (OS keyring or secrets file)",
    doc="ServiceTitan Client Secret of the tenant's API application.",
    secret=True,
)
ST_APP_KEY = EnvVar(
    "STSYNC_ST_APP_KEY",
    overrides="the stored secret st_app_key (OS keyring or secrets file)",
    doc="ServiceTitan App Key (ST-App-Key) of the application.",
    secret=True,
)
RF_API_KEY = EnvVar(
    "STSYNC_RF_API_KEY",
    overrides="the stored secret rf_api_key (OS keyring or secrets file)",
    doc="Referral Factory API key (a bearer token).",
    secret=True,
)
WEBHOOK_TOKEN = EnvVar(
    "STSYNC_WEBHOOK_TOKEN",
    overrides="nothing stored: `stsync serve --token` wins over it",
    doc="Shared token `stsync serve` requires in the webhook URL (/hooks/<token>) or the X-Stsync-Token header.",
    secret=True,
)
NOTIFY_WEBHOOK_URL = EnvVar(
    "STSYNC_NOTIFY_WEBHOOK_URL",
    overrides="notify.webhook_url",
    doc="Where alerts are POSTed as JSON (a Slack or Teams incoming webhook): the URL carries a token, "
    "so it is treated as a secret.",
    config_key="notify.webhook_url",
    secret=True,
)
NOTIFY_PING_URL = EnvVar(
    "STSYNC_NOTIFY_PING_URL",
    overrides="notify.ping_url",
    doc="Dead-man's-switch ping URL in the healthchecks.io style (`{job}` is replaced by push, qualify or sync); "
    "treated as a secret.",
    config_key="notify.ping_url",
    secret=True,
)
LOG_FORMAT = EnvVar(
    "STSYNC_LOG_FORMAT",
    overrides="logging.format (`--log-format` wins over it)",
    doc="`text` or `json`: how the log file (and stderr under `run`/`serve`) is written.",
    config_key="logging.format",
)

VARIABLES: tuple[EnvVar, ...] = (
    CONFIG,
    STATE_DIR,
    ST_AUTH_URL,
    ST_API_URL,
    RF_API_URL,
    ST_CLIENT_SECRET,
    ST_APP_KEY,
    RF_API_KEY,
    WEBHOOK_TOKEN,
    NOTIFY_WEBHOOK_URL,
    NOTIFY_PING_URL,
    LOG_FORMAT,
)
BY_NAME: Mapping[str, EnvVar] = {variable.name: variable for variable in VARIABLES}
# The variables that point stsync at other servers (the sandbox's `.env()` sets exactly these).
ENDPOINT_VARIABLES: tuple[EnvVar, ...] = (ST_AUTH_URL, ST_API_URL, RF_API_URL)


def _value(text: str | None) -> str | None:
    """``text`` without surrounding whitespace; ``None`` when it is missing, empty or blank."""
    if text is None:
        return None
    text = text.strip()
    return text or None


def read(variable: EnvVar, environ: Mapping[str, str] | None = None) -> str | None:
    """The variable's value from the environment (``os.environ`` unless given), or ``None``."""
    return _value((os.environ if environ is None else environ).get(variable.name))


def resolve(
    variable: EnvVar,
    *,
    option: str | None = None,
    configured: str | None = None,
    default: str | None = None,
    environ: Mapping[str, str] | None = None,
) -> str | None:
    """The one precedence: ``option`` > environment > ``configured`` > ``default``.

    Each candidate is trimmed and a blank one is skipped, so a blank option or config value
    falls through exactly like a blank variable.
    """
    for candidate in (_value(option), read(variable, environ), _value(configured), _value(default)):
        if candidate is not None:
            return candidate
    return None
