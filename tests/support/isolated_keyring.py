"""A keyring backend for tests: a JSON file named by ``STSYNC_TEST_KEYRING``.

Used in-process and in subprocesses (``PYTHON_KEYRING_BACKEND=isolated_keyring.FileKeyring``)
so that no test ever touches the machine's real keyring. Set ``STSYNC_TEST_KEYRING=locked``
to simulate an unusable store (headless cron, a locked collection).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from keyring.backend import KeyringBackend
from keyring.errors import KeyringLocked, PasswordDeleteError


class FileKeyring(KeyringBackend):
    priority = 1  # type: ignore[assignment]

    def _path(self) -> Path:
        where = os.environ.get("STSYNC_TEST_KEYRING")
        if not where:
            raise RuntimeError("STSYNC_TEST_KEYRING is not set: tests must isolate the keyring")
        if where == "locked":
            raise KeyringLocked("the test keyring is locked")
        return Path(where)

    def _load(self) -> dict:
        path = self._path()
        return json.loads(path.read_text()) if path.exists() else {}

    def get_password(self, service: str, username: str) -> str | None:
        return self._load().get(f"{service}\0{username}")

    def set_password(self, service: str, username: str, password: str) -> None:
        data = self._load()
        data[f"{service}\0{username}"] = password
        self._path().write_text(json.dumps(data))

    def delete_password(self, service: str, username: str) -> None:
        data = self._load()
        if data.pop(f"{service}\0{username}", None) is None:
            raise PasswordDeleteError("not found")
        self._path().write_text(json.dumps(data))
