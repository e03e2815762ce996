"""sync-customers' service — and one customer's handling on its own, without feeds or
threads (``customersync.customer``) — against strict HTTP mocks and the real ledger.

The two APIs are one small stateful fake behind pytest-httpx: ServiceTitan's export feeds
(ordered by modifiedOn, resumed with continueFrom tokens, a PATCH moving the customer to
the tail), its custom fields (replace semantics), and Referral Factory's users (a duplicate
e-mail in the campaign is a 422). Every request is recorded, so a test can say exactly what
a run sent — and what it did not.
"""

from __future__ import annotations

import json
import re
import threading
import time
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import unquote

import httpx
import pytest
from connection_fixtures import API, AUTH, CAMPAIGN, RF, TENANT, unit_config  # tests/support
from pytest_httpx import HTTPXMock

from stsync.customersync.customer import CustomerHandler, return_field_types
from stsync.customersync.pipeline import PASS_KEY, SyncOptions
from stsync.errors import ConfigError, LockHeld, UsageError
from stsync.services.sync import sync_customers
from stsync.servicetitan.models import Customer, CustomerContact

CRM = f"/crm/v2/tenant/{TENANT}"
LINK, CODE, GATE, TECH = 101, 102, 57, 58
NAMES = {LINK: "Referral Link", CODE: "Referral Code", GATE: "Gate Code", TECH: "Preferred Technician"}
EPOCH = datetime(2025, 1, 1, tzinfo=UTC)


class FakeApis:
    """ServiceTitan customers/contacts/custom fields and Referral Factory users."""

    def __init__(self, *, page_size: int = 3) -> None:
        self.page_size = page_size
        self.customers: dict[int, dict] = {}
        self.contacts: dict[int, dict] = {}
        self.users: list[dict] = []
        self.requests: list[tuple[str, str]] = []
        self.bodies: list[tuple[str, str, Any]] = []
        self.script: dict[tuple[str, str], list[str]] = {}  # (method, path) → answers to play first
        self.unexpected: list[str] = []
        self.campaign_status = "launched"
        # Referral Factory's search finds a user made by POST /users only this long after
        # (api/referral-factory.md §11 "read-after-write"), on this clock.
        self.search_lag = 0.0
        self.clock = time.time
        # ServiceTitan refuses these custom-field values in a PATCH, even sent back unchanged
        # (api/servicetitan.md §11), naming the entry as CustomFields[i].Value.
        self.refused_values: dict[int, str] = {}
        # type id → (dataType, dataTypeOptions) where not Text
        self.type_specs: dict[int, tuple[str, list[str]]] = {}
        self._ticks = 0
        self._lock = threading.RLock()

    # -- seeding ---------------------------------------------------------------------------
    def now(self) -> str:
        self._ticks += 1
        return (EPOCH + timedelta(seconds=self._ticks)).isoformat().replace("+00:00", "Z")

    def add_customer(
        self, id: int, name: str, *emails: str, active: bool = True, merged_to: int | None = None, gate: str | None = "1234"
    ) -> dict:
        custom = [{"typeId": GATE, "name": "Gate Code", "value": gate}] if gate is not None else []
        customer = {
            "id": id, "name": name, "type": "Residential", "active": active, "mergedToId": merged_to,
            "customFields": custom, "modifiedOn": self.now(), "address": None,
        }
        self.customers[id] = customer
        for email in emails:
            self.add_contact(id, email)
        return customer

    def add_contact(self, customer_id: int, value: str, *, type: str = "Email") -> dict:
        contact = {"id": 9000 + len(self.contacts), "customerId": customer_id, "type": type, "value": value,
                   "active": True, "modifiedOn": self.now()}
        self.contacts[contact["id"]] = contact
        return contact

    def rename(self, customer_id: int, name: str) -> None:
        self.customers[customer_id].update(name=name, modifiedOn=self.now())

    def add_user(self, email: str, first_name: str = "Existing", *, type: str = "person_referring") -> dict:
        user = {"id": 500 + len(self.users), "campaign_id": CAMPAIGN, "referrer_id": None, "first_name": first_name,
                "email": email, "code": f"code{len(self.users):03d}", "url": f"https://rf.test/r/code{len(self.users):03d}",
                "type": type, "source": "Api", "meta": []}
        self.users.append(user)
        return user

    # -- what happened ---------------------------------------------------------------------
    def count(self, method: str, pattern: str) -> int:
        return sum(1 for m, p in self.requests if m == method and re.search(pattern, p))

    def writes(self) -> list[tuple[str, str]]:
        return [(m, p) for m, p in self.requests if m in ("POST", "PUT", "PATCH") and not p.endswith("/users/search")]

    def custom(self, customer_id: int) -> dict[int, str | None]:
        return {f["typeId"]: f["value"] for f in self.customers[customer_id]["customFields"]}

    # -- the HTTP side ---------------------------------------------------------------------
    def __call__(self, request: httpx.Request) -> httpx.Response:
        with self._lock:
            method, path = request.method, unquote(request.url.path)
            body = json.loads(request.content) if request.content else None
            self.requests.append((method, path))
            self.bodies.append((method, path, body))
            scripted = self.script.get((method, path))
            if scripted:
                answer = scripted.pop(0)
                if answer == "commit_then_500":
                    self._route(method, path, request, body)
                    return httpx.Response(500, json={"message": "Server Error"})
                if answer == "503":
                    return httpx.Response(503, json={"message": "Service Unavailable"})
                if answer == "422":
                    return httpx.Response(422, json={"message": "Validation errors", "errors": {"first_name": ["The first name is invalid."]}})
            return self._route(method, path, request, body)

    def _route(self, method: str, path: str, request: httpx.Request, body: Any) -> httpx.Response:
        params = request.url.params
        if path == f"{CRM}/export/customers" and method == "GET":
            return self._feed(list(self.customers.values()), params.get("from"))
        if path == f"{CRM}/export/customers/contacts" and method == "GET":
            return self._feed(list(self.contacts.values()), params.get("from"))
        if path == f"{CRM}/customers/custom-fields":
            types = [
                {"id": type_id, "name": name, "dataType": self.type_specs.get(type_id, ("Text", []))[0],
                 "dataTypeOptions": self.type_specs.get(type_id, ("Text", []))[1]}
                for type_id, name in NAMES.items()
            ]
            return httpx.Response(200, json={"page": 1, "pageSize": 200, "hasMore": False, "data": types})
        if path == f"{CRM}/customers" and method == "GET":
            ids = [int(i) for i in params["ids"].split(",")]
            rows = [self.customers[i] for i in ids if i in self.customers]
            return httpx.Response(200, json={"page": 1, "pageSize": 200, "hasMore": False, "data": rows})
        match = re.fullmatch(rf"{CRM}/customers/(\d+)", path)
        if match:
            customer = self.customers[int(match.group(1))]
            if method == "PATCH":
                refused = {
                    f"CustomFields[{i}].Value": [f"'{f['value']}' is not a valid value for custom field {f['typeId']}."]
                    for i, f in enumerate(body["customFields"])
                    if self.refused_values.get(f["typeId"]) == f["value"]
                }
                if refused:
                    return httpx.Response(400, json={
                        "type": "https://tools.ietf.org/html/rfc7231#section-6.5.1",
                        "title": "One or more validation errors occurred.", "status": 400, "traceId": "00-cf-00",
                        "errors": refused, "data": {},
                    })
                # Replace semantics: what the PATCH leaves out is gone.
                customer["customFields"] = [{"typeId": f["typeId"], "name": NAMES[f["typeId"]], "value": f["value"]}
                                            for f in body["customFields"]]
                customer["modifiedOn"] = self.now()
            return httpx.Response(200, json=customer)
        if re.fullmatch(r"/api/v2/campaigns/\d+", path) and method == "GET":  # a run reads it once: launched
            return httpx.Response(200, json={"data": {"id": CAMPAIGN, "name": "Spring Referrals", "status": self.campaign_status}})
        if path == "/api/v2/users" and method == "POST":
            if any(u["email"].casefold() == body["email"].casefold() for u in self.users):
                return httpx.Response(422, json={"message": "Validation errors", "errors": {"email": ["The email has already been taken."]}})
            user = self.add_user(body["email"], body["first_name"])
            user["meta"] = body.get("meta", [])
            user["_listed_from"] = self.clock() + self.search_lag
            return httpx.Response(201, json={"data": user})
        if path == "/api/v2/users/search" and method == "POST":
            wanted = {c["field"]: c["value"] for c in body["filters"]["value"]}
            rows = [u for u in self.users if str(u["campaign_id"]) == wanted["campaign_id"]
                    and u["email"].casefold() == wanted["email"].casefold()
                    and self.clock() >= u.get("_listed_from", 0.0)]
            return httpx.Response(200, json={"data": rows})
        match = re.fullmatch(r"/api/v2/users/(\d+)", path)
        if match:
            user = next((u for u in self.users if u["id"] == int(match.group(1))), None)
            if user is None:
                return httpx.Response(404, json={"message": "Not found"})
            if method == "PUT":
                user.update({k: v for k, v in body.items() if k in ("first_name", "email", "meta")})
            return httpx.Response(200, json={"data": user})
        self.unexpected.append(f"{method} {path}")
        return httpx.Response(404, json={"message": f"no route {method} {path}"})

    def _feed(self, rows: list[dict], start: str | None) -> httpx.Response:
        """Rows after the token (modifiedOn, id), in that order; the token is the last row's."""
        ordered = sorted(rows, key=lambda r: (r["modifiedOn"], r["id"]))
        if start:
            stamp, _, last_id = start.partition("|")
            ordered = [r for r in ordered if (r["modifiedOn"], r["id"]) > (stamp, int(last_id))]
        batch = ordered[: self.page_size]
        token = f"{batch[-1]['modifiedOn']}|{batch[-1]['id']}" if batch else start
        return httpx.Response(200, json={"hasMore": len(ordered) > len(batch), "continueFrom": token, "data": batch})


