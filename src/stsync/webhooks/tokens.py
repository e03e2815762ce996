"""The shared token that authenticates a webhook delivery (Referral Factory signs nothing).

Pure functions: the token is required, at least ``MIN_TOKEN_LENGTH`` characters with nothing
that a URL would re-encode, and compared in constant time (``hmac.compare_digest``). It may
come in the URL path (``/hooks/<token>``), in ``X-Stsync-Token``, or as
``Authorization: Bearer <token>``. Nothing here logs or returns the token.
"""

from __future__ import annotations

import hmac
from collections.abc import Callable

from stsync import envvars
from stsync.errors import UsageError

TOKEN_HEADER = "X-Stsync-Token"
MIN_TOKEN_LENGTH = 16
_GENERATE = "`python3 -c 'import secrets; print(secrets.token_urlsafe(32))'`"


def check_token(token: str | None) -> str:
    """The serve token, or ``UsageError`` when missing; a short token is refused too."""
    if token is None or not token.strip():
        raise UsageError(
            f"serve needs a shared token: --token, or the environment variable {envvars.WEBHOOK_TOKEN.name}",
            hint=f"generate one, e.g. {_GENERATE}, and "
            "put it in the webhook URL (/hooks/<token>) or the X-Stsync-Token header in Referral Factory",
        )
    token = token.strip()
    if len(token) < MIN_TOKEN_LENGTH or any(c in token for c in "/?#% "):
        raise UsageError(
            f"the serve token must be at least {MIN_TOKEN_LENGTH} characters and contain no '/', '?', '#', '%' or spaces",
            hint=f"generate one with {_GENERATE}",
        )
    return token


def token_matches(given: str | None, token: str) -> bool:
    if not given:
        return False
    return hmac.compare_digest(given.encode("utf-8", "surrogateescape"), token.encode("utf-8"))


def bearer_token(authorization: str | None) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` header, else None."""
    if isinstance(authorization, str) and authorization[:7].casefold() == "bearer ":
        return authorization[7:].strip()
    return None


def header_token_matches(header: Callable[[str], str | None], token: str) -> bool:
    """True when ``X-Stsync-Token`` or a bearer ``Authorization`` header carries ``token``."""
    return token_matches(header(TOKEN_HEADER), token) or token_matches(bearer_token(header("Authorization")), token)
