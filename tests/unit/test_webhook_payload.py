"""webhooks.payload and webhooks.tokens: what a delivery says and who may send it — pure
functions, no socket, no ledger."""

from __future__ import annotations

import pytest
from webhook_fakes import TOKEN, lead_payload  # tests/support

from stsync.errors import UsageError
from stsync.leads import Lead
from stsync.webhooks.payload import (
    LEAD_CREATED,
    LEAD_QUALIFIED,
    REFERRER_JOINED,
    REWARD_ISSUED,
    UnreadableJson,
    WebhookRejected,
    apply_key_aliases,
    classify,
    delivery_key,
    event_from_text,
    key_aliases,
    parse_json,
    parse_payload,
)
from stsync.webhooks.tokens import bearer_token, check_token, header_token_matches, token_matches


@pytest.mark.parametrize(
    ("text", "user_type", "event"),
    [
        ("A new lead is created", None, LEAD_CREATED),
        ("lead.created", None, LEAD_CREATED),
        ("leadCreated", None, LEAD_CREATED),
        ("lead-created", None, LEAD_CREATED),
        ("A lead is qualified", None, LEAD_QUALIFIED),
        ("lead_qualified", None, LEAD_QUALIFIED),
        ("A new referrer joins", None, REFERRER_JOINED),
        ("referrer-joined", None, REFERRER_JOINED),
        ("A reward is issued", None, REWARD_ISSUED),
        ("user.created", "person_invited", LEAD_CREATED),
        ("user.created", "person_referring", REFERRER_JOINED),
        ("user.created", None, None),
        ("invoice.paid", None, None),
        ("", None, None),
    ],
)
def test_event_names(text, user_type, event):
    assert event_from_text(text, user_type=user_type) == event


def test_classify_prefers_the_url_then_the_header_then_the_payload_then_the_user_type():
    payload = {"event": "A lead is qualified", "data": lead_payload()}
    assert classify(payload, path_event="lead-created", header_event="referrer-joined") == LEAD_CREATED
    assert classify(payload, header_event="referrer-joined") == REFERRER_JOINED
    assert classify(payload) == LEAD_QUALIFIED
    assert classify(lead_payload()) == LEAD_CREATED
    assert classify(lead_payload(qualified_at="2025-06-02")) == LEAD_QUALIFIED
    assert classify({"user": {**lead_payload(), "type": "person_referring"}}) == REFERRER_JOINED


@pytest.mark.parametrize(
    ("payload", "path_event", "fragment"),
    [
        (lead_payload(), "bogus", "unknown event 'bogus' in the URL path"),
        ({"event": "invoice.paid", **lead_payload()}, None, "unknown event 'invoice.paid'"),
        ({"email": "jane@example.com"}, None, "cannot tell which event"),
    ],
)
def test_classify_rejects_what_it_cannot_name(payload, path_event, fragment):
    with pytest.raises(WebhookRejected) as caught:
        classify(payload, path_event=path_event)
    assert caught.value.status == 400 and fragment in caught.value.message


def test_parse_payload_json_form_query_and_errors():
    assert parse_payload(b'{"email": "a@b.c"}', "application/json") == {"email": "a@b.c"}
    assert parse_payload(b"email=a%40b.c&code=X", "application/x-www-form-urlencoded; charset=utf-8") == {"email": "a@b.c", "code": "X"}
    assert parse_payload(b"", None, "email=a%40b.c") == {"email": "a@b.c"}
    assert parse_payload(b'\xef\xbb\xbf{"a": 1}', None) == {"a": 1}  # a BOM is tolerated
    for body, fragment in [(b'{"email": ', "not JSON (Expecting value at line 1, column 11)"),
                           (b"   ", "empty body"), (b"\xff\xfe", "not UTF-8")]:
        with pytest.raises(WebhookRejected) as caught:
            parse_payload(body, "application/json")
        assert caught.value.status == 400 and fragment in caught.value.message


def test_key_aliases_rename_keys_at_every_level_and_fill_meta():
    aliases = {"email_address": "email", "ref": "referral_code", "Phone Number": "meta.Phone"}
    payload = {"event": "x", "data": {"Email_Address": "a@b.c", "ref": "R1", "phone number": "555",
                                       "meta": [{"field": "Last Name", "value": "Doe"}]}}
    assert apply_key_aliases(payload, aliases) == {
        "event": "x",
        "data": {"email": "a@b.c", "referral_code": "R1",
                 "meta": [{"field": "Last Name", "value": "Doe"}, {"field": "Phone", "value": "555"}]},
    }
    assert apply_key_aliases(payload, {}) is payload


def test_key_aliases_from_the_config_section_map_each_sender_key_to_its_field():
    assert key_aliases({"email": ["email_address", "mail"], "meta.Phone": ["phone"]}) == {
        "email_address": "email", "mail": "email", "phone": "meta.Phone"}
    assert key_aliases({}) == {}