@pytest.fixture
def apis(httpx_mock: HTTPXMock) -> FakeApis:
    fake = FakeApis()
    httpx_mock.add_response(method="POST", url=f"{AUTH}/connect/token", is_optional=True,
                            json={"access_token": "tok", "expires_in": 900, "token_type": "Bearer"})
    httpx_mock.add_callback(fake, url=re.compile(rf"^({re.escape(API)}|{re.escape(RF)})/.*"), is_reusable=True, is_optional=True)
    yield fake
    assert fake.unexpected == []


@pytest.fixture
def conn(make_connection, apis):
    config = unit_config()
    config.limits.workers = 4
    config.limits.referral_factory_per_minute = 600_000  # no waiting in unit tests
    config.limits.servicetitan_per_second = 10_000
    return make_connection(config)


def seed_mixed(apis: FakeApis) -> None:
    apis.add_customer(1, "Jane Doe", "jane@example.com")
    apis.add_customer(2, "No Mail")
    apis.add_customer(3, "Bad Mail", "not-an-email")
    apis.add_customer(4, "Gone Away", "gone@example.com", active=False)
    apis.add_customer(5, "Merged Twin", "twin@example.com", merged_to=1)
    apis.add_customer(6, "Sam Known", "sam@example.com")  # already in the campaign
    apis.add_customer(7, "John Smith", "shared@example.com")
    apis.add_customer(8, "Mary Smith", "shared@example.com")  # same e-mail as customer 7
    apis.add_user("sam@example.com", "Sam")


