"""leads.LeadReader: users become leads with their campaign and referrer, each read once; a
referrer that is gone leaves its fields empty."""

from __future__ import annotations

from fakes import FakeReferralFactoryUsers  # tests/support

from stsync.leads import LeadReader
from stsync.referralfactory.models import Campaign, User

CAMPAIGN = 7


class FakeReferralFactory(FakeReferralFactoryUsers):
    def __init__(self) -> None:
        super().__init__()
        self.campaigns_read: list[int] = []

    def get_campaign(self, campaign_id: int) -> Campaign:
        self.campaigns_read.append(campaign_id)
        return Campaign(id=campaign_id, code=f"c{campaign_id}", name=f"Campaign {campaign_id}", status="launched")


def user(id: int, *, referrer_id: int | None = None, campaign_id: int = CAMPAIGN, type: str = "person_invited") -> User:
    return User.model_validate({
        "id": id, "campaign_id": campaign_id, "referrer_id": referrer_id, "first_name": f"User{id}",
        "email": f"user{id}@example.com", "code": f"rc{id}", "type": type,
    })


def test_each_campaign_and_referrer_is_read_once():
    rf = FakeReferralFactory()
    rf.users[1] = user(1, type="person_referring").model_dump()
    reader = LeadReader(rf, CAMPAIGN)

    leads = [reader.lead(user(10, referrer_id=1)), reader.lead(user(11, referrer_id=1)), reader.lead(user(12))]

    assert [lead.campaign_name for lead in leads] == ["Campaign 7"] * 3
    assert [lead.referrer_code for lead in leads] == ["rc1", "rc1", None]
    assert rf.campaigns_read == [CAMPAIGN]
    assert rf.lookups == [("id", 1)]


def test_a_referrer_that_is_gone_leaves_the_referrer_fields_empty():
    lead = LeadReader(FakeReferralFactory(), CAMPAIGN).lead(user(10, referrer_id=404))
    assert (lead.email, lead.referrer_first_name, lead.referrer_email) == ("user10@example.com", None, None)


def test_without_referrer_none_is_read_and_a_users_own_campaign_is_used():
    rf = FakeReferralFactory()
    rf.users[1] = user(1).model_dump()
    lead = LeadReader(rf, CAMPAIGN, with_referrer=False).lead(user(10, referrer_id=1, campaign_id=8))
    assert (lead.campaign_id, lead.campaign_name, lead.referrer_code) == (8, "Campaign 8", None)
    assert rf.lookups == [] and rf.campaigns_read == [8]
