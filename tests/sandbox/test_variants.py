"""``Variants``: the closed set of readings, their ``--variant`` spellings, and their checks."""

from __future__ import annotations

import pytest

from stsync.sandbox import Variants
from stsync.sandbox.variants import NAMES


def test_the_default_is_the_documented_contract():
    assert Variants().names() == []
    assert Variants.parse([]) == Variants()


def test_every_variant_has_a_name_and_every_is_all_of_them():
    every = Variants.every()
    assert sorted(every.names()) == sorted(NAMES)
    assert Variants.parse(["every"]) == every
    assert all(getattr(every, field) != getattr(Variants(), field) for field, _, _ in NAMES.values())
    assert Variants.every(st_429="bare").st_429 == "bare"


@pytest.mark.parametrize(
    ("names", "expected"),
    [
        (["rf-cursor-paging"], Variants(rf_cursor_paging=True)),
        (["RF_CURSOR_PAGING"], Variants(rf_cursor_paging=True)),
        (["lookup-lag"], Variants(lookup_lag_seconds=5.0)),
        (["lookup-lag=0.5"], Variants(lookup_lag_seconds=0.5)),
        (["rf-search-max-per-page=50"], Variants(rf_search_max_per_page=50)),
        (["st-429"], Variants(st_429="apim-body")),
        (["st-429=bare"], Variants(st_429="bare")),
        (["token-per-minute=3", "st-gateway-401"], Variants(token_per_minute=3, st_gateway_401=True)),
        (["html-route-404=off"], Variants()),
        (["every", "rf-cursor-paging=false"], Variants.every(rf_cursor_paging=False)),
    ],
)
def test_parse(names, expected):
    parsed = Variants.parse(names)
    assert parsed == expected
    assert Variants.parse(parsed.names()) == parsed  # names() is parse()'s inverse


@pytest.mark.parametrize(
    "names",
    [
        ["nope"],
        ["lookup-lag=soon"],
        ["lookup-lag=-1"],
        ["st-429=loud"],
        ["token-per-minute=0"],
        ["rf-mixed-meta=maybe"],
    ],
)
def test_parse_refuses_what_it_does_not_know(names):
    with pytest.raises(ValueError):
        Variants.parse(names)


def test_dict_round_trip_and_checks():
    assert Variants.from_dict(Variants.every().to_dict()) == Variants.every()
    with pytest.raises(ValueError):
        Variants.from_dict({"cursor_paging": True})
    with pytest.raises(ValueError):
        Variants(rf_search_max_per_page=True)  # a bool is not a page size