def test_a_one_time_sync_creates_adopts_skips_and_writes_return_fields(conn, apis):
    seed_mixed(apis)

    report = sync_customers(conn, SyncOptions(mode="once"))

    # The customers written come back at the feed's tail: read, but not counted twice.
    assert (report.created, report.adopted, report.updated, report.unchanged, report.failed) == (2, 1, 0, 0, 0)
    assert report.skipped_by_reason == {"no_email": 1, "invalid_email": 1, "inactive": 1, "merged": 1}
    assert report.shared == 1 and report.to_dict()["shared_customers"] == [
        {"customer_id": 8, "email": "shared@example.com", "shares_referrer_of": 7}
    ]
    assert report.examined == 8 and report.complete
    posts = [b for m, p, b in apis.bodies if m == "POST" and p == "/api/v2/users"]
    # Workers create concurrently: the order of the POSTs is not part of the contract.
    jane = next(b for b in posts if b["email"] == "jane@example.com")
    assert jane == {"campaign_id": CAMPAIGN, "first_name": "Jane", "email": "jane@example.com", "notify": False}
    assert sorted(b["email"] for b in posts) == ["jane@example.com", "sam@example.com", "shared@example.com"]  # sam: 422
    # One Referral Factory user per e-mail; customers 1, 6, 7 point at theirs.
    assert sorted(u["email"] for u in apis.users) == ["jane@example.com", "sam@example.com", "shared@example.com"]
    by_email = {u["email"]: u for u in apis.users}
    for customer_id, email in ((1, "jane@example.com"), (6, "sam@example.com"), (7, "shared@example.com")):
        user = by_email[email]
        assert apis.custom(customer_id) == {GATE: "1234", LINK: user["url"], CODE: user["code"]}
        assert conn.ledger.get_return_fields(customer_id) == {"Referral Code": user["code"], "Referral Link": user["url"]}
        record = conn.ledger.get_referrer(customer_id)
        assert (record.rf_user_id, record.code, record.url) == (user["id"], user["code"], user["url"])
    assert conn.ledger.get_referrer(6).state == "adopted"
    assert report.return_fields_written == 8
    # Customer 8 shares customer 7's e-mail: no second user, the same link and code.
    shared_user = by_email["shared@example.com"]
    assert apis.custom(8) == {GATE: "1234", LINK: shared_user["url"], CODE: shared_user["code"]}
    mary = conn.ledger.get_referrer(8)
    assert (mary.state, mary.shared_with, mary.rf_user_id, mary.code) == ("shared", 7, None, shared_user["code"])
    assert {conn.ledger.get_referrer(i).skip_reason for i in (2, 3, 4, 5)} == {"no_email", "invalid_email", "inactive", "merged"}
    assert conn.ledger.get_position("customers") is not None and conn.ledger.get_position("contacts") is not None
    assert conn.ledger.get(PASS_KEY) == ""
    run = conn.ledger.last_run("sync")
    assert run.outcome == "ok" and run.counts["created"] == 2


def test_a_second_run_sends_nothing_and_sees_its_own_writes_as_unchanged(conn, apis):
    seed_mixed(apis)
    sync_customers(conn, SyncOptions(mode="once"))
    apis.requests.clear()

    again = sync_customers(conn, SyncOptions(mode="ongoing"))

    # The return-field writes moved those customers to the feed's tail; the first run read
    # them there (unchanged), so this run finds nothing new at all.
    assert apis.writes() == []
    assert again.examined == 0 and again.complete
    assert sorted(apis.requests) == sorted([
        ("GET", f"/api/v2/campaigns/{CAMPAIGN}"),  # still launched?
        ("GET", f"{CRM}/customers/custom-fields"), ("GET", f"{CRM}/export/customers/contacts"),
        ("GET", f"{CRM}/export/customers"),
    ])

    once_more = sync_customers(conn, SyncOptions(mode="once"))  # from the beginning: everything read, nothing written
    assert apis.writes() == []
    assert (once_more.unchanged, once_more.shared, once_more.skipped, once_more.created) == (3, 1, 4, 0)


def test_an_ongoing_run_creates_new_customers_and_updates_renamed_ones_in_place(conn, apis):
    apis.add_customer(1, "Jane Doe", "jane@example.com")
    apis.add_customer(2, "Bob Stone", "bob@example.com")
    sync_customers(conn, SyncOptions(mode="ongoing"))
    jane_user = next(u for u in apis.users if u["email"] == "jane@example.com")
    apis.requests.clear()
    apis.bodies.clear()

    apis.rename(1, "Janet Doe")
    apis.add_customer(3, "Carl New", "carl@example.com")
    bob_contact = next(c for c in apis.contacts.values() if c["customerId"] == 2)
    bob_contact.update(value="bob.stone@example.com", modifiedOn=apis.now())  # a changed e-mail

    report = sync_customers(conn, SyncOptions(mode="ongoing"))

    assert (report.created, report.updated, report.adopted, report.failed) == (1, 2, 0, 0)
    puts = {p: b for m, p, b in apis.bodies if m == "PUT"}
    assert puts == {
        f"/api/v2/users/{jane_user['id']}": {"first_name": "Janet", "email": "jane@example.com"},
        f"/api/v2/users/{conn.ledger.get_referrer(2).rf_user_id}": {"first_name": "Bob", "email": "bob.stone@example.com"},
    }
    assert [b["email"] for m, p, b in apis.bodies if m == "POST" and p == "/api/v2/users"] == ["carl@example.com"]
    assert len(apis.users) == 3  # never a second user for a changed customer
    assert conn.ledger.get_referrer(2).email == "bob.stone@example.com"
    assert conn.ledger.get_referrer(1).state == "updated"


