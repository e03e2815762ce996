"""What `map show` renders (stsync.mapping.overview): the setup guide's Step 5 table, in its words."""

from __future__ import annotations

import re
from pathlib import Path

from stsync.mapping.overview import booking_rows, mapping_overview
from stsync.mapping.vocabulary import BOOKING_TARGET_LABELS
from stsync.servicetitan.vocabulary import REQUIRED_BOOKING_TARGETS
from stsync.storage.config import Config, default_config


def test_default_mapping_is_the_setup_guides_step_5_table(shared_dir: Path):
    """Every row of the seed's table, as `map show` renders it, from the default config."""
    text = (shared_dir / "seeds" / "servicetitan-integration-setup.txt").read_text(encoding="utf-8")
    seed_rows = []
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 3 and cells[0] in ("Dynamic Value", "Fixed Value (Manual Input)", "Fixed Value (Manual Select)"):
            seed_rows.append(cells)
    assert len(seed_rows) == 6
    rows = booking_rows(default_config().leads)
    assert len(rows) == 6 and all(row.required for row in rows)
    for (data_type, source, target), row in zip(seed_rows, rows, strict=True):
        assert row.data_type == data_type
        assert row.source.strip('"').casefold() == source.replace("*", "").strip().strip('"').casefold()
        # The seed leaves Email's target blank (it becomes a booking contact).
        assert row.target_label == (target.replace("*", "").strip() or "Email")



def test_troubleshooting_guides_required_fields_are_the_required_targets(shared_dir: Path):
    text = (shared_dir / "seeds" / "servicetitan-troubleshooting.txt").read_text(encoding="utf-8")
    listed = re.search(r"The required ServiceTitan fields are: (.+?)\. Make sure", text).group(1)
    names = [n.strip() for n in re.split(r",\s*(?:and\s+)?|\s+and\s+", listed) if n.strip()]
    assert [BOOKING_TARGET_LABELS[t] for t in REQUIRED_BOOKING_TARGETS] == names



def test_the_overview_shows_each_kind_of_spec_as_the_setup_guide_does():
    config = Config.model_validate({
        "leads": {"fields": {"name": {"template": "{first_name} {meta.Last Name}"}, "phone": {"from": "meta.Phone"},
                             "send_confirmation_email": {"value": False}, "priority": {"select": "high"}}},
        "customer_sync": {"fields": {"first_name": {"from": "customer.first_name"}, "meta.Gate": {"from": "custom.Gate Code"},
                                     "meta.Street": {"from": "address.street"}}},
    })
    overview = mapping_overview(config, sections=("leads", "customers"))
    rows = {row["target"]: row for row in overview["leads"]["fields"]}
    assert rows["name"]["data_type"] == "Template" and rows["name"]["from"] == "{first_name} {meta.Last Name}"
    assert rows["phone"]["from"] == "Phone (form field)" and rows["phone"]["spec"] == {"from": "meta.Phone"}
    assert rows["send_confirmation_email"]["from"] == '"no"' and rows["send_confirmation_email"]["data_type"] == "Fixed Value (Manual Input)"
    assert rows["priority"]["from"] == '"High"' and rows["priority"]["data_type"] == "Fixed Value (Manual Select)"
    assert rows["source"]["mapped"] is False and overview["leads"]["setup_required"] is True
    customers = {row["target"]: row for row in overview["customers"]["fields"]}
    assert customers["meta.Gate"]["from"] == "Gate Code (custom field)" and customers["meta.Gate"]["target_label"] == "Gate (form field)"
    assert customers["meta.Street"]["from"] == "Address: Street"
    assert customers["email"]["mapped"] is False and overview["customers"]["missing"] == ["email"]
