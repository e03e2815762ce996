"""stsync/suggestions.py: the one "did you mean" — only ever a name among the choices."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from stsync.suggestions import did_you_mean


def test_the_closest_choice_is_suggested_and_nothing_when_none_is_close():
    assert did_you_mean("nmae", ["name", "email"]) == " (did you mean 'name'?)"
    assert did_you_mean("tenant_idd", ["tenant_id", "client_id"]) == " (did you mean 'tenant_id'?)"
    assert did_you_mean("zzz", ["name", "email"]) == ""
    assert did_you_mean("x", []) == ""


def test_case_differences_count_as_close():
    assert did_you_mean("LEADS", ["leads", "referrers"]) == " (did you mean 'leads'?)"
    # An exact match but for case wins over a closer-looking spelling.
    assert did_you_mean("Referral link", ["Referral Lin", "referral link"]) == " (did you mean 'referral link'?)"
    assert did_you_mean("REFERAL CODE", ["Referral Code", "Referral Link"]) == " (did you mean 'Referral Code'?)"


def test_choices_that_are_not_text_are_compared_as_text():
    assert did_you_mean(1234, [1235, 7]) == " (did you mean '1235'?)"


@given(given_word=st.text(max_size=12), choices=st.lists(st.text(max_size=12), max_size=6))
def test_a_suggestion_is_always_one_of_the_choices(given_word, choices):
    suggestion = did_you_mean(given_word, choices)
    assert suggestion == "" or any(suggestion == f" (did you mean {choice!r}?)" for choice in choices)
