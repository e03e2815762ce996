"""ServiceTitan's export feeds as sync-customers reads them: pages fetched ahead, rows
deduplicated, contacts as the ledger stores them.

- ``Prefetch``: a feed's pages, each fetched (in a thread of its own) while the one before
  is being handled, so no one waits for the feed. At most one page ahead is held.
- ``latest_by_id``: ``includeRecentChanges`` may repeat a row; the last one wins.
- ``contact_row`` / ``contacts_differ`` / ``overlay``: contacts as ledger rows, whether a
  page changes what the ledger has, and the page laid over it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

from stsync.storage.ledger import ContactRow

if TYPE_CHECKING:
    from stsync.servicetitan.models import CustomerContact


class Prefetch:
    """A feed's pages, the next one fetched while the current one is handled. Yields
    ``(page, writes)``: ``writes`` is ``writes_so_far()`` read just before the page was
    fetched (the pipeline's count of its own return-field writes)."""

    def __init__(self, pages: Iterator[Any], writes_so_far: Callable[[], int]) -> None:
        self._pages = pages
        self._writes_so_far = writes_so_far
        self._fetcher = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sync-feed")
        self._upcoming: Future = self._fetcher.submit(self._fetch)

    def _fetch(self) -> tuple[Any, int]:
        writes = self._writes_so_far()
        return next(self._pages, None), writes

    def __iter__(self) -> Iterator[tuple[Any, int]]:
        while True:
            page, writes = self._upcoming.result()
            if page is None:
                return
            self._upcoming = self._fetcher.submit(self._fetch)
            yield page, writes

    def close(self) -> None:
        self._fetcher.shutdown(wait=True, cancel_futures=True)


def latest_by_id(rows: Iterable[Any]) -> list[Any]:
    """Rows deduplicated by id, the last one winning (``includeRecentChanges`` may repeat a
    row), in the order of each id's last appearance."""
    latest: dict[int, Any] = {}
    for row in rows:
        latest.pop(int(row.id), None)
        latest[int(row.id)] = row
    return list(latest.values())


def contact_row(contact: CustomerContact) -> ContactRow | None:
    """The ledger's row for a contact of the export feed; None for one that belongs to no customer."""
    if contact.customer_id is None:
        return None
    modified = contact.modified_on.isoformat() if contact.modified_on is not None else None
    return ContactRow(
        contact_id=int(contact.id),
        customer_id=int(contact.customer_id),
        type=contact.type,
        value=contact.value,
        active=contact.active,
        modified_on=modified,
    )


def contacts_differ(stored: Iterable[ContactRow], fresh: Iterable[ContactRow]) -> bool:
    """Does ``fresh`` add a contact or change one's type, value or activity?"""

    def state(row: ContactRow) -> tuple:
        return (row.type, row.value, bool(row.active))

    known = {row.contact_id: state(row) for row in stored}
    return any(known.get(row.contact_id) != state(row) for row in fresh)


def overlay(stored: Iterable[ContactRow], fresh: Iterable[ContactRow]) -> list[ContactRow]:
    """The stored contacts with ``fresh`` laid over them, by contact id."""
    merged = {row.contact_id: row for row in stored}
    merged.update({row.contact_id: row for row in fresh})
    return sorted(merged.values(), key=lambda row: row.contact_id)
