"""Fault injection: what can go wrong between a client and the two APIs, on demand.

``Faults`` is the configuration (a frozen value, replaced whole with ``Sandbox.set_faults``);
``FaultInjector`` draws from one seeded random generator, so a run with the same seed and
the same request order fails the same way.

- ``error_rate``: the share of requests answered 503 **before** anything happens (the
  gateway refused it: safe to retry).
- ``commit_then_500_rate``: the share of writes (POST/PUT/PATCH/DELETE) that are
  **applied, then** answered 500 — the answer is lost, the change is not. A careful client
  looks the record up before writing again.
- ``latency``: extra seconds added to every answer; ``spike_rate`` of the requests wait
  ``spike_seconds`` more (Referral Factory is reported to spike over 25 s).
- ``burst_429``: the next N ServiceTitan API requests get 429 with ``Retry-After:
  retry_after`` (someone else spent the tenant's budget).
- ``rf_burst_429``: the next N Referral Factory requests get its 429 "Too Many Attempts."
  with ``Retry-After: retry_after`` (another app on the same key spent the minute's budget).
  Each counts towards the IP block like any other 429 (api/referral-factory.md §11 "IP
  block": counted per IP, whoever caused it).
- ``token_ttl``: tokens issued from now on stop working after this many seconds, although
  ``expires_in`` still announces the normal lifetime (early expiry → a 401 mid-run).
- ``token_uses``: tokens issued from now on stop working after this many API requests — the
  same early expiry, counted in requests instead of seconds, so where it lands does not
  depend on the machine's load (tests use it; ``token_ttl`` plays the clock-bound kind).
- ``maintenance_rate``: the share of ServiceTitan API requests answered 409 "The service is
  suspended for maintenance" before anything happens (api/servicetitan.md §11: retried by
  tap-service-titan like a 503).
- ``rf_admin_403_path``: Referral Factory requests whose path contains this text are
  answered 403 "This action is unauthorized." — the errors page's admin-only 403, whose text
  does not say "blocked" (the IP block's does). Set it mid-run to make an endpoint that
  worked earlier refuse.
- ``path_contains``: limit ``error_rate``, ``commit_then_500_rate``, ``maintenance_rate``,
  latency and spikes to requests whose path contains this text (e.g. ``"/bookings"`` or
  ``"/users"``); ``path_ends_with``, to those whose path ends with this text (e.g.
  ``"/api/v2/users"``: Referral Factory's create, not its search ``/users/search``).
"""

from __future__ import annotations

import random
import threading
from dataclasses import asdict, dataclass, fields

WRITE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})


@dataclass(frozen=True)
class Faults:
    error_rate: float = 0.0
    commit_then_500_rate: float = 0.0
    latency: float = 0.0
    spike_rate: float = 0.0
    spike_seconds: float = 2.0
    burst_429: int = 0
    rf_burst_429: int = 0
    retry_after: int = 1
    token_ttl: float | None = None
    token_uses: int | None = None
    maintenance_rate: float = 0.0
    rf_admin_403_path: str | None = None
    path_contains: str | None = None
    path_ends_with: str | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("error_rate", "commit_then_500_rate", "spike_rate", "maintenance_rate"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"Faults.{name} must be between 0 and 1, not {value!r}")
        for name in ("latency", "spike_seconds"):
            if getattr(self, name) < 0:
                raise ValueError(f"Faults.{name} must not be negative")
        if self.burst_429 < 0 or self.rf_burst_429 < 0 or self.retry_after < 0:
            raise ValueError("Faults.burst_429, Faults.rf_burst_429 and Faults.retry_after must not be negative")
        if self.token_ttl is not None and self.token_ttl < 0:
            raise ValueError("Faults.token_ttl must not be negative")
        if self.token_uses is not None and self.token_uses < 1:
            raise ValueError("Faults.token_uses must be at least 1")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> Faults:
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown fault setting(s): {', '.join(sorted(unknown))}")
        return cls(**data)


@dataclass(frozen=True)
class Decision:
    """What the injector decided for one request."""

    delay: float = 0.0
    fail_before: bool = False  # 503, nothing applied
    fail_after: bool = False  # applied, then 500
    throttle: bool = False  # 429 burst (ServiceTitan or Referral Factory, by the request's service)
    maintenance: bool = False  # ServiceTitan 409 "suspended for maintenance", nothing applied
    forbidden: bool = False  # Referral Factory admin-only 403
    retry_after: int = 1  # the Retry-After of a burst's 429


class FaultInjector:
    """Thread-safe draws against the current ``Faults``."""

    def __init__(self, faults: Faults | None = None, *, base_latency: float = 0.0) -> None:
        self._lock = threading.Lock()
        self.base_latency = base_latency
        self._faults = Faults()
        self._random = random.Random(0)
        self._burst_left = 0
        self._rf_burst_left = 0
        self.set(faults or Faults())

    @property
    def faults(self) -> Faults:
        return self._faults

    def set(self, faults: Faults) -> None:
        with self._lock:
            self._faults = faults
            self._random = random.Random(faults.seed)
            self._burst_left = faults.burst_429
            self._rf_burst_left = faults.rf_burst_429

    def decide(self, *, method: str, path: str, servicetitan_api: bool, referral_factory: bool = False) -> Decision:
        with self._lock:
            faults = self._faults
            throttle = False
            if servicetitan_api and self._burst_left > 0:
                self._burst_left -= 1
                throttle = True
            elif referral_factory and self._rf_burst_left > 0:
                self._rf_burst_left -= 1
                throttle = True
            admin_path = faults.rf_admin_403_path or ""
            forbidden = referral_factory and bool(admin_path) and admin_path in path
            targeted = (faults.path_contains is None or faults.path_contains in path) and (
                faults.path_ends_with is None or path.endswith(faults.path_ends_with)
            )
            if not targeted:
                return Decision(
                    delay=self.base_latency, throttle=throttle, forbidden=forbidden, retry_after=faults.retry_after
                )
            delay = self.base_latency + faults.latency
            if faults.spike_rate and self._random.random() < faults.spike_rate:
                delay += faults.spike_seconds
            fail_before = bool(faults.error_rate) and self._random.random() < faults.error_rate
            maintenance = (
                servicetitan_api
                and not fail_before
                and bool(faults.maintenance_rate)
                and self._random.random() < faults.maintenance_rate
            )
            fail_after = (
                not fail_before
                and not maintenance
                and method in WRITE_METHODS
                and bool(faults.commit_then_500_rate)
                and self._random.random() < faults.commit_then_500_rate
            )
            return Decision(
                delay=delay,
                fail_before=fail_before,
                fail_after=fail_after,
                throttle=throttle,
                maintenance=maintenance,
                forbidden=forbidden,
                retry_after=faults.retry_after,
            )

    def token_lifetime(self, normal: float) -> float:
        """How long a token issued now really lives."""
        ttl = self._faults.token_ttl
        return normal if ttl is None else min(normal, ttl)

    def token_uses(self) -> int | None:
        """How many API requests a token issued now may authenticate (None: no limit)."""
        return self._faults.token_uses