def test_a_customer_whose_email_arrives_later_is_enrolled_though_the_customer_did_not_change(conn, apis):
    apis.add_customer(1, "Late Mail")
    first = sync_customers(conn, SyncOptions(mode="ongoing"))
    assert first.skipped_by_reason == {"no_email": 1}

    apis.add_contact(1, "late@example.com")  # the contacts feed moves; the customer feed does not
    second = sync_customers(conn, SyncOptions(mode="ongoing"))

    assert second.created == 1
    assert [u["email"] for u in apis.users] == ["late@example.com"]
    assert apis.custom(1)[LINK] == apis.users[0]["url"]


def test_after_a_crash_between_intent_and_record_the_user_is_found_not_created_again(conn, apis):
    apis.add_customer(1, "Jane Doe", "jane@example.com")
    user = apis.add_user("jane@example.com", "Jane")  # created by the killed run
    conn.ledger.upsert_referrer(1, state="pending", email="jane@example.com")

    report = sync_customers(conn, SyncOptions(mode="once"))

    assert apis.count("POST", r"^/api/v2/users$") == 0
    assert apis.count("POST", r"/users/search") == 1
    assert report.created == 1 and len(apis.users) == 1  # the killed run's create, found
    assert conn.ledger.get_referrer(1).rf_user_id == user["id"]
    assert apis.custom(1)[CODE] == user["code"]


def test_a_lost_create_answer_is_looked_up_and_recorded_as_created(conn, apis):
    apis.add_customer(1, "Jane Doe", "jane@example.com")
    apis.script[("POST", "/api/v2/users")] = ["commit_then_500"]

    report = sync_customers(conn, SyncOptions(mode="once"))

    assert report.created == 1 and report.failed == 0
    assert len(apis.users) == 1 and apis.count("POST", r"^/api/v2/users$") == 1
    assert conn.ledger.get_referrer(1).state == "created"


def test_a_user_the_ledger_knows_from_a_push_is_adopted_by_id(conn, apis):
    apis.add_customer(1, "Jane Doe", "jane@example.com")
    user = apis.add_user("jane@example.com", "Jane", type="person_invited")
    attempt = conn.ledger.record_push_intent("code-j", kind="lead", email="jane@example.com", name="Jane", rf_user_id=user["id"])
    conn.ledger.record_push_result(attempt, outcome="created", booking_id=77)

    report = sync_customers(conn, SyncOptions(mode="once"))

    assert report.adopted == 1
    assert apis.count("GET", rf"/api/v2/users/{user['id']}$") == 1
    assert apis.count("POST", r"^/api/v2/users$") == 0


def test_a_rejected_customer_is_counted_recorded_and_retried_by_the_next_run(conn, apis):
    apis.add_customer(1, "Jane Doe", "jane@example.com")
    apis.add_customer(2, "Bob Stone", "bob@example.com")
    apis.script[("POST", "/api/v2/users")] = ["422"]  # the first create is refused

    first = sync_customers(conn, SyncOptions(mode="ongoing"))

    assert (first.created, first.failed) == (1, 1)
    failed_id = first.failures[0]["customer_id"]
    record = conn.ledger.get_referrer(failed_id)
    assert record.state == "failed" and record.error["status"] == 422 and record.error["stage"] == "referrer"
    assert "first name is invalid" in json.dumps(record.error)
    assert conn.ledger.last_run("sync").outcome == "partial"

    second = sync_customers(conn, SyncOptions(mode="ongoing"))  # the customer feed has nothing new: the retry does it

    assert (second.created, second.adopted, second.failed) == (1, 0, 0)
    assert conn.ledger.get_referrer(failed_id).state == "created" and conn.ledger.get_referrer(failed_id).error is None
    assert len(apis.users) == 2


def test_return_fields_servicetitan_does_not_keep_fail_the_customer_without_a_write_loop(conn, apis, monkeypatch):
    apis.add_customer(1, "Jane Doe", "jane@example.com")
    original = apis._route

    def forgetful(method, path, request, body):
        response = original(method, path, request, body)
        if method == "PATCH":
            apis.customers[1]["customFields"] = [{"typeId": GATE, "name": "Gate Code", "value": "1234"}]
            return httpx.Response(200, json=apis.customers[1])
        return response

    monkeypatch.setattr(apis, "_route", forgetful)

    report = sync_customers(conn, SyncOptions(mode="ongoing"))

    assert (report.created, report.failed) == (0, 1)
    assert apis.count("PATCH", r"/customers/1$") == 1  # the write moved it to the feed's tail: not written again
    record = conn.ledger.get_referrer(1)
    assert record.state == "created" and record.error["stage"] == "return_fields"
    again = sync_customers(conn, SyncOptions(mode="ongoing"))
    assert apis.count("PATCH", r"/customers/1$") == 2 and again.failed == 1  # once per run, in the retries


def test_a_field_set_after_the_feed_was_read_survives_the_write(conn, apis, monkeypatch):
    apis.add_customer(1, "Jane Doe", "jane@example.com")
    original = apis._route
    done = []

    def dispatcher_sets_a_technician(method, path, request, body):
        response = original(method, path, request, body)
        if path.endswith("/export/customers") and not done:  # once, just after the feed was read
            done.append(True)
            apis.customers[1]["customFields"].append({"typeId": TECH, "name": NAMES[TECH], "value": "Sam"})
        return response

    monkeypatch.setattr(apis, "_route", dispatcher_sets_a_technician)

    sync_customers(conn, SyncOptions(mode="once"))

    assert apis.custom(1) == {GATE: "1234", TECH: "Sam", LINK: apis.users[0]["url"], CODE: apis.users[0]["code"]}


