"""`connect` and `disconnect`: the setup guide's Steps 1–3 as one verified operation.

Connect verifies live before it stores anything — the check engine's connect plan: the
token, the booking provider (which proves the app key and tenant too), the Referral Factory
campaign (which proves the key) — and stops at the first failure, in the words ``validate
--online`` and ``diagnose`` use for it. Then it stores the secrets and writes the config. A
new config starts with the seed's default mapping; an existing mapping is kept. Running it again reconnects: the
cached token is dropped so the new credentials are proven, not assumed.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

from stsync.checks import table
from stsync.checks.context import CheckContext, LiveAccess
from stsync.checks.runner import CheckRun
from stsync.connection import build_referral_factory_client, build_servicetitan_client
from stsync.credentials import SECRET_NAMES, SECRETS
from stsync.credentials import clean as clean_secret
from stsync.credentials import secret as secret_named
from stsync.errors import ConfigError, UsageError
from stsync.logs import get_logger, register_secret
from stsync.referralfactory.client import ReferralFactoryClient
from stsync.servicetitan.client import ServiceTitanClient
from stsync.storage.config import Config, default_config, load_config, resolve_endpoints
from stsync.storage.config_writer import save_config
from stsync.storage.paths import ConnectionPaths
from stsync.storage.secrets import SecretStore
from stsync.vocabulary import Environment

log = get_logger(__name__)

SecretsStoreKind = Literal["keyring", "file"]

# What each value is, for prompts and "missing" messages.
IDENTITY_FIELDS: dict[str, str] = {
    "tenant_id": "ServiceTitan Tenant ID",
    "client_id": "ServiceTitan Client ID",
    "booking_provider": "Booking Provider Value (\"Allowed 'booking_provider' value\")",
    "campaign_id": "Referral Factory campaign ID",
}
FLAG_FOR = {
    "tenant_id": "--tenant-id",
    "client_id": "--client-id",
    "booking_provider": "--booking-provider",
    "campaign_id": "--campaign-id",
    **{secret.name: secret.option for secret in SECRETS},
}


def label_for(name: str) -> str:
    """What a value of ``connect`` is called in prompts and "missing" messages."""
    return IDENTITY_FIELDS.get(name) or secret_named(name).label


@dataclass
class ConnectValues:
    """What the user gave (flags or prompts). ``None`` = not given."""

    environment: str | None = None
    tenant_id: int | None = None
    client_id: str | None = None
    booking_provider: int | None = None
    campaign_id: int | None = None
    st_client_secret: str | None = None
    st_app_key: str | None = None
    rf_api_key: str | None = None

    def __repr__(self) -> str:  # never show secrets, even in a debugger or a trace
        shown = {k: v for k, v in asdict(self).items() if k not in SECRET_NAMES}
        return f"ConnectValues({shown}, secrets=<hidden>)"


@dataclass
class ConnectPlan:
    """The merged values: flags over the existing config over stored secrets."""

    values: ConnectValues
    missing: list[str]
    existing_config: bool


@dataclass
class Verification:
    token: bool = False
    booking_provider: bool = False
    referral_factory_key: bool = False
    campaign_name: str | None = None
    campaign_status: str | None = None


@dataclass
class ConnectResult:
    connection: str
    config_path: str
    state_dir: str
    environment: str
    tenant_id: int
    booking_provider: int
    campaign_id: int
    created_config: bool
    verified: bool
    verification: Verification
    secrets_store: str
    stored_secrets: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)


def plan_connect(paths: ConnectionPaths, given: ConnectValues) -> ConnectPlan:
    """Merge what was given with what the connection already has; list what is still missing."""
    existing = None
    if paths.config.exists():
        existing = load_config(paths.config)
    values = ConnectValues(**asdict(given))
    for name in SECRET_NAMES:  # a flag or a paste with a trailing newline: the secret without it
        setattr(values, name, clean_secret(getattr(values, name)))
    if existing is not None:
        st, rf = existing.servicetitan, existing.referral_factory
        values.environment = values.environment or st.environment
        values.tenant_id = values.tenant_id if values.tenant_id is not None else st.tenant_id
        values.client_id = values.client_id or st.client_id
        values.booking_provider = values.booking_provider if values.booking_provider is not None else st.booking_provider
        values.campaign_id = values.campaign_id if values.campaign_id is not None else rf.campaign_id
    values.environment = values.environment or Environment.PRODUCTION
    store = SecretStore(paths)
    for name in SECRET_NAMES:
        if getattr(values, name) is None:
            try:
                setattr(values, name, store.get(name))
            except ConfigError:
                pass  # an unusable keyring only matters if the value is still missing
    missing = [name for name in [*IDENTITY_FIELDS, *SECRET_NAMES] if getattr(values, name) in (None, "")]
    return ConnectPlan(values=values, missing=missing, existing_config=existing is not None)


def connect(
    paths: ConnectionPaths,
    values: ConnectValues,
    *,
    secrets_store: SecretsStoreKind = "keyring",
    verify: bool = True,
    transport=None,
) -> ConnectResult:
    """Verify (unless told not to), store the secrets, write the config."""
    for name in SECRET_NAMES:  # prompts set them after plan_connect: trimmed here too
        setattr(values, name, clean_secret(getattr(values, name)))
    missing = [name for name in [*IDENTITY_FIELDS, *SECRET_NAMES] if getattr(values, name) in (None, "")]
    if missing:
        raise UsageError(
            "missing: " + ", ".join(f"{label_for(m)} ({FLAG_FOR[m]})" for m in missing),
            hint="pass them as options, or run `stsync connect` in a terminal to be asked",
        )
    if values.environment not in tuple(Environment):
        raise UsageError(f"--environment must be {' or '.join(Environment)}, not {values.environment!r}")
    for name in SECRET_NAMES:
        register_secret(getattr(values, name))

    created = not paths.config.exists()
    config: Config = load_config(paths.config) if not created else default_config()
    config = config.model_copy(
        update={
            "servicetitan": config.servicetitan.model_copy(
                update={
                    "environment": values.environment,
                    "tenant_id": int(values.tenant_id),  # type: ignore[arg-type]
                    "client_id": values.client_id,
                    "booking_provider": int(values.booking_provider),  # type: ignore[arg-type]
                }
            ),
            "referral_factory": config.referral_factory.model_copy(update={"campaign_id": int(values.campaign_id)}),  # type: ignore[arg-type]
        }
    )

    paths.ensure_state()
    # A reconnect proves the new credentials: never reuse a token fetched with the old ones.
    paths.token_cache.unlink(missing_ok=True)

    verification = Verification()
    if verify:
        verification = verify_connection(paths, config, values, transport=transport)

    store = SecretStore(paths)
    stored: list[str] = []
    for name in SECRET_NAMES:
        value = getattr(values, name)
        if value and store.source(name) != "env":
            store.set(name, value, store=secrets_store)
            stored.append(name)
    save_config(config, paths.config)
    log.info(
        "connected %s: tenant %s, booking provider %s, campaign %s (verified=%s, store=%s)",
        paths.name, values.tenant_id, values.booking_provider, values.campaign_id, verify, secrets_store,
    )
    return ConnectResult(
        connection=paths.name,
        config_path=str(paths.config),
        state_dir=str(paths.state),
        environment=str(values.environment),
        tenant_id=int(values.tenant_id),  # type: ignore[arg-type]
        booking_provider=int(values.booking_provider),  # type: ignore[arg-type]
        campaign_id=int(values.campaign_id),  # type: ignore[arg-type]
        created_config=created,
        verified=verify,
        verification=verification,
        secrets_store=secrets_store,
        stored_secrets=stored,
    )


def verify_connection(paths: ConnectionPaths, config: Config, values: ConnectValues, *, transport=None) -> Verification:
    """The check engine's connect plan (token → booking provider; campaign) with the values
    given, before anything is stored. Raises the first failure, in the check's own words."""
    endpoints = resolve_endpoints(config)
    opened: list = []

    def servicetitan() -> ServiceTitanClient:
        client = build_servicetitan_client(
            paths, config, endpoints, client_secret=values.st_client_secret, app_key=values.st_app_key, transport=transport  # type: ignore[arg-type]
        )
        opened.append(client)
        return client

    def referral_factory() -> ReferralFactoryClient:
        client = build_referral_factory_client(paths, config, endpoints, api_key=values.rf_api_key, transport=transport)  # type: ignore[arg-type]
        opened.append(client)
        return client

    live = LiveAccess(
        endpoints, servicetitan=servicetitan, referral_factory=referral_factory, client_secret=lambda: values.st_client_secret
    )
    # The secrets are the values given, not the store's: the live checks need not look them up.
    context = CheckContext(
        paths=paths, config_path=paths.config, config=config, live=live, secret_sources=dict.fromkeys(SECRET_NAMES, "given")
    )
    try:
        CheckRun(context).run(table.CONNECT, stop_at_first_failure=True)
    finally:
        for client in opened:
            client.close()
    campaign = live.campaign
    return Verification(
        token=True,
        booking_provider=True,
        referral_factory_key=True,
        campaign_name=campaign.name if campaign is not None else None,
        campaign_status=campaign.status if campaign is not None else None,
    )


@dataclass
class DisconnectResult:
    connection: str
    removed_secrets: list[str]
    removed_token: bool
    kept: list[str]

    def to_dict(self) -> dict:
        return asdict(self)


def disconnect(paths: ConnectionPaths) -> DisconnectResult:
    """Remove this connection's secrets and cached token; keep config and ledger."""
    store = SecretStore(paths)
    removed = store.delete_all()
    had_token = paths.token_cache.exists()
    paths.token_cache.unlink(missing_ok=True)
    kept = [str(p) for p in (paths.config, paths.ledger) if Path(p).exists()]
    log.info("disconnected %s (secrets removed: %s)", paths.name, ", ".join(removed) or "none")
    return DisconnectResult(connection=paths.name, removed_secrets=removed, removed_token=had_token, kept=kept)


__all__ = [
    "ConnectPlan",
    "ConnectResult",
    "ConnectValues",
    "DisconnectResult",
    "connect",
    "disconnect",
    "plan_connect",
    "verify_connection",
]
