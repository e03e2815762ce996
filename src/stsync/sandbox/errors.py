"""The one exception of the sandbox's admin operations."""

from __future__ import annotations


class AdminError(Exception):
    """An admin operation that cannot be done (unknown id, wrong state): ``status`` is the
    HTTP status ``/_sandbox/`` answers with (400, 404 or 409)."""

    def __init__(self, message: str, *, status: int = 400) -> None:
        super().__init__(message)
        self.status = status
