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
from typing import Literal, TypeVar

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

T = TypeVar("T")

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

    def trim_secrets(self) -> None:
        """A flag or a paste with a trailing newline: each secret without it."""
        for name in SECRET_NAMES:
            setattr(self, name, clean_secret(getattr(self, name)))

    def missing(self) -> list[str]:
        """The values not given yet, in the order they are asked for."""
        return [name for name in [*IDENTITY_FIELDS, *SECRET_NAMES] if getattr(self, name) in (None, "")]

    def complete(self) -> CompleteValues:
        """Every value, or ``UsageError`` naming the flags of those missing (or a bad environment)."""
        missing = self.missing()
        if missing:
            raise UsageError(
                "missing: " + ", ".join(f"{label_for(m)} ({FLAG_FOR[m]})" for m in missing),
                hint="pass them as options, or run `stsync connect` in a terminal to be asked",
            )
        if self.environment not in tuple(Environment):
            raise UsageError(f"--environment must be {' or '.join(Environment)}, not {self.environment!r}")
        return CompleteValues(
            environment=Environment(self.environment),
            tenant_id=_given(self.tenant_id),
            client_id=_given(self.client_id),
            booking_provider=_given(self.booking_provider),
            campaign_id=_given(self.campaign_id),
            st_client_secret=_given(self.st_client_secret),
            st_app_key=_given(self.st_app_key),
            rf_api_key=_given(self.rf_api_key),
        )


@dataclass(frozen=True)
class CompleteValues:
    """Every value ``connect`` verifies and stores; the secrets are never shown."""

    environment: Environment
    tenant_id: int
    client_id: str
    booking_provider: int
    campaign_id: int
    st_client_secret: str = field(repr=False)
    st_app_key: str = field(repr=False)
    rf_api_key: str = field(repr=False)


def _given(value: T | None) -> T:
    if value is None:
        raise AssertionError("ConnectValues.complete() checks missing() first")
    return value


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
    values.trim_secrets()
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
    return ConnectPlan(values=values, missing=values.missing(), existing_config=existing is not None)


def connect(
    paths: ConnectionPaths,
    values: ConnectValues,
    *,
    secrets_store: SecretsStoreKind = "keyring",
    verify: bool = True,
    transport=None,
) -> ConnectResult:
    """Verify (unless told not to), store the secrets, write the config."""
    values.trim_secrets()  # prompts set them after plan_connect: trimmed here too
    given = values.complete()
    for name in SECRET_NAMES:
        register_secret(getattr(given, name))

    created = not paths.config.exists()
    config: Config = load_config(paths.config) if not created else default_config()
    config = config.model_copy(
        update={
            "servicetitan": config.servicetitan.model_copy(
                update={
                    "environment": given.environment,
                    "tenant_id": given.tenant_id,
                    "client_id": given.client_id,
                    "booking_provider": given.booking_provider,
                }
            ),
            "referral_factory": config.referral_factory.model_copy(update={"campaign_id": given.campaign_id}),
        }
    )

    paths.ensure_state()
    # A reconnect proves the new credentials: never reuse a token fetched with the old ones.
    paths.token_cache.unlink(missing_ok=True)

    verification = Verification()
    if verify:
        verification = verify_connection(paths, config, given, transport=transport)

    store = SecretStore(paths)
    stored: list[str] = []
    for name in SECRET_NAMES:
        value = getattr(given, name)
        if store.source(name) != "env":
            store.set(name, value, store=secrets_store)
            stored.append(name)
    save_config(config, paths.config)
    log.info(
        "connected %s: tenant %s, booking provider %s, campaign %s (verified=%s, store=%s)",
        paths.name, given.tenant_id, given.booking_provider, given.campaign_id, verify, secrets_store,
    )
    return ConnectResult(
        connection=paths.name,
        config_path=str(paths.config),
        state_dir=str(paths.state),
        environment=str(given.environment),
        tenant_id=given.tenant_id,
        booking_provider=given.booking_provider,
        campaign_id=given.campaign_id,
        created_config=created,
        verified=verify,
        verification=verification,
        secrets_store=secrets_store,
        stored_secrets=stored,
    )


def verify_connection(paths: ConnectionPaths, config: Config, values: CompleteValues, *, transport=None) -> Verification:
    """The check engine's connect plan (token → booking provider; campaign) with the values
    given, before anything is stored. Raises the first failure, in the check's own words."""
    endpoints = resolve_endpoints(config)
    opened: list = []

    def servicetitan() -> ServiceTitanClient:
        client = build_servicetitan_client(
            paths, config, endpoints, client_secret=values.st_client_secret, app_key=values.st_app_key, transport=transport
        )
        opened.append(client)
        return client

    def referral_factory() -> ReferralFactoryClient:
        client = build_referral_factory_client(paths, config, endpoints, api_key=values.rf_api_key, transport=transport)
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
