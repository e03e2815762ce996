"""Virtual clocks for tests of retries and rate limits: time passes only when code sleeps."""

from __future__ import annotations

import threading


class FakeTime:
    """One shared virtual clock; sleeping advances it and is recorded."""

    def __init__(self, start: float = 0.0) -> None:
        self.now = start
        self.sleeps: list[float] = []

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


class ThreadClocks:
    """A virtual clock per thread, advanced only by that thread's sleeps and work.

    Whatever order the threads run in, a thread's clock right after ``acquire()`` is the
    slot the limiter granted it: the send times the server would see.
    """

    def __init__(self, start: float = 0.0) -> None:
        self._local = threading.local()
        self._start = start

    def clock(self) -> float:
        return getattr(self._local, "now", self._start)

    def sleep(self, seconds: float) -> None:
        self._local.now = self.clock() + seconds

    advance = sleep


class FakeReferralFactoryUsers:
    """The user look-ups of ReferralFactoryClient over an in-memory ``users`` dict (id → the
    API's user object); every look-up is recorded in ``lookups``. Tests add what they need."""

    def __init__(self) -> None:
        self.users: dict[int, dict] = {}
        self.lookups: list[tuple[str, object]] = []
        self.deletions_confirmed: list[tuple[str, int]] = []

    def get_user(self, identifier):
        from stsync.errors import NotFound
        from stsync.referralfactory.models import User

        self.lookups.append(("id", identifier))
        if identifier not in self.users:
            raise NotFound(
                "not found", url=f"https://rf.example.test/api/v2/users/{identifier}", method="GET", path=f"/users/{identifier}"
            )
        return User.model_validate(self.users[identifier])

    def confirm_deleted(self, not_found, *, campaign_id):
        """The API answers (its campaign reads fine): every JSON 404 here proves a deletion."""
        self.deletions_confirmed.append((not_found.url, campaign_id))

    def find_user_by_code(self, campaign_id, code):
        return self._find("code", code)

    def find_user_by_email(self, campaign_id, email):
        return self._find("email", email)

    def _find(self, key: str, value: str):
        from stsync.referralfactory.models import User

        self.lookups.append((key, value))
        return next((User.model_validate(u) for u in self.users.values() if u[key] == value), None)
