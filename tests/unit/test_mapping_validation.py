"""Whether a mapping can work (stsync.mapping.validation): invalid entries are ConfigErrors with
their key path and the closest name; missing required targets are the seed's "Setup Required"."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from mapping_cases import SEED_LEAD, leads_section, seed_fields  # tests/support

from stsync.errors import ConfigError, SetupRequired
from stsync.mapping.booking import booking_request_for
from stsync.mapping.overview import mapping_overview
from stsync.mapping.validation import booking_mapping_problems, customer_mapping_problems, missing_required
from stsync.servicetitan.vocabulary import REQUIRED_BOOKING_TARGETS
from stsync.storage.config import Config


@pytest.mark.parametrize(
    ("target", "spec", "words"),
    [
        ("nmae", {"from": "first_name"}, "did you mean 'name'"),
        ("name", {"from": "frist_name"}, "did you mean 'first_name'"),
        ("priority", {"select": "ASAP"}, "Low, Normal, High, Urgent"),
        ("summary", {"select": "Referral"}, "not a Manual Select"),
        ("name", {"template": "{first_name} {last_nam}"}, "last_nam"),
        ("job_type_id", {"value": "abc"}, "whole number"),
    ],
)
def test_an_invalid_mapping_entry_is_a_config_error_with_key_path(target, spec, words):
    section = leads_section({**seed_fields(), target: spec})
    problems = booking_mapping_problems(section)
    assert len(problems) == 1 and words in str(problems[0]) + (problems[0].hint or "")
    assert problems[0].key_path == f"leads.fields.{target}"
    with pytest.raises(ConfigError):
        booking_request_for(SEED_LEAD, section)



def test_a_blank_fixed_value_leaves_a_required_target_missing():
    section = leads_section({**seed_fields(), "summary": {"value": "   "}})
    assert missing_required(section) == ["summary"]
    assert [p.key_path for p in booking_mapping_problems(section)] == ["leads.fields.summary"]


def test_referrers_problems_name_the_referrers_section():
    referrers = Config.model_validate({"referrers": {"action": "create_booking", "fields": {"nmae": {"from": "first_name"}}}}).referrers
    (problem,) = booking_mapping_problems(referrers)
    assert problem.key_path == "referrers.fields.nmae" and "did you mean 'name'" in str(problem)


@pytest.mark.parametrize(
    ("fields", "return_fields", "key_path", "words"),
    [
        ({"first_name": {"from": "customer.first_name"}}, {}, "customer_sync.fields.email", "no mapping for email"),
        ({"first_name": {"from": "customer.frist_name"}, "email": {"from": "contact.email"}}, {},
         "customer_sync.fields.first_name", "did you mean 'customer.first_name'"),
        ({"first_name": {"select": "x"}, "email": {"from": "contact.email"}}, {}, "customer_sync.fields.first_name",
         "not a Manual Select"),
        ({"first_name": {"from": "customer.first_name"}, "email": {"value": "a@b.co"}}, {}, "customer_sync.fields.email",
         "cannot be a fixed value"),
        ({"first_name": {"from": "customer.first_name"}, "email": {"from": "contact.email"}, "last_name": {"from": "customer.last_name"}},
         {}, "customer_sync.fields.last_name", "meta.<label>"),
    ],
)
def test_customer_mapping_problems_name_the_key_path(fields, return_fields, key_path, words):
    sync = Config.model_validate({"customer_sync": {"fields": fields, "return_fields": return_fields}}).customer_sync
    problems = customer_mapping_problems(sync)
    assert [p.key_path for p in problems] == [key_path]
    assert words in str(problems[0]) + (problems[0].hint or "")


@settings(max_examples=100, deadline=None)
@given(
    dropped=st.sets(st.sampled_from(REQUIRED_BOOKING_TARGETS), min_size=1),
    action=st.sampled_from(["create_booking", "nothing"]),
)
def test_any_incomplete_mapping_is_setup_required_with_exactly_the_missing_targets(dropped, action):
    fields = {t: s for t, s in seed_fields().items() if t not in dropped}
    section = leads_section(fields, action=action)
    expected = [t for t in REQUIRED_BOOKING_TARGETS if t in dropped]
    assert missing_required(section) == expected
    with pytest.raises(SetupRequired) as caught:
        booking_request_for(SEED_LEAD, section)
    assert caught.value.missing == expected
    config = Config.model_validate({"leads": {"action": action, "fields": fields}})
    overview = mapping_overview(config, sections=("leads",))["leads"]
    assert overview["missing"] == expected
    assert overview["setup_required"] is (action == "create_booking")
    assert [r["target"] for r in overview["fields"] if not r["mapped"]] == expected
