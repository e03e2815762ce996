"""The context of one check run: what the checks read and what they learn on the way.

One ``CheckContext`` per run, made by the command that runs the checks and dropped with it:
nothing is cached between runs or keyed by connection. ``LiveAccess`` is its remote side —
the two clients, built on first use by the callables the owner gives (the owner closes them),
and what the live checks learn (the custom-field types, read once for the app-key and
return-field checks; the campaign, for ``connect``'s summary).

Secret values never enter the context: only where each secret comes from (``secret_sources``),
and, for the live side, a callable the other-environment probe asks for the client secret —
which it sends to a token server the configuration does not name only when ``consent`` (a
person at a terminal) says yes.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

from stsync import credentials
from stsync.checks.result import WARN, Status
from stsync.connection import Connection
from stsync.errors import ConfigError, StsyncError
from stsync.storage.secrets import SecretStore

if TYPE_CHECKING:
    from stsync.checks.activity import PushFailure
    from stsync.checks.result import Check
    from stsync.referralfactory.client import ReferralFactoryClient
    from stsync.referralfactory.models import Campaign
    from stsync.servicetitan.client import ServiceTitanClient
    from stsync.servicetitan.models import CustomFieldType
    from stsync.storage.config import Config, Endpoints
    from stsync.storage.ledger import Ledger
    from stsync.storage.paths import ConnectionPaths


# A yes/no question to the person running the command (None: nobody to ask — the answer is no).
Consent = Callable[[str], bool]


class LiveAccess:
    """The remote side of one check run."""

    def __init__(
        self,
        endpoints: Endpoints,
        *,
        servicetitan: Callable[[], ServiceTitanClient],
        referral_factory: Callable[[], ReferralFactoryClient],
        client_secret: Callable[[], str | None],
        consent: Consent | None = None,
    ) -> None:
        self.endpoints = endpoints
        self.consent = consent
        self._make_servicetitan = servicetitan
        self._make_referral_factory = referral_factory
        self._client_secret = client_secret
        self._custom_field_types: list[CustomFieldType] | None = None
        self.campaign: Campaign | None = None  # learned by the campaign check

    @classmethod
    def of(cls, conn: Connection, *, consent: Consent | None = None) -> LiveAccess:
        """The live side of an open connection (its clients, closed by its owner)."""

        def client_secret() -> str | None:
            try:
                return conn.secrets.get(credentials.ST_CLIENT_SECRET.name)
            except StsyncError:  # no usable store: nothing to ask the other environment with
                return None

        return cls(
            conn.endpoints,
            servicetitan=lambda: conn.servicetitan,
            referral_factory=lambda: conn.referral_factory,
            client_secret=client_secret,
            consent=consent,
        )

    @cached_property
    def servicetitan(self) -> ServiceTitanClient:
        return self._make_servicetitan()

    @cached_property
    def referral_factory(self) -> ReferralFactoryClient:
        return self._make_referral_factory()

    def client_secret(self) -> str | None:
        return self._client_secret()

    def agrees(self, question: str) -> bool:
        """A person's yes to ``question``; no when nobody can be asked."""
        return bool(self.consent(question)) if self.consent is not None else False

    def custom_field_types(self) -> list[CustomFieldType]:
        """The customer custom-field types, read once per run (app key and return fields use them)."""
        if self._custom_field_types is None:
            self._custom_field_types = self.servicetitan.list_custom_field_types()
        return self._custom_field_types


@dataclass
class CheckContext:
    """What one run of the checks reads, and what its checks learn for the ones after them
    and for the report."""

    paths: ConnectionPaths
    config_path: Path
    config: Config | None = None  # given, or loaded by the "Config file" check
    live: LiveAccess | None = None  # set by the owner before the live checks run
    # How "Nothing to action" counts: a warning for validate, a failure for diagnose.
    nothing_to_action: Status = WARN
    # Where each secret comes from (None = missing): given, learned by "Secret store", or
    # looked up on first need.
    secret_sources: dict[str, str | None] | None = None
    secrets_described: dict[str, Any] | None = None  # SecretStore.describe(): sources, never values
    ledger: Ledger | None = None  # opened by the "Ledger" check; the owner closes it
    recent_failures: list[PushFailure] = field(default_factory=list)
    # Each check run so far, by name (the runner files it): a later check may go by an earlier
    # one's answer (a failed run's cause, re-checked live).
    results: dict[str, Check] = field(default_factory=dict)

    def has_secret(self, name: str) -> bool:
        if self.secret_sources is None:
            self.secret_sources = {}
        if name not in self.secret_sources:
            try:
                self.secret_sources[name] = SecretStore(self.paths).source(name)
            except ConfigError:  # no usable store: the secret cannot be read
                self.secret_sources[name] = None
        return bool(self.secret_sources[name])

    def close(self) -> None:
        if self.ledger is not None:
            self.ledger.close()
            self.ledger = None
