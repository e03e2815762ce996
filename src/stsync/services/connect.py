"""`connect` and `disconnect`: the setup guide's Steps 1–3 as one verified operation.

The steps, each a function the CLI calls in turn (``connect`` chains them for a caller that
asks nothing):

1. ``plan_connect`` — which connection this config file is (its ``connection`` key, else its
   file name; ``--connection NAME`` names a new one) and that no other config file owns that
   name (``ConnectionInUse``, exit 3, both paths named); the secret store (the option, else
   the one the config remembers, else the OS keyring) and that it can be used — a locked or
   missing keyring is reported here, before anything is asked or sent; then the values: the
   options and ``--secrets-from-stdin`` over the environment over the config and the stored
   secrets. What is still missing is listed, for the CLI to ask or to refuse.
2. ``verify_connection`` — the check engine's connect plan (token → app key and tenant →
   booking provider → campaign, which proves the Referral Factory key too), with the values
   as they are now, before anything is stored. It stops at the first failure, in the words
   ``validate --online`` and ``diagnose`` use for it, and names the values that failure
   rejected (``Verification.rejected``), so that a person can be asked again for those only.
   Each check is reported as it is made (``on_check``). The cached token is dropped first: a
   reconnect proves the new credentials, never assumes them.
3. ``save_connection`` — claims the name in the connection registry, stores every secret
   that did not come from the environment in the chosen store (moving them there when the
   store changed), writes the config (``connection``, ``[secrets] store``, the identity; a new
   config starts with the seed's default mapping, an existing mapping is kept), and records in
   the registry where the secrets are.

``disconnect`` removes the stored secrets and the cached token and keeps the config (with its
store) and the ledger; ``disconnect_would_remove`` says whether there is anything to remove
("already disconnected" otherwise).

Secret values are never put in a message, a log line, a result or an exception.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar

from stsync import credentials, envvars
from stsync.checks import table
from stsync.checks.context import CheckContext, Consent, LiveAccess
from stsync.checks.live import BOOKING_PROVIDER_INCORRECT
from stsync.checks.result import Check
from stsync.checks.runner import CheckRun
from stsync.connection import build_referral_factory_client, build_servicetitan_client
from stsync.credentials import SECRET_NAMES, Secret, Setting
from stsync.errors import AuthError, ConfigError, ConnectionInUse, StsyncError, UsageError
from stsync.logs import get_logger, register_secret
from stsync.referralfactory.client import ReferralFactoryClient
from stsync.servicetitan.client import ServiceTitanClient
from stsync.storage.config import Config, default_config, load_config, resolve_endpoints
from stsync.storage.config_writer import save_config
from stsync.storage.paths import (
    CONNECTION_NAME_RULE,
    ConnectionPaths,
    connection_name,
    suggested_connection_name,
    valid_connection_name,
)
from stsync.storage.registry import Registry
from stsync.storage.secrets import SecretStore
from stsync.vocabulary import Environment, SecretsStore

log = get_logger(__name__)

T = TypeVar("T")

# How the Booking Provider Value check words its own failure (the troubleshooting guide's).
BOOKING_PROVIDER_WORDS = BOOKING_PROVIDER_INCORRECT.split(" — ")[0]

SecretsStoreKind = Literal["keyring", "file"]
SECRETS_STORES: tuple[SecretsStoreKind, ...] = ("keyring", "file")
# Where a value came from: an option, --secrets-from-stdin, an STSYNC_* variable, the secret
# store, the existing config, a prompt, or the built-in default.
Origin = Literal["option", "stdin", "env", "stored", "config", "typed", "default"]
ENVIRONMENT = "environment"
# The values connect needs besides the environment, in the order they are asked for.
VALUE_NAMES: tuple[str, ...] = tuple(value.name for value in credentials.CONNECT_VALUES)
INTEGER_VALUES = frozenset({"tenant_id", "booking_provider", "campaign_id"})


def describe_value(name: str) -> Secret | Setting:
    """A value's label, option and where it is found (the credentials tables)."""
    return credentials.connect_value(name)


def label_for(name: str) -> str:
    return "ServiceTitan environment" if name == ENVIRONMENT else describe_value(name).label


def option_for(name: str) -> str:
    return "--environment" if name == ENVIRONMENT else describe_value(name).option


