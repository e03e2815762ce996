"""The open connection: config + secrets + the two API clients + the ledger.

Every use case takes a ``Connection``. Building one costs nothing: each piece is created on
first use, so ``stsync validate`` never opens a socket and ``stsync history`` never needs a
secret.

The constructor is the seam for tests and embedders: ``servicetitan=``, ``referral_factory=``,
``ledger=``, ``endpoints=`` and ``secrets=`` are used as given instead of being built, and
``transport=`` (an httpx transport: a mock, an in-process server) carries the clients the
connection builds itself. What the connection builds, ``close()`` closes; what it was given
belongs to the caller.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager
from functools import cached_property
from pathlib import Path
from typing import Any, TypeVar

import httpx

from stsync import credentials
from stsync.errors import ConfigError
from stsync.http import RetryPolicy, load_ssl_context_ahead
from stsync.ratelimit import CoolDown, RateLimiter, max_burst
from stsync.referralfactory.client import ReferralFactoryClient
from stsync.servicetitan.client import ServiceTitanClient
from stsync.storage.config import Config, Endpoints, resolve_endpoints
from stsync.storage.ledger import Ledger
from stsync.storage.locks import RunLock
from stsync.storage.paths import ConnectionPaths
from stsync.storage.secrets import SecretStore

# How long a check a person is waiting for (validate --online, diagnose) retries one request.
CHECK_RETRY_BUDGET_SECONDS = 15

T = TypeVar("T")

_IDENTITY_KEYS = {
    "tenant_id": "servicetitan.tenant_id",
    "client_id": "servicetitan.client_id",
    "booking_provider": "servicetitan.booking_provider",
    "campaign_id": "referral_factory.campaign_id",
}


class Connection:
    def __init__(
        self,
        paths: ConnectionPaths,
        config: Config,
        *,
        endpoints: Endpoints | None = None,
        secrets: SecretStore | None = None,
        servicetitan: Any = None,
        referral_factory: Any = None,
        ledger: Ledger | None = None,
        transport: httpx.BaseTransport | None = None,
        on_cool_down: Callable[[CoolDown], None] | None = None,
    ) -> None:
        """Pieces given here are used as they are (a fake client is welcome: anything with the
        methods the use case calls); the others are built on first use.

        ``on_cool_down`` is the notification hook: called (in the thread that saw it) when the
        Referral Factory client this connection builds makes every process of the connection
        stop calling Referral Factory — an IP block, or the second 429 episode of an hour."""
        self.paths = paths
        self.config = config
        self.transport = transport
        self.on_cool_down = on_cool_down
        self._closers: list = []
        given = {
            "endpoints": endpoints,
            "secrets": secrets,
            "servicetitan": servicetitan,
            "referral_factory": referral_factory,
            "ledger": ledger,
        }
        # A value in the instance dict is what a cached_property returns without building it.
        self.__dict__.update({name: piece for name, piece in given.items() if piece is not None})

    @classmethod
    def open(
        cls, paths: ConnectionPaths, config: Config, *, retry_budget_seconds: float | None = None, **pieces: Any
    ) -> Connection:
        """``retry_budget_seconds`` caps the per-request retry budget: checks a person waits
        for (validate, diagnose) should say "unreachable" in seconds, not after cron's budget."""
        if retry_budget_seconds is not None and retry_budget_seconds < config.limits.retry_budget_seconds:
            limits = config.limits.model_copy(update={"retry_budget_seconds": retry_budget_seconds})
            config = config.model_copy(update={"limits": limits})
        load_ssl_context_ahead()  # ready by the time the first client is built
        return cls(paths, config, **pieces)

    # -- identity ---------------------------------------------------------------------
    def require(self, *names: str) -> None:
        """Fail with the key path when an identity value the command needs is missing."""
        values = {
            "tenant_id": self.config.servicetitan.tenant_id,
            "client_id": self.config.servicetitan.client_id,
            "booking_provider": self.config.servicetitan.booking_provider,
            "campaign_id": self.config.referral_factory.campaign_id,
        }
        for name in names:
            identity(name, values[name], config_file=self.paths.config)

    @property
    def booking_provider(self) -> int:
        return identity("booking_provider", self.config.servicetitan.booking_provider, config_file=self.paths.config)

    @property
    def campaign_id(self) -> int:
        return identity("campaign_id", self.config.referral_factory.campaign_id, config_file=self.paths.config)

    # -- pieces -----------------------------------------------------------------------
    @cached_property
    def endpoints(self) -> Endpoints:
        return resolve_endpoints(self.config)

    @cached_property
    def secrets(self) -> SecretStore:
        return SecretStore(self.paths)

    @property
    def has_ledger(self) -> bool:
        """A ledger is open or exists on disk (asking ``ledger`` would create one)."""
        return "ledger" in self.__dict__ or self.paths.ledger.exists()

    @cached_property
    def ledger(self) -> Ledger:
        self.paths.ensure_state()
        ledger = Ledger.open(self.paths.ledger)
        self._closers.append(ledger.close)
        return ledger

    @cached_property
    def servicetitan(self) -> ServiceTitanClient:
        self.require("tenant_id", "client_id")
        client = build_servicetitan_client(
            self.paths,
            self.config,
            self.endpoints,
            client_secret=self.secrets.require(credentials.ST_CLIENT_SECRET.name),
            app_key=self.secrets.require(credentials.ST_APP_KEY.name),
            transport=self.transport,
        )
        self._closers.append(client.close)
        return client

    @cached_property
    def referral_factory(self) -> ReferralFactoryClient:
        client = build_referral_factory_client(
            self.paths,
            self.config,
            self.endpoints,
            api_key=self.secrets.require(credentials.RF_API_KEY.name),
            transport=self.transport,
            on_cool_down=self.on_cool_down,
        )
        self._closers.append(client.close)
        return client

    def run_lock(self, job: str, *, command: str | None = None) -> AbstractContextManager:
        """One run of ``job`` per connection at a time (exit 7 when held)."""
        self.paths.ensure_state()
        return RunLock(self.paths, job, command=command or job)

    def close(self) -> None:
        """Close what this connection built, newest first (never what it was given)."""
        while self._closers:
            closer = self._closers.pop()
            try:
                closer()
            except Exception:  # closing must never mask the command's own outcome
                pass


