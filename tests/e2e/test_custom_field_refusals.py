"""Return fields and the customer's own custom fields (issue 14 item 5), end to end: the real
CLI against the sandbox's ``refuse_invalid_existing_custom_fields`` variant, whose seeded
customers hold values a PATCH could not set today — an empty Gate Code, the retired
technician "Chris", a value of the retired field "Alarm Code".

- An empty value is never sent back: those customers get their link and code.
- A retired option or field is sent back unchanged (leaving it out could erase it), is
  refused, and the failure names the customer, the field and the value; later runs leave
  that customer alone (exit 0, ``needs_fix``) until it changes in ServiceTitan or
  ``--retry-failed`` asks; ``diagnose`` lists it.
"""

from __future__ import annotations

import json

import pytest
from customer_sync_expectations import expected_outcomes

from stsync.cli.app import run
from stsync.storage.config import load_config
from stsync.storage.config_writer import save_config

pytestmark = pytest.mark.e2e

CUSTOMERS = 70  # index % 23 == 5, % 29 == 10, % 31 == 12 each come up at least twice


@pytest.fixture
def connected(isolated, monkeypatch, capsys):
    from stsync.sandbox import Sandbox, Variants

    with Sandbox(
        seed=13, customers=CUSTOMERS, st_per_second=1_000, rf_per_minute=60_000,
        variants=Variants(refuse_invalid_existing_custom_fields=True),
    ) as sb:
        for name, value in sb.env().items():
            monkeypatch.setenv(name, value)
        assert run([*sb.connect_args(), "--secrets-store", "file"]) == 0
        path = isolated / "config.toml"
        config = load_config(path)
        config.limits.servicetitan_per_second = 1_000
        config.limits.referral_factory_per_minute = 60_000
        save_config(config, path)
        capsys.readouterr()
        yield sb


def sync(capsys, *args: str) -> tuple[int, dict, str]:
    code = run(["--json", "sync-customers", *args])
    out, err = capsys.readouterr()
    return code, json.loads(out), err


def values_of(customer: dict) -> dict:
    return {f["name"]: f["value"] for f in customer["customFields"]}


def test_own_invalid_values_are_named_left_alone_until_fixed_and_empty_ones_never_sent(connected, capsys):
    sb = connected
    # A customer holding an empty Gate Code and nothing else a PATCH could not set (the
    # seed's empty values sit on customers that are skipped or hold a retired value too).
    blank = sb.add_customer("Blank Gate", email="blank.gate@example.com")
    sb.modify_customer(blank["id"], custom_fields={"Gate Code": ""})
    expected = expected_outcomes(sb)
    with_referrer = {cid for cid, (outcome, _) in expected.items() if outcome in ("created", "adopted", "shared")}
    before = {c["id"]: values_of(c) for c in sb.customers()}
    retired = {cid for cid, v in before.items() if cid in with_referrer and (v.get("Preferred Technician") == "Chris" or "Alarm Code" in v)}
    empty = {cid for cid, v in before.items() if cid in with_referrer and v.get("Gate Code") == "" and cid not in retired}
    assert len(retired) >= 2 and empty

    code, report, err = sync(capsys, "--once")

    assert code == 5, err
    assert report["counts"]["failed"] == len(retired)
    refused = {item["customer_id"]: item for item in report["needs_fix_customers"]}
    assert set(refused) == retired and all(item["refused_in_this_run"] for item in refused.values())
    for cid in retired:
        held = before[cid]
        [field] = refused[cid]["fields"]
        if held.get("Preferred Technician") == "Chris":
            assert (field["name"], field["value"]) == ("Preferred Technician", "Chris")
        else:
            assert (field["name"], field["value"]) == ("Alarm Code", held["Alarm Code"])
        assert f"customer {cid}" in refused[cid]["message"] and repr(field["value"]) in refused[cid]["message"]
        assert refused[cid]["hint"].startswith(f"fix it in ServiceTitan (customer {cid}:")
        assert "`stsync sync-customers --retry-failed`" in refused[cid]["hint"]
        assert values_of(sb.customer(cid)) == held  # nothing changed: no link, no code, nothing erased
    for cid in empty:
        now = values_of(sb.customer(cid))
        assert "Gate Code" not in now and now.get("Referral Code")  # the empty value left out, the write kept
    assert "fix it in ServiceTitan" in err

    # Nothing changed in ServiceTitan: the next run leaves them alone and exits 0.
    sb.clear_request_log()
    code, again, err = sync(capsys, "--once")
    assert code == 0, err
    assert again["counts"]["failed"] == 0 and again["counts"]["needs_fix"] == len(retired)
    assert not [r for r in sb.request_log if r.method == "PATCH" and any(r.path.endswith(f"/customers/{cid}") for cid in retired)]
    assert "wait for a custom-field fix in ServiceTitan" in err

    code, diagnosis = run(["--json", "diagnose", "--offline"]), json.loads(capsys.readouterr().out)
    check = {c["name"]: c for c in diagnosis["checks"]}["Customers' own custom fields"]
    assert check["status"] == "warn" and all(f"customer {cid}:" in check["message"] for cid in retired)
    assert "--retry-failed" in check["fix"]

    # --retry-failed asks: tried again, refused again (nobody fixed anything).
    code, forced, err = sync(capsys, "--once", "--retry-failed")
    assert code == 5 and forced["counts"]["failed"] == len(retired)

    # Someone fixes one in ServiceTitan (its modifiedOn moves): the next ongoing run writes it.
    fixed = sorted(retired)[0]
    name = "Preferred Technician" if before[fixed].get("Preferred Technician") == "Chris" else "Alarm Code"
    sb.modify_customer(fixed, custom_fields={name: "Sam" if name == "Preferred Technician" else None})
    code, after, err = sync(capsys, "--ongoing")
    assert code == 0, err
    assert fixed not in {item["customer_id"] for item in after["needs_fix_customers"]}
    assert values_of(sb.customer(fixed)).get("Referral Code")
