"""ServiceTitan's error body: ApiErrorResponse (RFC 7807 style, all six fields required)."""

from __future__ import annotations

import uuid

from stsync.sandbox.server import HttpError, Response

PROBLEM_TYPES = {
    400: "https://tools.ietf.org/html/rfc7231#section-6.5.1",
    401: "https://tools.ietf.org/html/rfc7235#section-3.1",
    403: "https://tools.ietf.org/html/rfc7231#section-6.5.3",
    404: "https://tools.ietf.org/html/rfc7231#section-6.5.4",
    405: "https://tools.ietf.org/html/rfc7231#section-6.5.5",
    409: "https://tools.ietf.org/html/rfc7231#section-6.5.8",
    415: "https://tools.ietf.org/html/rfc7231#section-6.5.13",
    429: "https://tools.ietf.org/html/rfc6585#section-4",
    500: "https://tools.ietf.org/html/rfc7231#section-6.6.1",
    503: "https://tools.ietf.org/html/rfc7231#section-6.6.4",
}
VALIDATION_TITLE = "One or more validation errors occurred."


def problem(
    status: int, title: str, errors: dict[str, list[str]] | None = None, *, headers: dict | None = None
) -> Response:
    """An ApiErrorResponse (all six fields, as the spec requires)."""
    body = {
        "type": PROBLEM_TYPES.get(status, "about:blank"),
        "title": title,
        "status": status,
        "traceId": f"00-{uuid.uuid4().hex}-{uuid.uuid4().hex[:16]}-00",
        "errors": errors or {},
        "data": {},
    }
    return Response(status, body, dict(headers or {}))


def fail(
    status: int, title: str, errors: dict[str, list[str]] | None = None, *, headers: dict | None = None
) -> HttpError:
    return HttpError(problem(status, title, errors, headers=headers))