def test_dry_run_sends_nothing_and_records_nothing(conn, apis):
    seed_mixed(apis)

    report = sync_customers(conn, SyncOptions(mode="once", dry_run=True))

    assert apis.writes() == [] and not any(p.startswith("/api/v2") for _, p in apis.requests)
    assert (report.created, report.shared, report.skipped, report.return_fields_written) == (3, 1, 4, 8)
    # Without asking Referral Factory, sam@ (already in the campaign) counts as a creation.
    assert report.sample[0] == {
        "action": "create", "customer_id": 1, "customer_name": "Jane Doe", "email": "jane@example.com",
        "referrer": {"campaign_id": CAMPAIGN, "first_name": "Jane", "email": "jane@example.com", "notify": False},
        "return_fields": {"Referral Link": "<referral_link of the new referrer>",
                          "Referral Code": "<referral_code of the new referrer>"},
    }
    assert conn.ledger.referrer_counts() == {}
    assert conn.ledger.get_position("customers") is None and conn.ledger.get_position("contacts") is None
    assert conn.ledger.get(PASS_KEY) is None and conn.ledger.recent_runs(job="sync") == []


def test_dry_run_after_a_sync_shows_updates_and_return_field_writes(conn, apis):
    apis.add_customer(1, "Jane Doe", "jane@example.com")
    apis.add_customer(2, "Bob Stone", "bob@example.com")
    sync_customers(conn, SyncOptions(mode="once"))
    apis.rename(1, "Janet Doe")
    apis.customers[2]["customFields"] = []  # someone cleared Bob's fields
    apis.customers[2]["modifiedOn"] = apis.now()
    apis.requests.clear()

    report = sync_customers(conn, SyncOptions(mode="ongoing", dry_run=True))

    assert apis.writes() == []
    assert (report.updated, report.unchanged, report.return_fields_written) == (1, 1, 2)
    actions = {item["customer_id"]: item for item in report.sample}
    assert actions[1]["action"] == "update" and actions[1]["referrer"] == {"first_name": "Janet", "email": "jane@example.com"}
    assert actions[2]["action"] == "write_return_fields" and set(actions[2]["return_fields"]) == {"Referral Link", "Referral Code"}


def test_limit_stops_mid_page_and_the_next_run_carries_on(conn, apis):
    for n in range(1, 8):
        apis.add_customer(n, f"Person{n} Test", f"p{n}@example.com")

    first = sync_customers(conn, SyncOptions(mode="once", limit=4))  # pages of 3: one full page, then 1 of the next

    assert (first.created, first.complete) == (4, False)
    assert conn.ledger.get(PASS_KEY)  # the pass is unfinished
    second = sync_customers(conn, SyncOptions(mode="once"))  # resumes the pass instead of starting over

    assert (second.created, second.complete) == (3, True)
    # Customers 1-4, moved to the feed's tail by the first run's return-field writes.
    assert second.unchanged == 4
    assert sorted(u["email"] for u in apis.users) == sorted(f"p{n}@example.com" for n in range(1, 8))
    assert apis.count("POST", r"^/api/v2/users$") == 7


def test_full_reconciles_everything_from_the_beginning(conn, apis):
    apis.add_customer(1, "Jane Doe", "jane@example.com")
    sync_customers(conn, SyncOptions(mode="ongoing"))
    apis.customers[1]["customFields"] = [{"typeId": GATE, "name": "Gate Code", "value": "1234"}]  # cleared, not bumped
    apis.requests.clear()

    quiet = sync_customers(conn, SyncOptions(mode="ongoing"))
    assert quiet.examined == 0 and apis.writes() == []

    full = sync_customers(conn, SyncOptions(mode="ongoing", full=True))
    assert full.return_fields_written == 2 and apis.count("PATCH", r"/customers/1$") == 1
    assert apis.custom(1)[GATE] == "1234"


def test_an_unknown_return_field_fails_before_anything_is_created(conn, apis):
    apis.add_customer(1, "Jane Doe", "jane@example.com")
    conn.config.customer_sync.return_fields = {"Referal Link": "referral_link"}

    with pytest.raises(ConfigError) as caught:
        sync_customers(conn, SyncOptions(mode="once"))

    assert "Referal Link" in caught.value.message and "Referral Link" in caught.value.message
    assert apis.users == [] and apis.writes() == []
    assert conn.ledger.last_run("sync").outcome == "failed"


def test_one_sync_per_connection_at_a_time(conn, apis):
    from stsync.storage.locks import RunLock

    with RunLock(conn.paths, "sync", command="sync-customers --ongoing"):
        with pytest.raises(LockHeld) as caught:
            sync_customers(conn, SyncOptions(mode="once"))
    assert caught.value.exit_code == 7
    assert apis.requests == []


def test_mode_comes_from_the_config_and_bad_arguments_are_usage_errors(conn, apis):
    apis.add_customer(1, "Jane Doe", "jane@example.com")
    conn.config.customer_sync.mode = "ongoing"
    assert sync_customers(conn).mode == "ongoing"
    with pytest.raises(UsageError):
        sync_customers(conn, SyncOptions(mode="sometimes"))  # type: ignore[arg-type]
    with pytest.raises(UsageError):
        sync_customers(conn, SyncOptions(limit=0))


def test_a_customer_changed_while_its_page_is_in_flight_still_gets_one_user(conn, apis, monkeypatch):
    from stsync.storage.config import field_spec

    # The e-mail comes from the customer row itself, so a change reaches the next page.
    conn.config.customer_sync.fields["email"] = field_spec("from", "custom.Gate Code")
    apis.page_size = 2
    apis.add_customer(1, "Xena Slow", gate="x1@example.com")
    apis.add_customer(2, "Yuri Fast", gate="y@example.com")
    apis.add_customer(3, "Zoe Fast", gate="z@example.com")
    original = apis._route
    changed = []

    def feed_then_change(method, path, request, body):
        if method == "POST" and path == "/api/v2/users" and body["email"] == "x1@example.com":
            time.sleep(0.4)  # the first create of customer 1 is slow: the next page is planned meanwhile
        response = original(method, path, request, body)
        if path.endswith("/export/customers") and not changed:
            changed.append(True)  # just after page 1 was served, customer 1 changes its e-mail
            apis.customers[1]["customFields"][0]["value"] = "x2@example.com"
            apis.customers[1]["modifiedOn"] = apis.now()
        return response

    monkeypatch.setattr(apis, "_route", feed_then_change)

    sync_customers(conn, SyncOptions(mode="once"))

    assert sorted(u["email"] for u in apis.users) == ["x2@example.com", "y@example.com", "z@example.com"]
    assert conn.ledger.get_referrer(1).email == "x2@example.com"