@dataclass
class ConnectValues:
    """What the user gave (options, stdin or prompts). ``None`` = not given."""

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
            setattr(self, name, credentials.clean(getattr(self, name)))

    def missing(self) -> list[str]:
        """The values not given yet, in the order they are asked for."""
        return [name for name in VALUE_NAMES if getattr(self, name) in (None, "")]

    def complete(self) -> CompleteValues:
        """Every value, or ``UsageError`` naming the options of those missing (or a bad environment)."""
        missing = self.missing()
        if missing:
            raise UsageError(
                "missing: " + ", ".join(f"{label_for(m)} ({option_for(m)})" for m in missing),
                hint="pass them as options (secrets also as STSYNC_* variables or with --secrets-from-stdin), "
                "or run `stsync connect` in a terminal to be asked",
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
    """Which connection, which store, and the merged values with where each came from."""

    paths: ConnectionPaths  # named as the connection will be (its state dir, its keyring entries)
    config_path: Path
    existing: Config | None
    values: ConnectValues
    origins: dict[str, Origin]
    secrets_store: SecretsStoreKind
    previous_name: str | None = None  # the name the config went by, when --connection changes it

    def __repr__(self) -> str:
        return f"ConnectPlan(connection={self.paths.name!r}, config={str(self.config_path)!r}, store={self.secrets_store!r})"

    @property
    def missing(self) -> list[str]:
        """Values still unknown, in the order they are asked for."""
        return self.values.missing()

    @property
    def stored_secrets(self) -> list[str]:
        """Secrets taken from the store (a reconnect may replace them)."""
        return [name for name in SECRET_NAMES if self.origins.get(name) == "stored"]

    @property
    def stores_secrets(self) -> bool:
        """Whether anything will be stored: a secret that does not come from the environment."""
        return any(self.origins.get(name) != "env" for name in SECRET_NAMES)

    def set(self, name: str, value: Any, origin: Origin = "typed") -> None:
        """A value the person typed (or chose): it replaces whatever was there."""
        if name in SECRET_NAMES:
            value = credentials.clean(str(value))
            register_secret(value)
        elif name in INTEGER_VALUES:
            value = int(value)
        elif isinstance(value, str):
            value = value.strip()
        setattr(self.values, name, value)
        self.origins[name] = origin

    def current(self, name: str) -> Any:
        """The value now (never for a secret: those are not shown)."""
        if name in SECRET_NAMES:
            raise ValueError("a secret's value is never shown")
        return getattr(self.values, name)


# == 1. plan =====================================================================================


def plan_connect(
    config_path: Path,
    given: ConnectValues,
    *,
    connection: str | None = None,
    secrets_store: str | None = None,
    stdin_secrets: dict[str, str] | None = None,
) -> ConnectPlan:
    """Which connection and store, checked usable; the merged values. Raises
    ``ConnectionInUse`` (3), ``SecretStoreUnavailable`` (3) or ``UsageError`` (2)."""
    existing = load_config(config_path) if config_path.exists() else None
    name, previous = _connection_for(config_path, existing, connection)
    store_kind = _store_for(existing, secrets_store)
    paths = ConnectionPaths.named(name, config_path, secrets_store=store_kind)

    values = ConnectValues(**asdict(given))
    values.trim_secrets()
    origins: dict[str, Origin] = {name: "option" for name, value in asdict(values).items() if value not in (None, "")}
    for secret_name, value in (stdin_secrets or {}).items():
        if getattr(values, secret_name) not in (None, ""):
            raise UsageError(
                f"the {credentials.secret(secret_name).label} is given twice: as {option_for(secret_name)} and on standard input",
                hint="give each secret once",
            )
        setattr(values, secret_name, value)
        origins[secret_name] = "stdin"
    if values.environment is not None and values.environment not in tuple(Environment):
        raise UsageError(f"--environment must be {' or '.join(Environment)}, not {values.environment!r}")

    if existing is not None:
        st, rf = existing.servicetitan, existing.referral_factory
        from_config: dict[str, str | int | None] = {
            ENVIRONMENT: str(st.environment),
            "tenant_id": st.tenant_id,
            "client_id": st.client_id,
            "booking_provider": st.booking_provider,
            "campaign_id": rf.campaign_id,
        }
        for key, configured in from_config.items():
            if getattr(values, key) in (None, "") and configured not in (None, ""):
                setattr(values, key, configured)
                origins[key] = "config"
    if values.environment in (None, ""):
        values.environment = Environment.PRODUCTION
        origins[ENVIRONMENT] = "default"

    for secret in credentials.SECRETS:
        if getattr(values, secret.name) in (None, ""):
            from_env = envvars.read(secret.env_var)
            if from_env:
                register_secret(from_env)
                setattr(values, secret.name, from_env)
                origins[secret.name] = "env"
    plan = ConnectPlan(paths, config_path, existing, values, origins, store_kind, previous)
    if plan.stores_secrets:
        store = SecretStore(paths)
        check_store_usable(store)
        for secret_name in SECRET_NAMES:
            if getattr(values, secret_name) in (None, ""):
                stored = store.get(secret_name)  # not in the environment (read above): the store's
                if stored:
                    setattr(values, secret_name, stored)
                    origins[secret_name] = "stored"
    return plan


def _connection_for(config_path: Path, existing: Config | None, requested: str | None) -> tuple[str, str | None]:
    """The connection's name, and the name the config went by when ``requested`` changes it."""
    current = None
    if existing is not None:
        current = existing.connection or connection_name(config_path)
    registry = Registry()
    if requested is not None:
        requested = requested.strip()
        if not valid_connection_name(requested):
            raise UsageError(f"--connection {requested!r} is not a connection name: {CONNECTION_NAME_RULE}")
        if current is not None and requested != current and registry.owner(current) == str(config_path.expanduser().resolve()):
            state = ConnectionPaths.named(current, config_path).state
            if state.exists():
                raise UsageError(
                    f"{config_path} is connection '{current}': its ledger and state are in {state}; "
                    f"--connection cannot rename it to '{requested}'",
                    hint=f"keep the name '{current}' (leave out --connection), or start a new connection from a new config file",
                )
        name = requested
    else:
        name = current or suggested_connection_name(config_path)
    owner = registry.conflict(name, config_path)
    if owner is not None:
        raise ConnectionInUse(name, owner=owner, config=str(config_path.expanduser().resolve()))
    return name, current if current is not None and current != name else None


def _store_for(existing: Config | None, requested: str | None) -> SecretsStoreKind:
    if requested is not None:
        if requested not in SECRETS_STORES:
            raise UsageError(f"--secrets-store must be keyring or file, not {requested!r}")
        return "file" if requested == "file" else "keyring"
    if existing is not None and existing.secrets.store == SecretsStore.FILE:
        return "file"
    return "keyring"


def check_store_usable(store: SecretStore) -> None:
    """The chosen store can be written now: the keyring answers (not locked, one exists), or
    the state directory can hold the 0600 file. ``SecretStoreUnavailable`` / ``ConfigError``."""
    if store.store == "keyring":
        store.check_keyring("store the secrets")
        return
    try:
        store.paths.ensure_state()
    except OSError as exc:
        raise ConfigError(
            f"the secrets file cannot be written: {store.paths.state} is not usable ({exc.strerror or exc})",
            hint="make the state directory writable (or set STSYNC_STATE_DIR)",
        ) from None


def read_secret_lines(text: str) -> dict[str, str]:
    """``--secrets-from-stdin``: one ``NAME=value`` per line, NAME a secret's name or its
    environment variable (any case; ``export`` allowed); blank lines and ``#`` comments are
    skipped; a value is trimmed, and one pair of surrounding quotes removed. A line that is not
    that is refused (exit 2) by its number — never with its value."""
    found: dict[str, str] = {}
    lines: dict[str, int] = {}
    known = ", ".join(f"{s.name} (or {s.env_var.name})" for s in credentials.SECRETS)
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("export "):
            line = line[len("export ") :].lstrip()
        name, separator, value = line.partition("=")
        if not separator:
            raise UsageError(f"standard input, line {number}: not NAME=value", hint=f"one secret per line: {known}")
        secret = credentials.secret_for_assignment(name)
        if secret is None:
            shown = f"{name.strip()!r} is" if re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]{0,40}", name.strip()) else "it names"
            raise UsageError(
                f"standard input, line {number}: {shown} not a secret stsync knows (its value was not read)",
                hint=f"the names are {known}",
            )
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'":
            value = value[1:-1].strip()
        if not value:
            raise UsageError(f"standard input, line {number}: {secret.name} has no value")
        if secret.name in found:
            raise UsageError(f"standard input: {secret.name} is given twice (lines {lines[secret.name]} and {number})")
        register_secret(value)
        found[secret.name] = value
        lines[secret.name] = number
    return found