def identity(name: str, value: T | None, *, config_file: Path | None = None) -> T:
    """An identity value (``tenant_id``, ``client_id``, ``booking_provider``, ``campaign_id``)
    a command needs, or ``ConfigError`` with its key path when the config lacks it."""
    if value is None or value == "":
        key = _IDENTITY_KEYS[name]
        raise ConfigError(
            f"{key} is not set" + (f" in {config_file}" if config_file is not None else ""),
            key_path=key,
            hint="run `stsync connect` to set up this connection",
        )
    return value


def build_servicetitan_client(
    paths: ConnectionPaths,
    config: Config,
    endpoints: Endpoints,
    *,
    client_secret: str,
    app_key: str,
    transport: httpx.BaseTransport | None = None,
) -> ServiceTitanClient:
    paths.ensure_state()
    paths.locks.mkdir(parents=True, exist_ok=True, mode=0o700)
    limits = config.limits
    return ServiceTitanClient(
        auth_url=endpoints.st_auth_url,
        api_url=endpoints.st_api_url,
        tenant_id=identity("tenant_id", config.servicetitan.tenant_id, config_file=paths.config),
        client_id=identity("client_id", config.servicetitan.client_id, config_file=paths.config),
        client_secret=client_secret,
        app_key=app_key,
        token_cache=paths.token_cache,
        limiter=RateLimiter(limits.servicetitan_per_second, 1.0, state_file=paths.rate_file("servicetitan")),
        retry=RetryPolicy(budget_seconds=limits.retry_budget_seconds),
        page_size=config.servicetitan.page_size,
        transport=transport,
    )


def build_referral_factory_client(
    paths: ConnectionPaths,
    config: Config,
    endpoints: Endpoints,
    *,
    api_key: str,
    transport: httpx.BaseTransport | None = None,
    on_cool_down: Callable[[CoolDown], None] | None = None,
) -> ReferralFactoryClient:
    """``on_cool_down`` is told when this client makes every process of the connection stop
    calling Referral Factory (the IP block, the second 429 episode of an hour): the hook for
    notifications."""
    paths.ensure_state()
    paths.locks.mkdir(parents=True, exist_ok=True, mode=0o700)
    limits = config.limits
    return ReferralFactoryClient(
        api_url=endpoints.rf_api_url,
        api_key=api_key,
        limiter=referral_factory_limiter(paths, config),
        retry=RetryPolicy(budget_seconds=limits.retry_budget_seconds),
        transport=transport,
        search_shape_file=paths.search_shape_file,
        on_cool_down=on_cool_down,
    )


def referral_factory_limiter(paths: ConnectionPaths, config: Config) -> RateLimiter:
    """Referral Factory's budget, shared by every process of the connection (its 429
    episodes and cool-down included)."""
    per_minute = config.limits.referral_factory_per_minute
    return RateLimiter(
        per_minute,
        60.0,
        state_file=paths.rate_file("referral_factory"),
        service="Referral Factory",
        # One request may follow another at once: a run's first search page right after the
        # campaign read (``stsync.ratelimit``: a minute's window keeps seconds of margin).
        burst=min(1, max_burst(per_minute)),
    )