def test_customers_sharing_an_email_in_one_page_get_one_user(conn, apis):
    apis.page_size = 50
    for n in range(1, 21):
        apis.add_customer(n, f"Person{n} Test", f"family{n % 4}@example.com")

    report = sync_customers(conn, SyncOptions(mode="once"))

    assert report.created == 4 and report.shared == 16 and report.skipped_by_reason == {}
    assert sorted(u["email"] for u in apis.users) == [f"family{n}@example.com" for n in range(4)]
    assert apis.count("POST", r"^/api/v2/users$") == 4
    # Every customer carries its family's referrer: the first of the family enrolled (by page order).
    by_email = {u["email"]: u for u in apis.users}
    owners = {}
    for n in range(1, 21):
        user = by_email[f"family{n % 4}@example.com"]
        assert apis.custom(n)[CODE] == user["code"] and apis.custom(n)[LINK] == user["url"]
        record = conn.ledger.get_referrer(n)
        if record.state == "created":
            owners[n % 4] = n
    assert owners == {1: 1, 2: 2, 3: 3, 0: 4}
    shares = {item["customer_id"]: item["shares_referrer_of"] for item in report.to_dict()["shared_customers"]}
    assert shares == {n: owners[n % 4] for n in range(5, 21)}


# -- one customer, without feeds or threads (customersync.customer) ------------------------------


def handler_for(conn, **options) -> CustomerHandler:
    types = return_field_types(conn.servicetitan, conn.config.customer_sync.return_fields)
    return CustomerHandler(conn, types=types, **options)


def customer_of(apis: FakeApis, customer_id: int) -> tuple[Customer, list[CustomerContact]]:
    contacts = [CustomerContact.model_validate(c) for c in apis.contacts.values() if c["customerId"] == customer_id]
    return Customer.model_validate(apis.customers[customer_id]), contacts


def test_one_customer_becomes_a_referrer_with_its_return_fields(conn, apis):
    apis.add_customer(1, "Jane Doe", "jane@example.com")
    handler = handler_for(conn)

    plan = handler.plan(*customer_of(apis, 1))
    outcome = handler.handle(plan)

    assert (outcome.kind, outcome.email, outcome.fields_written, outcome.record_skip) == ("created", "jane@example.com", 2, False)
    [user] = apis.users
    assert apis.custom(1) == {GATE: "1234", LINK: user["url"], CODE: user["code"]}
    record = conn.ledger.get_referrer(1)
    assert (record.state, record.rf_user_id, record.code, record.error) == ("created", user["id"], user["code"], None)
    assert conn.ledger.get_return_fields(1) == {"Referral Code": user["code"], "Referral Link": user["url"]}
    assert apis.count("GET", r"/export/") == 0  # no feed was read


def test_one_customer_is_updated_in_place_when_its_mapped_data_changes_and_left_alone_when_not(conn, apis):
    apis.add_customer(1, "Jane Doe", "jane@example.com")
    handler = handler_for(conn)
    handler.handle(handler.plan(*customer_of(apis, 1)))
    apis.requests.clear()

    unchanged = handler.handle(handler.plan(*customer_of(apis, 1)))
    assert (unchanged.kind, unchanged.fields_written) == ("unchanged", 0) and apis.writes() == []

    apis.rename(1, "Janet Doe")
    updated = handler.handle(handler.plan(*customer_of(apis, 1)))

    assert updated.kind == "updated" and len(apis.users) == 1
    assert apis.writes() == [("PUT", f"/api/v2/users/{apis.users[0]['id']}")]
    assert apis.users[0]["first_name"] == "Janet" and conn.ledger.get_referrer(1).state == "updated"


def test_one_customer_whose_email_is_in_the_campaign_adopts_that_user(conn, apis):
    apis.add_customer(1, "Sam Known", "sam@example.com")
    sam = apis.add_user("sam@example.com", "Sam")
    handler = handler_for(conn)

    outcome = handler.handle(handler.plan(*customer_of(apis, 1)))

    assert outcome.kind == "adopted" and len(apis.users) == 1
    assert apis.count("POST", r"^/api/v2/users$") == 1 and apis.count("POST", r"/users/search") == 1  # 422, then found
    assert conn.ledger.get_referrer(1).rf_user_id == sam["id"]


def test_a_skipped_customer_is_to_be_recorded_once(conn, apis):
    from stsync.customersync.customer import record_skip

    apis.add_customer(2, "No Mail")
    handler = handler_for(conn)

    first = handler.handle(handler.plan(*customer_of(apis, 2)))
    assert (first.kind, first.reason, first.record_skip) == ("skipped", "no_email", True)
    assert conn.ledger.get_referrer(2) is None  # the caller records it (with its page)
    record_skip(conn.ledger, first)

    again = handler.handle(handler.plan(*customer_of(apis, 2)))
    assert (again.kind, again.record_skip) == ("skipped", False)
    assert conn.ledger.get_referrer(2).skip_reason == "no_email" and apis.writes() == []