# == 2. verify ===================================================================================


@dataclass
class Verification:
    """What the live checks found: each check made, and the first failure with the values it
    rejected (``failure`` is never serialized: ``to_dict`` gives its shape)."""

    checks: list[Check] = field(default_factory=list)
    failure: StsyncError | None = None
    failed_check: str | None = None
    rejected: tuple[str, ...] = ()
    campaign_name: str | None = None
    campaign_status: str | None = None

    @property
    def ok(self) -> bool:
        return self.failure is None

    def passed(self, name: str) -> bool:
        return any(check.name == name and check.passed for check in self.checks)

    def to_dict(self) -> dict[str, Any]:
        return {
            "token": self.passed(table.ST_TOKEN.name),
            "app_key_and_tenant": self.passed(table.ST_APP_KEY.name),
            "booking_provider": self.passed(table.BOOKING_PROVIDER.name),
            "referral_factory_key": self.passed(table.CAMPAIGN.name),
            "campaign_name": self.campaign_name,
            "campaign_status": self.campaign_status,
            "checks": [check.to_dict() for check in self.checks],
        }


def config_for(plan: ConnectPlan, values: CompleteValues) -> Config:
    """The config ``connect`` would write: the existing one (or the default mapping) with this
    connection's name, store and identity."""
    base = plan.existing if plan.existing is not None else default_config()
    identity = {
        "environment": values.environment,
        "tenant_id": values.tenant_id,
        "client_id": values.client_id,
        "booking_provider": values.booking_provider,
    }
    return base.model_copy(
        update={
            "connection": plan.paths.name,
            "servicetitan": base.servicetitan.model_copy(update=identity),
            "referral_factory": base.referral_factory.model_copy(update={"campaign_id": values.campaign_id}),
            "secrets": base.secrets.model_copy(update={"store": SecretsStore(plan.secrets_store)}),
        }
    )


