"""stsync's own API clients against the sandbox, over real sockets."""

from __future__ import annotations

import ssl
import time

import httpx
import pytest

from stsync.errors import AnswerLost, AuthError, DuplicateEmail, RateLimited, ServiceTitanApiError, TemporaryError
from stsync.http import RetryPolicy
from stsync.ratelimit import RateLimiter
from stsync.referralfactory.client import ReferralFactoryClient
from stsync.sandbox import Faults
from stsync.servicetitan.client import ServiceTitanClient

pytestmark = pytest.mark.e2e

BOOKING = {
    "source": "Referral Factory",
    "name": "Jane Doe",
    "summary": "Referral",
    "isFirstTimeClient": True,
    "externalId": "ueONFmUp",
    "contacts": [{"type": "Email", "value": "jane@example.com"}],
}


# httpx builds an SSL context per client (~50 ms) even for plain http: share one.
TLS = ssl.create_default_context()


def transport() -> httpx.HTTPTransport:
    return httpx.HTTPTransport(verify=TLS)


def fast_retry(budget: float = 10.0) -> RetryPolicy:
    return RetryPolicy(budget_seconds=budget, base_delay=0.01, max_delay=0.05)


def st_client(
    sb, tmp_path, *, page_size: int = 200, retry: RetryPolicy | None = None, **overrides
) -> ServiceTitanClient:
    creds = sb.credentials
    settings = {
        "auth_url": sb.st_auth_url,
        "api_url": sb.st_api_url,
        "tenant_id": creds.tenant_id,
        "client_id": creds.client_id,
        "client_secret": creds.client_secret,
        "app_key": creds.app_key,
        "token_cache": tmp_path / "token.json",
        "limiter": RateLimiter(1000, 1.0),
        "retry": retry or fast_retry(),
        "page_size": page_size,
        "transport": transport(),
        **overrides,
    }
    return ServiceTitanClient(**settings)


def rf_client(sb, *, retry: RetryPolicy | None = None, api_key: str | None = None) -> ReferralFactoryClient:
    return ReferralFactoryClient(
        api_url=sb.rf_api_url,
        api_key=api_key or sb.credentials.rf_api_key,
        limiter=RateLimiter(10_000, 60.0),
        retry=retry or fast_retry(),
        transport=transport(),
    )


@pytest.fixture
def st(sandbox, tmp_path):
    client = st_client(sandbox, tmp_path)
    yield client
    client.close()


@pytest.fixture
def rf(sandbox):
    client = rf_client(sandbox)
    yield client
    client.close()


# -- ServiceTitan ----------------------------------------------------------------------------


def test_one_token_serves_many_calls_and_later_clients(sandbox, tmp_path, st):
    st.verify_token()
    st.check_booking_provider(sandbox.credentials.booking_provider)
    st.list_custom_field_types()
    with st_client(sandbox, tmp_path) as later:  # another run: the token comes from the cache file
        later.get_customer(sandbox.customers()[0]["id"])
    assert sandbox.count_requests(service="auth") == 1


def test_an_early_expired_token_is_renewed_once(sandbox, st):
    sandbox.set_faults(Faults(token_ttl=0.2))
    st.verify_token()
    time.sleep(0.3)
    assert [t.name for t in st.list_custom_field_types()][:1] == ["Gate Code"]
    assert sandbox.count_requests(service="auth") == 2
    assert sandbox.count_requests(service="servicetitan") == 2  # the 401, then the resend


def test_bad_credentials_app_key_or_booking_provider_are_auth_errors(sandbox, tmp_path):
    with st_client(sandbox, tmp_path, client_secret="cs2.wrong", token_cache=None) as client, pytest.raises(AuthError):
        client.verify_token()
    with st_client(sandbox, tmp_path, app_key="ak1.wrong", token_cache=None) as client:
        with pytest.raises(AuthError, match="ST-App-Key"):
            client.list_custom_field_types()
    with st_client(sandbox, tmp_path, token_cache=None) as client:
        with pytest.raises(AuthError, match="Booking Provider Value is incorrect"):
            client.check_booking_provider(sandbox.credentials.booking_provider + 1)


def test_create_then_find_by_external_id(sandbox, st):
    bp = sandbox.credentials.booking_provider
    created = st.create_booking(bp, BOOKING)
    assert created.external_id == "ueONFmUp" and created.status == "New" and not created.converted
    assert [b.id for b in st.find_bookings_by_external_id(bp, "ueONFmUp")] == [created.id]
    assert st.find_bookings_by_external_id(bp, "other") == []
    assert st.get_booking(bp, created.id).id == created.id


