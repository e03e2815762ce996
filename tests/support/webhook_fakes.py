"""Fakes for the webhook engine's tests: a Referral Factory holding the campaign's users and
a recorder standing in for the booking push: the real ``push_target`` decides whether a kind
is sent, the recorder stands in for ``push_lead`` (the real one runs in tests/e2e/test_serve.py
against the sandbox). The connection is the real one: ``make_connection(referral_factory=
FakeReferralFactory())`` (tests/support/connection_fixtures.py), with its real ledger."""

from __future__ import annotations

import time

from connection_fixtures import CAMPAIGN
from fakes import FakeReferralFactoryUsers

from stsync.referralfactory.models import Campaign
from stsync.services.push import push_target

TOKEN = "s3cret-token-for-tests-0123456789"


class FakeReferralFactory(FakeReferralFactoryUsers):
    def add(self, user_id: int, code: str, email: str, **extra) -> dict:
        user = {"id": user_id, "campaign_id": CAMPAIGN, "code": code, "email": email, "first_name": "Jo",
                "type": "person_invited", "qualified_at": None, **extra}
        self.users[user_id] = user
        return user

    def get_campaign(self, campaign_id):
        return Campaign(id=campaign_id, code="spring", name="Spring Referrals", status="launched")


class PushRecorder:
    """Stands in for the worker's ``push_for``: a kind "Nothing to action" answers with the real
    ``push_target``'s notice; a lead pushed is recorded and answers "created"."""

    def __init__(self, conn) -> None:
        self.conn = conn
        self.calls: list[tuple[object, str, int | None]] = []
        self.fail: Exception | None = None
        self.delay = 0.0

    def __call__(self, kind):
        target = push_target(self.conn, kind)
        if target.notice is not None:
            return target.notice

        def push(lead, run_id):
            if self.delay:
                time.sleep(self.delay)
            if self.fail is not None:
                raise self.fail
            self.calls.append((lead, kind, run_id))
            return "created", "created", 5000 + len(self.calls)

        return push


def lead_payload(code: str = "ueONFmUp", email: str = "jane@example.com", **extra) -> dict:
    return {"id": 456, "first_name": "Jane", "email": email, "code": code, "type": "person_invited",
            "signed_up_at": "2025-06-01", "campaign_id": CAMPAIGN, **extra}