def verify_connection(
    plan: ConnectPlan,
    *,
    on_check: Callable[[Check], None] | None = None,
    transport: Any = None,
    consent: Consent | None = None,
) -> Verification:
    """The connect plan of the check engine with the plan's values, before anything is stored.
    Stops at the first failure; never raises for what it checks. ``consent``: whom to ask
    before the client secret goes to a token server the configuration does not name."""
    values = plan.values.complete()
    paths = plan.paths
    config = config_for(plan, values)
    endpoints = resolve_endpoints(config)
    paths.ensure_state()
    # A reconnect proves the new credentials: never reuse a token fetched with the old ones.
    paths.token_cache.unlink(missing_ok=True)
    opened: list[Any] = []

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
        endpoints,
        servicetitan=servicetitan,
        referral_factory=referral_factory,
        client_secret=lambda: values.st_client_secret,
        consent=consent,
    )
    # The secrets are the plan's values, not the store's: the live checks need not look them up.
    context = CheckContext(
        paths=paths, config_path=plan.config_path, config=config, live=live, secret_sources=dict.fromkeys(SECRET_NAMES, "given")
    )
    verification = Verification()

    def heard(check: Check) -> None:
        verification.checks.append(check)
        if on_check is not None:
            on_check(check)

    try:
        CheckRun(context).run(table.CONNECT, stop_at_first_failure=True, on_check=heard)
    except StsyncError as exc:
        failed = verification.checks[-1] if verification.checks and verification.checks[-1].failed else None
        verification.failure = exc
        verification.failed_check = failed.name if failed else None
        verification.rejected = rejected_values(failed.name if failed else None, exc, plan.origins)
    finally:
        for client in opened:
            client.close()
    if live.campaign is not None:
        verification.campaign_name = live.campaign.name
        verification.campaign_status = live.campaign.status
    return verification


def rejected_values(check_name: str | None, error: StsyncError, origins: dict[str, Origin]) -> tuple[str, ...]:
    """The values a failed connect check rejected — what to ask for again. None for a failure
    that no value of the person's fixes (a remote down, a rate limit)."""
    if not isinstance(error, (AuthError, ConfigError)):
        return ()
    text = str(error)
    if check_name == table.ST_TOKEN.name:
        if "Client ID / Client Secret" in text and "they were made for" not in text:
            # After a rotation the secret is what changed; a Client ID typed just now may be a typo.
            return ("client_id", "st_client_secret") if origins.get("client_id") == "typed" else ("st_client_secret",)
        return (ENVIRONMENT,)
    if check_name in (table.ST_APP_KEY.name, table.BOOKING_PROVIDER.name):
        if "ST-App-Key" in text:
            return ("st_app_key",)
        if check_name == table.BOOKING_PROVIDER.name and BOOKING_PROVIDER_WORDS in text:
            return ("booking_provider",)
        return ("tenant_id",)
    if check_name == table.CAMPAIGN.name:
        return ("rf_api_key",) if isinstance(error, AuthError) else ("campaign_id",)
    return ()