def test_a_refused_booking_carries_servicetitans_words(sandbox, st):
    with pytest.raises(ServiceTitanApiError) as refused:
        st.create_booking(sandbox.credentials.booking_provider, {**BOOKING, "isFirstTimeClient": "Yes"})
    error = refused.value
    assert error.status == 400 and error.trace_id
    assert error.errors["$.isFirstTimeClient"] == [
        "The JSON value could not be converted to System.Boolean. Path: $.isFirstTimeClient."
    ]
    assert sandbox.bookings() == []


def test_lists_page_and_ids_go_in_batches_of_50(sandbox, tmp_path):
    bp = sandbox.credentials.booking_provider
    with st_client(sandbox, tmp_path, page_size=3) as client:
        created = [client.create_booking(bp, {**BOOKING, "externalId": f"E{i}"}).id for i in range(7)]
        sandbox.clear_request_log()
        assert [b.id for b in client.list_bookings(bp)] == created
        assert sandbox.count_requests(method="GET", path_contains="/bookings") == 3
        sandbox.clear_request_log()
        wanted = created + list(range(1, 60))  # 66 ids: two batches
        assert sorted(b.id for b in client.get_bookings(bp, wanted)) == created
        # The first 50 ids find all 7 (3 pages of 3), the other 16 find none (1 page).
        assert sandbox.count_requests(method="GET", path_contains="/bookings") == 4


def test_export_continuation_and_a_modified_customer_reappears(make_sandbox, tmp_path):
    sb = make_sandbox(export_batch_size=10)
    with st_client(sb, tmp_path) as client:
        pages = list(client.export_customers(None))
        assert len(pages) == 4 and pages[-1].has_more is False
        assert sorted(c.id for p in pages for c in p.data) == sorted(c["id"] for c in sb.customers())
        position = pages[-1].continue_from
        assert [c for p in client.export_customers(position) for c in p.data] == []
        changed = pages[0].data[0]
        sb.modify_customer(changed.id, name="New Name")
        again = [c for p in client.export_customers(position) for c in p.data]
        assert [(c.id, c.name) for c in again] == [(changed.id, "New Name")]
        contacts = [c for p in client.export_customer_contacts(None) for c in p.data]
        assert len(contacts) == len(sb.contacts()) and all(c.customer_id for c in contacts)


def test_custom_field_write_back_keeps_other_fields(sandbox, st):
    customer = next(c for c in sandbox.customers() if c["customFields"])
    current = st.get_customer(customer["id"])
    fields = [{"typeId": f.type_id, "value": f.value} for f in current.custom_fields]
    fields.append({"typeId": 103, "value": "ueONFmUp"})
    updated = st.update_customer(customer["id"], {"customFields": fields})
    assert {f.name: f.value for f in updated.custom_fields} == {
        **{f["name"]: f["value"] for f in customer["customFields"]},
        "Referral Code": "ueONFmUp",
    }
    assert [c.id for c in st.get_customers([customer["id"], 1])] == [customer["id"]]
    assert {c.customer_id for c in st.list_customer_contacts([customer["id"]])} <= {customer["id"]}


def test_429_with_retry_after_is_waited_out(sandbox, st):
    st.verify_token()
    sandbox.set_faults(Faults(burst_429=1, retry_after=1))
    started = time.monotonic()
    assert st.list_custom_field_types()
    assert time.monotonic() - started >= 1.0
    assert sandbox.count_requests(service="servicetitan") == 2


def test_the_servicetitan_rate_limit_is_survived(make_sandbox, tmp_path):
    sb = make_sandbox(st_per_second=4)
    with st_client(sb, tmp_path) as client:
        ids = [c["id"] for c in sb.customers()[:6]]
        assert [client.get_customer(i).id for i in ids] == ids
    assert any(r.status == 429 for r in sb.request_log)


def test_commit_then_500_on_create_is_answer_lost_and_the_booking_is_found(sandbox, st):
    bp = sandbox.credentials.booking_provider
    sandbox.set_faults(Faults(commit_then_500_rate=1.0, path_contains="/bookings"))
    with pytest.raises(AnswerLost):
        st.create_booking(bp, BOOKING)
    sandbox.set_faults(None)
    assert [b.external_id for b in st.find_bookings_by_external_id(bp, "ueONFmUp")] == ["ueONFmUp"]
    assert len(sandbox.bookings()) == 1


