"""Where stsync may send credentials: https anywhere, plain http only to this machine.

Every endpoint stsync talks to with a secret — ServiceTitan's token and API servers, Referral
Factory's API, the alert webhook and ping URLs (their path is the token) — must be https,
unless it is loopback (``127.0.0.0/8``, ``::1``, ``localhost``): the sandbox and the tests run
there, and nothing leaves the machine. Plain http to anywhere else would put the Client
Secret, the API keys and the bearer tokens on the network in clear text, so it is refused
(exit 3) with the fix, never merely warned about. ``serve``'s listen address is not an
endpoint and is not affected.

Leaf module: the standard library only.
"""

from __future__ import annotations

import ipaddress
from urllib.parse import urlsplit


def is_loopback_host(host: str | None) -> bool:
    """``localhost`` (and ``*.localhost``), ``127.0.0.0/8`` or ``::1``."""
    if not host:
        return False
    host = host.strip("[]").rstrip(".").casefold()
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def plain_http_elsewhere(url: str) -> bool:
    """True for an ``http://`` URL whose host is not loopback: credentials would cross the network in clear."""
    parts = urlsplit(url.strip())
    return parts.scheme.casefold() == "http" and not is_loopback_host(parts.hostname)


def https_fix(url: str) -> str:
    """The same URL with https, for the message's fix."""
    parts = urlsplit(url.strip())
    return parts._replace(scheme="https").geturl()
