"""Export feeds: records in ``(modifiedOn, id)`` order and the continuation tokens into it.

A ``continueFrom`` token is the position of the last row returned; the next batch starts
after it. A record changed later gets a later ``modifiedOn`` and so a later position: it
comes again after everything before it.
"""

from __future__ import annotations

import base64
import binascii
import bisect


class ModifiedIndex:
    """Record ids sorted by ``(modifiedOn ms, id)``: the order of an export feed.

    A live change always gets the newest timestamp, so re-indexing a record is a removal
    plus an append at (or near) the end. Seeded and backdated records may tie on
    ``modifiedOn``: the id breaks the tie.
    """

    def __init__(self) -> None:
        self._keys: list[tuple[int, int]] = []
        self._ms: dict[int, int] = {}

    def put(self, record_id: int, ms: int) -> None:
        old = self._ms.get(record_id)
        if old is not None:
            i = bisect.bisect_left(self._keys, (old, record_id))
            if i < len(self._keys) and self._keys[i] == (old, record_id):
                del self._keys[i]
        self._ms[record_id] = ms
        bisect.insort(self._keys, (ms, record_id))

    def position(self, record_id: int) -> int | None:
        """The ms a record is indexed at (None if it is not indexed)."""
        return self._ms.get(record_id)

    def ids_since(self, ms: int) -> list[int]:
        """Ids of the records indexed at ``ms`` or later (``modifiedOnOrAfter``), in index order."""
        start = bisect.bisect_left(self._keys, (ms, -(2**63)))
        return [record_id for _, record_id in self._keys[start:]]

    def after(
        self, position: tuple[int, int] | None, *, limit: int, until_ms: int | None
    ) -> tuple[list[tuple[int, int]], bool]:
        """Up to ``limit`` keys after ``position`` (not later than ``until_ms``), and whether more follow."""
        start = 0 if position is None else bisect.bisect_right(self._keys, position)
        end = len(self._keys)
        if until_ms is not None:
            end = bisect.bisect_right(self._keys, (until_ms, 2**63))
        chosen = self._keys[start : min(end, start + limit)]
        return chosen, start + len(chosen) < end


def encode_position(ms: int, record_id: int) -> str:
    return base64.urlsafe_b64encode(f"v1:{ms}:{record_id}".encode()).decode().rstrip("=")


def decode_position(text: str) -> tuple[int, int] | None:
    try:
        raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)).decode()
    except (binascii.Error, UnicodeDecodeError, ValueError):
        return None
    parts = raw.split(":")
    if len(parts) != 3 or parts[0] != "v1":
        return None
    try:
        return int(parts[1]), int(parts[2])
    except ValueError:
        return None