def test_503s_are_retried_within_the_budget_then_temporary(sandbox, tmp_path):
    sandbox.set_faults(Faults(error_rate=0.5, seed=3, path_contains="/customers/custom-fields"))
    with st_client(sandbox, tmp_path) as client:
        for _ in range(5):
            assert client.list_custom_field_types()
    assert any(r.status == 503 for r in sandbox.request_log)
    sandbox.set_faults(Faults(error_rate=1.0, path_contains="/customers/custom-fields"))
    with st_client(sandbox, tmp_path, retry=fast_retry(budget=0.5)) as client:
        with pytest.raises(TemporaryError):
            client.list_custom_field_types()


def test_jobs_by_booking_and_ids(sandbox, st):
    bp = sandbox.credentials.booking_provider
    booking = st.create_booking(bp, BOOKING)
    job = sandbox.convert_booking_to_job(booking.id, "Completed")
    assert st.get_booking(bp, booking.id).job_id == job["id"]
    found = list(st.list_jobs(booking_id=booking.id))
    assert [(j.id, j.job_status, j.booking_id) for j in found] == [(job["id"], "Completed", booking.id)]
    assert found[0].completed_on is not None
    assert [j.id for j in st.get_jobs([job["id"]])] == [job["id"]]
    assert st.get_job(job["id"]).job_number == job["jobNumber"]


# -- Referral Factory ------------------------------------------------------------------------


def test_campaign_and_user_round_trip(sandbox, rf):
    campaign = rf.get_campaign(sandbox.credentials.campaign_id)
    assert campaign.launched and "Last Name" in campaign.field_labels("person_invited")
    user = rf.create_user(
        {"campaign_id": campaign.id, "first_name": "Zoë", "email": "zoe@example.com", "notify": False}
    )
    assert user.is_referrer and user.code and user.url
    assert rf.get_user(user.code).id == user.id
    assert rf.update_user(user.id, {"first_name": "Zoé"}).first_name == "Zoé"
    assert [c.id for c in rf.list_campaigns()] == [
        sandbox.credentials.campaign_id,
        sandbox.credentials.paused_campaign_id,
    ]


def test_duplicate_email_is_duplicate_email_and_the_user_is_found(sandbox, rf):
    lead = sandbox.rf_users(campaign_id=sandbox.credentials.campaign_id, type="person_invited")[0]
    with pytest.raises(DuplicateEmail):
        rf.create_user(
            {"campaign_id": sandbox.credentials.campaign_id, "first_name": "X", "email": lead["email"].upper()}
        )
    found = rf.find_user_by_email(sandbox.credentials.campaign_id, lead["email"].upper())
    assert found is not None and found.id == lead["id"]
    assert rf.find_user_by_code(sandbox.credentials.campaign_id, lead["code"]).id == lead["id"]
    assert rf.find_user_by_email(sandbox.credentials.campaign_id, "nobody@example.com") is None


def test_search_pages_through_the_campaign_only(sandbox, rf):
    campaign = sandbox.credentials.campaign_id
    sandbox.clear_request_log()
    users = list(rf.search_users([("campaign_id", campaign)], per_page=2))
    expected = sandbox.rf_users(campaign_id=campaign)
    assert [u.id for u in users] == [u["id"] for u in expected] and len(expected) == 11
    assert sandbox.count_requests(path_contains="/users/search") == 6


def test_qualification(sandbox, rf):
    lead = sandbox.rf_users(campaign_id=sandbox.credentials.campaign_id, type="person_invited")[0]
    rf.set_qualification(True, id=lead["id"])
    assert sandbox.qualified(lead["id"])
    rf.set_qualification(False, code=lead["code"])
    assert not sandbox.qualified(lead["id"])


def test_two_429s_stop_referral_factory_calls(make_sandbox):
    sb = make_sandbox(rf_per_minute=2)
    with rf_client(sb, retry=fast_retry(budget=0.5)) as client:
        client.get_campaign(sb.credentials.campaign_id)
        client.get_campaign(sb.credentials.campaign_id)
        with pytest.raises(RateLimited):
            client.get_campaign(sb.credentials.campaign_id)
    assert sb.count_requests(service="referral_factory") <= 4


def test_a_rotated_key_is_an_auth_error(sandbox, rf):
    sandbox.rotate_rf_api_key()
    with pytest.raises(AuthError, match="revoked or replaced"):
        rf.get_campaign(sandbox.credentials.campaign_id)