# == 3. save =====================================================================================


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
    verification: Verification | None
    secrets_store: str
    stored_secrets: list[str] = field(default_factory=list)
    secrets_from_env: list[str] = field(default_factory=list)
    store_warning: str | None = None
    previous_connection: str | None = None

    def to_dict(self) -> dict[str, Any]:
        shape = {key: value for key, value in self.__dict__.items() if key not in ("verification", "store_warning")}
        shape["verification"] = self.verification.to_dict() if self.verification is not None else None
        return shape


def save_connection(plan: ConnectPlan, verification: Verification | None) -> ConnectResult:
    """Claim the name, store the secrets, write the config, record where the secrets are."""
    given = plan.values.complete()
    if verification is not None and verification.failure is not None:
        raise verification.failure
    paths = plan.paths
    registry = Registry()
    registry.claim(paths)  # under its lock: a second config file racing for the name stops here
    if verification is None:
        # Unverified new credentials: a token cached with the old ones must not stand in for them.
        paths.token_cache.unlink(missing_ok=True)
    config = config_for(plan, given)
    created = plan.existing is None

    store = SecretStore(paths)
    stored: list[str] = []
    warning: str | None = None
    for name in SECRET_NAMES:
        if plan.origins.get(name) == "env":
            continue
        warning = store.set(name, getattr(given, name), store=plan.secrets_store) or warning
        stored.append(name)
    save_config(config, plan.config_path)
    if stored:
        registry.record_secrets(paths, plan.secrets_store)
    if plan.previous_name is not None:
        registry.release(plan.previous_name, plan.config_path)
    log.info(
        "connected %s: tenant %s, booking provider %s, campaign %s (verified=%s, store=%s)",
        paths.name, given.tenant_id, given.booking_provider, given.campaign_id, verification is not None, plan.secrets_store,
    )
    return ConnectResult(
        connection=paths.name,
        config_path=str(plan.config_path),
        state_dir=str(paths.state),
        environment=str(given.environment),
        tenant_id=given.tenant_id,
        booking_provider=given.booking_provider,
        campaign_id=given.campaign_id,
        created_config=created,
        verified=verification is not None,
        verification=verification,
        secrets_store=plan.secrets_store,
        stored_secrets=stored,
        secrets_from_env=[name for name in SECRET_NAMES if plan.origins.get(name) == "env"],
        store_warning=warning,
        previous_connection=plan.previous_name,
    )


def connect(
    plan: ConnectPlan,
    *,
    verify: bool = True,
    on_check: Callable[[Check], None] | None = None,
    transport: Any = None,
    consent: Consent | None = None,
) -> ConnectResult:
    """Verify (unless told not to), then save: the whole of ``connect`` for a caller that asks
    nothing. The first failure is raised, nothing stored."""
    plan.values.complete()
    verification = verify_connection(plan, on_check=on_check, transport=transport, consent=consent) if verify else None
    if verification is not None and verification.failure is not None:
        raise verification.failure
    return save_connection(plan, verification)


# == disconnect ===========================================================================

@dataclass
class DisconnectResult:
    connection: str
    removed_secrets: list[str]
    removed_token: bool
    kept: list[str]
    already_disconnected: bool = False

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def disconnect_would_remove(paths: ConnectionPaths) -> bool:
    """Whether ``disconnect`` has anything to remove; True when it cannot tell (a keyring that
    may hold the secrets cannot be read: ``disconnect`` then says so)."""
    if paths.token_cache.exists():
        return True
    store = SecretStore(paths)
    sources = {store.source(name) for name in SECRET_NAMES}
    if sources & {"keyring", "file"}:
        return True
    if store.store == "keyring" and not store.keyring_usable():
        return Registry(paths.state.parent).secrets_of(paths.name) is not None
    return False


def disconnect(paths: ConnectionPaths) -> DisconnectResult:
    """Remove this connection's stored secrets and cached token; keep config (with its store)
    and ledger. A keyring that cannot be read is skipped only when the registry knows nothing
    is stored in it."""
    store = SecretStore(paths)
    registry = Registry(paths.state.parent)
    known_empty = registry.secrets_of(paths.name) is None
    skip_keyring = known_empty and store.store == "keyring" and not store.keyring_usable()
    removed = store.delete_all(keyring=not skip_keyring)
    had_token = paths.token_cache.exists()
    paths.token_cache.unlink(missing_ok=True)
    if paths.config.is_file():
        registry.record_secrets(paths, None)
    kept = [str(p) for p in (paths.config, paths.ledger) if Path(p).exists()]
    log.info("disconnected %s (secrets removed: %s)", paths.name, ", ".join(removed) or "none")
    return DisconnectResult(
        connection=paths.name,
        removed_secrets=removed,
        removed_token=had_token,
        kept=kept,
        already_disconnected=not removed and not had_token,
    )