def test_delivery_keys():
    lead = Lead(email="Jane@Example.com", referral_code="C1", rf_user_id=456, signed_up_at="2025-06-01")
    assert delivery_key(LEAD_CREATED, lead, {"any": "thing"}) == "lead_created:id=456:2025-06-01"
    no_id = Lead(email="Jane@Example.com", referral_code="C1")
    assert delivery_key(LEAD_CREATED, no_id, {"a": 1}).startswith("lead_created:code=C1:sha256=")
    assert delivery_key(LEAD_CREATED, no_id, {"a": 1}) == delivery_key(LEAD_CREATED, no_id, {"a": 1})
    assert delivery_key(LEAD_CREATED, no_id, {"a": 1}) != delivery_key(LEAD_CREATED, no_id, {"a": 2})
    only_email = Lead(email="Jane@Example.com")
    assert delivery_key(LEAD_CREATED, only_email, {}).startswith("lead_created:email=jane@example.com:")
    # A lead qualified, unqualified and qualified again is two events.
    first = delivery_key(LEAD_QUALIFIED, lead, {"data": {"email": "x@y.z", "qualified_at": "2025-06-02"}})
    again = delivery_key(LEAD_QUALIFIED, lead, {"data": {"email": "x@y.z", "qualified_at": "2025-07-09"}})
    assert first == "lead_qualified:id=456:2025-06-02" and first != again


def test_check_token():
    with pytest.raises(UsageError, match="STSYNC_WEBHOOK_TOKEN"):
        check_token(None)
    with pytest.raises(UsageError, match="at least 16"):
        check_token("short")
    with pytest.raises(UsageError, match="contain no"):
        check_token("a/b" * 10)
    assert check_token(f"  {TOKEN}\n") == TOKEN


def test_tokens_match_exactly_from_the_token_header_or_a_bearer_authorization():
    assert token_matches(TOKEN, TOKEN) and not token_matches(TOKEN[:-1], TOKEN) and not token_matches(None, TOKEN)
    assert bearer_token(f"bearer {TOKEN} ") == TOKEN and bearer_token(f"Basic {TOKEN}") is None and bearer_token(None) is None
    headers = {"X-Stsync-Token": TOKEN}
    assert header_token_matches(headers.get, TOKEN)
    assert header_token_matches({"Authorization": f"Bearer {TOKEN}"}.get, TOKEN)
    assert not header_token_matches({"Authorization": f"Basic {TOKEN}", "X-Stsync-Token": "wrong"}.get, TOKEN)


# -- JSON that breaks a parser (issue 15 item 7) -------------------------------------------------
BREAKING_BODIES = {
    "nested_100000_deep": (b"[" * 100_000 + b"]" * 100_000, "nested too deeply"),
    "nested_past_the_limit_in_an_object": (
        (b'{"a":' * 40) + b"1" + (b"}" * 40),
        "nested too deeply",
    ),
    "a_5000_digit_number": (b'{"email": "a@example.com", "id": ' + b"7" * 5000 + b"}", "5000 digits"),
    "a_5000_digit_negative_number": (b'{"id": -' + b"7" * 5000 + b"}", "5000 digits"),
    "a_huge_float": (b'{"id": 1' + b"0" * 200 + b".5}", "characters long"),
    "nan": (b'{"id": NaN}', "NaN"),
    "infinity": (b'{"id": -Infinity}', "-Infinity"),
    "lone_surrogate_in_an_email": (b'{"email": "jo\\ud800@example.com", "code": "x"}', "\\ud800"),
    "lone_surrogate_in_a_key": (b'{"\\udfff": "x", "email": "jo@example.com"}', "\\udfff"),
    "not_utf8": (b'{"email": "jos\xe9@example.com"}', "utf-8"),
}


@pytest.mark.parametrize("case", list(BREAKING_BODIES))
def test_json_that_would_break_the_parser_is_refused_with_a_reason(case):
    body, said = BREAKING_BODIES[case]
    with pytest.raises(UnreadableJson) as caught:
        parse_json(body, what="lead.json")
    assert str(caught.value).startswith("lead.json") and said in str(caught.value)
    # A webhook sender gets a 400 with the same words, never a 500.
    with pytest.raises(WebhookRejected) as rejected:
        parse_payload(body, "application/json")
    assert rejected.value.status == 400 and said in rejected.value.message


def test_json_within_the_limits_reads_as_usual():
    deep = b'{"data": {"user": {"meta": [{"field": "Phone", "value": {"a": [1, 2]}}]}}}'
    assert parse_json(deep)["data"]["user"]["meta"][0]["value"] == {"a": [1, 2]}
    assert parse_json(b'\xef\xbb\xbf{"id": 9223372036854775807, "n": 1.5, "e": "jos\\u00e9"}') == {
        "id": 2**63 - 1, "n": 1.5, "e": "josé",
    }  # fmt: skip
    # A surrogate *pair* is one character (an emoji), not a lone surrogate.
    assert parse_json('{"name": "\\ud83d\\ude00"}')["name"] == "\U0001f600"