def test_a_customers_own_failure_is_its_outcome_and_a_run_level_one_is_raised(conn, apis, monkeypatch):
    from stsync.errors import AuthError

    apis.add_customer(1, "Jane Doe", "jane@example.com")
    apis.add_customer(2, "Bob Stone", "bob@example.com")
    apis.script[("POST", "/api/v2/users")] = ["422"]
    handler = handler_for(conn)

    refused = handler.handle(handler.plan(*customer_of(apis, 1)))

    assert refused.kind == "failed" and refused.error["stage"] == "referrer" and refused.error["status"] == 422
    assert conn.ledger.get_referrer(1).state == "failed"

    original = apis._route
    monkeypatch.setattr(apis, "_route", lambda method, path, request, body: (
        httpx.Response(401, json={"message": "Unauthenticated."}) if path == "/api/v2/users" else original(method, path, request, body)
    ))
    with pytest.raises(AuthError):
        handler.handle(handler.plan(*customer_of(apis, 2)))
    assert conn.ledger.get_referrer(2).state == "pending"  # the intent; the next run searches first


def test_return_fields_servicetitan_does_not_keep_fail_only_that_stage(conn, apis, monkeypatch):
    apis.add_customer(1, "Jane Doe", "jane@example.com")
    original = apis._route

    def forgetful(method, path, request, body):
        response = original(method, path, request, body)
        if method == "PATCH":
            apis.customers[1]["customFields"] = []
            return httpx.Response(200, json=apis.customers[1])
        return response

    monkeypatch.setattr(apis, "_route", forgetful)
    writes = []
    handler = handler_for(conn, on_write=writes.append)

    outcome = handler.handle(handler.plan(*customer_of(apis, 1)))

    assert outcome.kind == "failed" and outcome.error["stage"] == "return_fields"
    record = conn.ledger.get_referrer(1)
    assert record.state == "created" and record.rf_user_id == apis.users[0]["id"]  # the referrer stays
    assert len(writes) == 1  # the write was made (and heard of), just not kept


def test_a_dry_run_customer_sends_nothing_and_notes_its_email_in_the_scratch_ledger(conn, apis, tmp_path):
    from stsync.storage.ledger import Ledger

    apis.add_customer(7, "John Smith", "shared@example.com")
    apis.add_customer(8, "Mary Smith", "shared@example.com")
    scratch = Ledger.open(tmp_path / "scratch.sqlite3")
    try:
        handler = handler_for(conn, dry_run=True, staging=scratch)
        john = handler.handle(handler.plan(*customer_of(apis, 7)))
        mary = handler.handle(handler.plan(*customer_of(apis, 8)))
    finally:
        scratch.close()

    assert john.kind == "created" and john.sample["action"] == "create"
    assert (mary.kind, mary.shared_with, mary.record_skip) == ("shared", 7, False)
    assert mary.sample["action"] == "share" and mary.sample["shares_referrer_of"] == 7
    assert apis.writes() == [] and conn.ledger.referrer_counts() == {}


# -- a create whose answer was lost, a search that lags (stsync.lookup_grace) ---------------------

GRACE = 30


class FakeTime:
    """The wall clock of the grace period and of the fake's search lag; only sleep moves it."""

    def __init__(self) -> None:
        self.now = time.time()

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def fake_time(apis, monkeypatch) -> FakeTime:
    from stsync.customersync.pipeline import CustomerSync
    from stsync.lookup_grace import GracePeriod

    fake = FakeTime()
    apis.clock = fake.clock
    monkeypatch.setattr(CustomerSync, "_grace", lambda self: GracePeriod(GRACE, clock=fake.clock, sleep=fake.sleep))
    return fake


def test_a_lost_create_whose_user_search_lags_is_found_by_a_look_again_not_created_twice(conn, apis, fake_time):
    apis.add_customer(1, "Jane Doe", "jane@example.com")
    apis.script[("POST", "/api/v2/users")] = ["commit_then_500"]
    apis.search_lag = 5

    report = sync_customers(conn, SyncOptions(mode="once"))

    assert (report.created, report.unknown, report.failed) == (1, 0, 0)
    assert len(apis.users) == 1 and apis.count("POST", r"^/api/v2/users$") == 1
    # Searched right after the loss, then at 1, 2 and 4 s (not yet listed), found at 8 s.
    assert apis.count("POST", r"/users/search") == 5
    record = conn.ledger.get_referrer(1)
    assert (record.state, record.rf_user_id, record.error) == ("created", apis.users[0]["id"], None)
    assert apis.custom(1)[CODE] == apis.users[0]["code"]


def test_a_create_refused_before_commit_stays_unknown_then_the_next_run_creates_it_once_trusted(conn, apis, fake_time):
    apis.add_customer(1, "Jane Doe", "jane@example.com")
    apis.script[("POST", "/api/v2/users")] = ["503"]

    first = sync_customers(conn, SyncOptions(mode="once"))

    assert (first.created, first.unknown, first.failed) == (0, 1, 0)
    assert apis.users == [] and apis.count("POST", r"^/api/v2/users$") == 1  # never sent twice in that run
    record = conn.ledger.get_referrer(1)
    assert record.state == "unknown" and record.error["message"].startswith("unknown — will be checked again")
    assert "503" in record.error["message"] and record.error["in_doubt_since"]
    assert first.to_dict()["unknown_customers"][0]["customer_id"] == 1
    assert conn.ledger.last_run("sync").outcome == "partial"

    # The first run waited out its grace period: the next one's search is trusted, and it creates.
    second = sync_customers(conn, SyncOptions(mode="ongoing"))
    assert (second.created, second.unknown) == (1, 0)
    assert len(apis.users) == 1 and apis.count("POST", r"^/api/v2/users$") == 2
    assert conn.ledger.get_referrer(1).state == "created"


