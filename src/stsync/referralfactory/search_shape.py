"""What Referral Factory's user search accepted, remembered per connection.

``POST /users/search`` is documented only by third parties (api/referral-factory.md §4,
§11): ``type`` has never been seen as a search field, and the search's largest page is
undocumented (``per_page`` ≤ 250 is documented for ``GET /users`` only). When the search
refuses one of them with a 422, the client retries without it once and records here what
worked, so that every later search — of this process and of every other process of the
connection — sends the accepted shape at once:

- ``refused_fields``: filter fields the search refused; they are left out of the request and
  checked on the client side instead (every returned row is re-checked anyway);
- ``max_per_page``: the largest page the search accepted after refusing a larger one
  (``None``: nothing learnt); ``0`` means "send no ``per_page``" (the server's default page),
  used when the refusal did not say its maximum.

The file is ``ConnectionPaths.search_shape_file`` (``<state>/referral-factory-search.json``):
small, replaced atomically, merged under a file lock so two processes learning at once both
keep what they learnt. An unreadable file reads as "nothing learnt" (the next refusal teaches
it again). Nothing here ever expires: the cost of a remembered refusal is a smaller page or a
client-side filter, never a wrong answer.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from filelock import FileLock

from stsync.storage.paths import PRIVATE_FILE, make_private_dir, write_private_text


@dataclass(frozen=True)
class SearchShape:
    refused_fields: frozenset[str] = field(default_factory=frozenset)
    max_per_page: int | None = None

    def page_size(self, wanted: int) -> int | None:
        """The ``per_page`` to send for ``wanted`` rows a page; None: send none."""
        if self.max_per_page is None:
            return wanted
        if self.max_per_page == 0:
            return None
        return min(wanted, self.max_per_page)

    def learnt(self) -> bool:
        return bool(self.refused_fields) or self.max_per_page is not None

    def merged(self, other: SearchShape) -> SearchShape:
        sizes = [size for size in (self.max_per_page, other.max_per_page) if size is not None]
        return SearchShape(self.refused_fields | other.refused_fields, min(sizes) if sizes else None)

    def to_json(self) -> dict:
        return {"refused_fields": sorted(self.refused_fields), "max_per_page": self.max_per_page}

    @classmethod
    def from_json(cls, data: object) -> SearchShape:
        if not isinstance(data, dict):
            return cls()
        fields = data.get("refused_fields")
        size = data.get("max_per_page")
        return cls(
            frozenset(f for f in fields if isinstance(f, str) and f) if isinstance(fields, list) else frozenset(),
            size if isinstance(size, int) and not isinstance(size, bool) and size >= 0 else None,
        )


class SearchShapeStore:
    """The remembered shape of one connection (``path``), or of this process only (None)."""

    def __init__(self, path: Path | None) -> None:
        self.path = Path(path) if path is not None else None
        self._memory = SearchShape()

    def load(self) -> SearchShape:
        if self.path is None:
            return self._memory
        return _read(self.path)

    def remember(self, learnt: SearchShape) -> SearchShape:
        """Merge ``learnt`` into what is stored; returns the merged shape."""
        if self.path is None:
            self._memory = self._memory.merged(learnt)
            return self._memory
        make_private_dir(self.path.parent)
        with FileLock(str(self.path) + ".lock", timeout=30, mode=PRIVATE_FILE):
            merged = _read(self.path).merged(learnt)
            temporary = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
            write_private_text(temporary, json.dumps(merged.to_json()))
            os.replace(temporary, self.path)
        return merged


def _read(path: Path) -> SearchShape:
    try:
        return SearchShape.from_json(json.loads(path.read_text(encoding="utf-8")))
    except (OSError, ValueError):
        return SearchShape()
