"""ServiceTitan access tokens: client-credentials grant, cached across threads, processes and runs.

The token endpoint is throttled (api/servicetitan.md §2) and a token lives 900 s, so a token
is fetched once and reused until 60 s before it expires:

- in memory, for the threads of one client;
- in ``token_cache`` (JSON, 0600, in the connection's state dir), for other processes and
  later runs. Entries are keyed by (auth URL, tenant, client ID); the secret is never stored.

Only one fetch is in flight at a time: a thread lock inside the process, a file lock beside
the cache file across processes; whoever gets the lock second re-reads the cache and finds
the token the first one fetched. A 401 from the API refreshes the token once and resends
the request once (``BearerTokenAuth``); ``refresh(rejected=...)`` skips the fetch when
another thread already replaced the rejected token. A 401 from the API gateway about the
"subscription key" (Azure API Management's wording for the ST-App-Key, api/servicetitan.md
§11) is not about the token: it is returned at once, without a token request.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Callable, Generator
from dataclasses import dataclass
from pathlib import Path

import httpx
from filelock import FileLock, Timeout

from stsync import envvars
from stsync.errors import AuthError, TemporaryError
from stsync.http import RetryPolicy, response_json, send_with_retries
from stsync.logs import get_logger, register_secret
from stsync.storage.paths import PRIVATE_FILE, make_private_dir

log = get_logger(__name__)

REFRESH_MARGIN_SECONDS = 60.0
DEFAULT_LIFETIME_SECONDS = 900.0
_CACHE_VERSION = 1


@dataclass(frozen=True)
class AccessToken:
    value: str
    expires_at: float  # wall-clock epoch seconds: the cache outlives the process

    def usable(self, now: float) -> bool:
        return now < self.expires_at - REFRESH_MARGIN_SECONDS

    def __repr__(self) -> str:  # never show the token itself
        return f"AccessToken(expires_at={self.expires_at:.0f})"


class TokenProvider:
    """Hands out a valid access token; fetches one only when none is usable."""

    def __init__(
        self,
        *,
        http: httpx.Client,
        auth_url: str,
        tenant_id: int,
        client_id: str,
        client_secret: str,
        cache_path: Path | None,
        retry: RetryPolicy,
        now: Callable[[], float] = time.time,
    ) -> None:
        register_secret(client_secret)
        self._http = http
        self._auth_url = auth_url.rstrip("/")
        self._token_url = f"{self._auth_url}/connect/token"
        self._tenant_id = tenant_id
        self._client_id = client_id
        self._client_secret = client_secret
        self._cache_path = Path(cache_path) if cache_path is not None else None
        self._retry = retry
        self._now = now
        self._lock = threading.Lock()
        self._token: AccessToken | None = None
        self._cache_key = f"{self._auth_url}|{tenant_id}|{client_id}"
        self._file_lock: FileLock | None = None
        if self._cache_path is not None:
            self._file_lock = FileLock(
                str(self._cache_path) + ".lock",
                thread_local=False,
                # Another process may be inside a fetch that retries for the whole budget.
                timeout=retry.budget_seconds + 60.0,
                preserve_lock_file=True,
                mode=PRIVATE_FILE,
            )

    # -- public ------------------------------------------------------------------------
    def get(self) -> str:
        """A token usable for at least 60 more seconds."""
        token = self._token
        if token is not None and token.usable(self._now()):
            return token.value
        with self._lock:
            return self._obtain(rejected=None, force=False).value

    def refresh(self, rejected: str | None = None) -> str:
        """A new token after ``rejected`` was refused (401), unless another thread already got one."""
        with self._lock:
            return self._obtain(rejected=rejected, force=rejected is None).value

    def fetch_new(self) -> AccessToken:
        """Always ask the token endpoint: proves the Client ID / Secret work right now."""
        with self._lock:
            return self._obtain(rejected=None, force=True)

    # -- internals ---------------------------------------------------------------------
    def _acceptable(self, token: AccessToken | None, rejected: str | None) -> AccessToken | None:
        """``token`` when it is usable and not the one just refused; else None."""
        if token is not None and token.value != rejected and token.usable(self._now()):
            return token
        return None

    def _obtain(self, *, rejected: str | None, force: bool) -> AccessToken:
        if not force and (kept := self._acceptable(self._token, rejected)):
            return kept
        if self._cache_path is None or self._file_lock is None:
            self._token = self._fetch()
            return self._token
        make_private_dir(self._cache_path.parent)
        try:
            with self._file_lock:
                if not force and (cached := self._acceptable(self._read_cache(self._cache_path), rejected)):
                    self._token = cached
                    return cached
                token = self._fetch()
                self._write_cache(self._cache_path, token)
        except Timeout:
            raise TemporaryError(
                "another stsync process has been fetching a ServiceTitan access token for too long",
                hint="retry later",
            ) from None
        self._token = token
        return token

    def _fetch(self) -> AccessToken:
        request = self._http.build_request(
            "POST",
            self._token_url,
            data={
                "grant_type": "client_credentials",
                "client_id": self._client_id,
                "client_secret": self._client_secret,
            },
            headers={"Accept": "application/json"},
        )
        # A token request changes nothing server-side: safe to resend after a lost answer.
        response = send_with_retries(
            self._http, request, service="ServiceTitan's token endpoint", policy=self._retry, idempotent=True
        )
        body = response_json(response)
        if response.status_code in (400, 401):
            code = body.get("error") if isinstance(body, dict) else None
            detail = f" ({code})" if isinstance(code, str) and code else ""
            raise AuthError(
                f"ServiceTitan rejected the Client ID / Client Secret for {self._auth_url}{detail} "
                f"(tenant {self._tenant_id}, client ID {self._client_id})",
                hint="check the Client ID and Client Secret (ServiceTitan → Settings → Integrations → "
                "API Application Access → your app; they are per tenant and per environment), "
                "then run `stsync connect`",
            )
        if not response.is_success:
            raise AuthError(
                f"ServiceTitan's token endpoint {self._token_url} answered HTTP {response.status_code}",
                hint=f"check servicetitan.environment (or {envvars.ST_AUTH_URL.config_key} / {envvars.ST_AUTH_URL.name}) "
                "in the config, then run `stsync connect`",
            )
        value = body.get("access_token") if isinstance(body, dict) else None
        if not isinstance(body, dict) or not isinstance(value, str) or not value:
            raise AuthError(
                f"ServiceTitan's token endpoint {self._token_url} answered without an access token",
                hint="check servicetitan.environment (or servicetitan.auth_url) points at ServiceTitan's "
                "auth server, then run `stsync connect`",
            )
        register_secret(value)
        lifetime = body.get("expires_in")
        if not isinstance(lifetime, (int, float)) or isinstance(lifetime, bool) or lifetime <= 0:
            lifetime = DEFAULT_LIFETIME_SECONDS
        log.info("obtained a ServiceTitan access token for tenant %s (valid %d s)", self._tenant_id, lifetime)
        return AccessToken(value=value, expires_at=self._now() + float(lifetime))

    @staticmethod
    def _read_all(path: Path) -> dict:
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return {}
        if not isinstance(data, dict) or data.get("version") != _CACHE_VERSION:
            return {}
        tokens = data.get("tokens")
        return tokens if isinstance(tokens, dict) else {}

    def _read_cache(self, path: Path) -> AccessToken | None:
        entry = self._read_all(path).get(self._cache_key)
        if not isinstance(entry, dict):
            return None
        value, expires_at = entry.get("access_token"), entry.get("expires_at")
        if not isinstance(value, str) or not isinstance(expires_at, (int, float)):
            return None
        register_secret(value)
        return AccessToken(value=value, expires_at=float(expires_at))

    def _write_cache(self, path: Path, token: AccessToken) -> None:
        now = self._now()
        # Keep other still-valid entries (another tenant or environment sharing the file).
        tokens = {
            key: entry
            for key, entry in self._read_all(path).items()
            if isinstance(entry, dict)
            and isinstance(entry.get("expires_at"), (int, float))
            and entry["expires_at"] > now
        }
        tokens[self._cache_key] = {"access_token": token.value, "expires_at": token.expires_at}
        temporary = path.with_name(path.name + f".{os.getpid()}.tmp")
        try:
            # Created 0600 from the start: the token must never be readable by others.
            fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                json.dump({"version": _CACHE_VERSION, "tokens": tokens}, handle)
            os.chmod(temporary, 0o600)
            os.replace(temporary, path)
        except OSError as exc:
            # The token still works from memory; only the cross-run reuse is lost.
            log.warning("could not write the token cache %s: %s", path, exc.strerror or exc)
            try:
                os.unlink(temporary)
            except OSError:
                pass


def cached_token_expiry(cache_path: Path, *, auth_url: str, tenant_id: int, client_id: str) -> float | None:
    """When the cached token of these credentials expires (epoch seconds), or None: no file,
    no entry. Reads no token value into memory it keeps, and sends nothing (``status``)."""
    try:
        data = json.loads(Path(cache_path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or data.get("version") != _CACHE_VERSION or not isinstance(data.get("tokens"), dict):
        return None
    entry = data["tokens"].get(f"{auth_url.rstrip('/')}|{tenant_id}|{client_id}")
    expires_at = entry.get("expires_at") if isinstance(entry, dict) else None
    return float(expires_at) if isinstance(expires_at, (int, float)) and not isinstance(expires_at, bool) else None


class BearerTokenAuth(httpx.Auth):
    """Attaches the token; on a 401 refreshes it once and resends the request once — unless
    the 401 speaks of the gateway's subscription key (the app key: a new token cannot help)."""

    requires_response_body = True  # the 401's words decide whether a new token can help

    def __init__(self, tokens: TokenProvider, *, before_resend: Callable[[], object] | None = None) -> None:
        self._tokens = tokens
        # The resend is one more API call: it must pass the rate limiter like any other.
        self._before_resend = before_resend

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        token = self._tokens.get()
        request.headers["Authorization"] = f"Bearer {token}"
        response = yield request
        if response.status_code != 401 or names_subscription_key(response):
            return
        log.info("ServiceTitan answered 401 to %s %s; renewing the access token once", request.method, request.url.path)
        token = self._tokens.refresh(rejected=token)
        if self._before_resend is not None:
            self._before_resend()
        request.headers["Authorization"] = f"Bearer {token}"
        yield request


def names_subscription_key(response: httpx.Response) -> bool:
    """The API gateway's own refusal of the app key ("Access denied due to invalid
    subscription key", "missing subscription key"), whatever its status."""
    try:
        return "subscription key" in response.text.casefold()
    except (UnicodeDecodeError, httpx.ResponseNotRead):
        return False