def test_a_pending_row_a_killed_run_just_left_is_not_created_before_the_grace_period(conn, apis, fake_time):
    apis.add_customer(1, "Jane Doe", "jane@example.com")
    conn.ledger.upsert_referrer(1, state="pending", email="jane@example.com")  # killed after its intent, moments ago

    report = sync_customers(conn, SyncOptions(mode="once"))

    # Searched, not found, waited out the grace (looking again) — then, as that create was
    # another run's, this run may send it: once.
    assert (report.created, report.unknown) == (1, 0)
    assert len(apis.users) == 1 and apis.count("POST", r"^/api/v2/users$") == 1
    assert fake_time.now - time.time() >= GRACE - 1


def test_a_household_waits_for_its_first_customers_referrer_in_doubt_then_shares_it(conn, apis, fake_time):
    apis.add_customer(1, "John Smith", "smith@example.com")
    apis.add_customer(2, "Mary Smith", "smith@example.com")
    apis.script[("POST", "/api/v2/users")] = ["503"]

    first = sync_customers(conn, SyncOptions(mode="once"))

    assert (first.unknown, first.created, first.shared) == (2, 0, 0)
    assert apis.count("POST", r"^/api/v2/users$") == 1  # Mary never tries a create of her own
    assert conn.ledger.get_referrer(2).error["waiting_for"] == 1

    second = sync_customers(conn, SyncOptions(mode="ongoing"))
    assert (second.created, second.shared, second.unknown) == (1, 1, 0)
    [user] = apis.users
    assert apis.custom(1)[CODE] == apis.custom(2)[CODE] == user["code"]
    assert conn.ledger.get_referrer(2).shared_with == 1


# -- a refusal caused by the customer's own custom field ---------------------------------------


def test_a_refusal_for_the_customers_own_field_names_it_and_is_not_retried_until_the_customer_changes(conn, apis):
    customer = apis.add_customer(1, "Jane Doe", "jane@example.com")
    customer["customFields"].append({"typeId": TECH, "name": "Preferred Technician", "value": "Chris"})
    customer["customFields"].append({"typeId": 103, "name": "Notes", "value": ""})  # empty: never sent back
    apis.refused_values[TECH] = "Chris"  # a technician who left

    first = sync_customers(conn, SyncOptions(mode="once"))

    assert first.failed == 1
    record = conn.ledger.get_referrer(1)
    assert (record.state, record.rf_user_id) == ("created", apis.users[0]["id"])  # the referrer exists; its fields do not
    [failure] = first.failures
    error = failure["error"]
    assert error["type"] == "CustomFieldRefused" and error["stage"] == "return_fields"
    assert "customer 1 (Jane Doe)" in error["message"] and "'Preferred Technician'" in error["message"]
    assert "'Chris'" in error["message"]
    assert error["hint"].startswith("fix it in ServiceTitan (customer 1: 'Preferred Technician'), then `stsync sync-customers --retry-failed`")
    assert error["fields"] == [{"type_id": TECH, "name": "Preferred Technician", "value": "Chris",
                                "problem": "'Chris' is not a valid value for custom field 58."}]
    [listed] = first.to_dict()["needs_fix_customers"]
    assert listed["customer_id"] == 1 and listed["refused_in_this_run"] is True
    patch = [b for m, p, b in apis.bodies if m == "PATCH"][0]
    assert {f["typeId"] for f in patch["customFields"]} == {GATE, TECH, LINK, CODE}  # Chris kept, "" left out

    # Nobody touched the customer: the next runs leave it alone, and say so.
    patches = apis.count("PATCH", rf"{CRM}/customers/1$")
    second = sync_customers(conn, SyncOptions(mode="once"))
    assert apis.count("PATCH", rf"{CRM}/customers/1$") == patches
    assert (second.failed, second.needs_fix) == (0, 1)
    assert second.to_dict()["needs_fix_customers"][0]["refused_in_this_run"] is False

    # --retry-failed tries it anyway (and it is refused again: still not fixed).
    third = sync_customers(conn, SyncOptions(mode="once", retry_failed=True))
    assert apis.count("PATCH", rf"{CRM}/customers/1$") == patches + 1 and third.failed == 1

    # Fixed in ServiceTitan (its modifiedOn moves): tried again without being asked, and written.
    customer["customFields"] = [f for f in customer["customFields"] if f["typeId"] != TECH]
    customer["modifiedOn"] = apis.now()
    fourth = sync_customers(conn, SyncOptions(mode="ongoing"))
    assert (fourth.failed, fourth.needs_fix) == (0, 0)
    assert apis.custom(1)[CODE] == apis.users[0]["code"]
    assert conn.ledger.get_referrer(1).error is None


def test_a_refusal_that_names_no_field_is_blamed_on_the_values_that_cannot_be_valid_today(conn, apis, monkeypatch):
    customer = apis.add_customer(1, "Jane Doe", "jane@example.com")
    customer["customFields"].append({"typeId": TECH, "name": "Preferred Technician", "value": "Chris"})
    apis.type_specs[TECH] = ("Dropdown", ["Alex", "Sam", "Jordan"])
    apis.script[("PATCH", f"{CRM}/customers/1")] = []  # (unused: the refusal below has no field names)

    original = apis._route

    def refuse_vaguely(method, path, request, body):
        if method == "PATCH":
            return httpx.Response(400, json={"title": "Bad Request", "status": 400, "traceId": "t", "errors": {}, "data": {}})
        return original(method, path, request, body)

    monkeypatch.setattr(apis, "_route", refuse_vaguely)
    report = sync_customers(conn, SyncOptions(mode="once"))
    [failure] = report.failures
    assert failure["error"]["type"] == "CustomFieldRefused"
    assert failure["error"]["fields"] == [{
        "type_id": TECH, "name": "Preferred Technician", "value": "Chris",
        "problem": "not one of the field's options (Alex, Sam, Jordan)",
    }]
