"""storage/config.py: the model (specs, sections, the template parser), its error messages,
defaults, endpoints; and that what config_writer saves loads back unchanged."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import tomli_w
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from stsync.errors import ConfigError
from stsync.servicetitan.vocabulary import JOB_STATUSES
from stsync.storage.config import (
    DOTTED_PREFIXES,
    Config,
    ConfigSchemaError,
    ConfigSyntaxError,
    FixedValue,
    FromField,
    SelectValue,
    TemplateValue,
    default_config,
    field_spec,
    format_key_path,
    load_config,
    parse_config,
    parse_config_text,
    resolve_endpoints,
)
from stsync.storage.config_writer import render_config, save_config
from stsync.vocabulary import Action, Environment, QualificationRule, ReturnValue, SyncMode, UnqualifyEvent

# What a TOML file holds: each vocabulary's strings.
ENVIRONMENTS, ACTIONS, QUALIFICATION_RULES, UNQUALIFY_EVENTS, SYNC_MODES, RETURN_FIELD_VALUES = (
    tuple(str(word) for word in vocabulary)
    for vocabulary in (Environment, Action, QualificationRule, UnqualifyEvent, SyncMode, ReturnValue)
)

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "examples" / "config.toml"
EXAMPLE_IDENTITY = dict(tenant_id=1234567, client_id="cid.xxxxx", booking_provider=42, campaign_id=7)


# -- the default mapping -------------------------------------------------------------------
def test_default_config_is_the_seed_mapping():
    config = default_config(**EXAMPLE_IDENTITY)
    leads = config.leads
    assert leads.action == "create_booking"
    assert list(leads.fields) == ["source", "name", "email", "summary", "is_first_time_client", "external_id"]
    assert leads.fields["source"] == FromField(from_="campaign_name")
    assert leads.fields["name"] == FromField(from_="first_name")
    assert leads.fields["email"] == FromField(from_="email")
    assert leads.fields["summary"] == FixedValue(value="Referral")
    assert leads.fields["is_first_time_client"] == SelectValue(select="yes")
    assert leads.fields["external_id"] == FromField(from_="referral_code")
    assert leads.qualification.rule == "none" and leads.qualification.job_status is None
    assert config.referrers.action == "nothing" and config.referrers.fields == {}
    assert config.customer_sync.mode == "one_time" and config.customer_sync.include_inactive is False
    assert config.customer_sync.return_fields == {"Referral Link": "referral_link", "Referral Code": "referral_code"}
    assert (config.limits.servicetitan_per_second, config.limits.referral_factory_per_minute) == (60, 600)
    assert (config.limits.retry_budget_seconds, config.limits.workers) == (120, 8)
    assert config.servicetitan.page_size == 200
    assert config.webhook.aliases == {}


def test_spec_example_equals_default_config(shared_dir):
    spec = (shared_dir / "SPEC.md").read_text()
    block = re.search(r"## 3\. Config file.*?```toml\n(.*?)```", spec, re.S).group(1)
    assert parse_config_text(block) == default_config(**EXAMPLE_IDENTITY)


def test_example_file_loads_as_the_default_mapping():
    assert load_config(EXAMPLE) == default_config(**EXAMPLE_IDENTITY)


def test_default_config_without_identity_round_trips(tmp_path):
    path = tmp_path / "new" / "config.toml"
    save_config(default_config(), path)
    loaded = load_config(path)
    assert loaded == default_config()
    assert loaded.servicetitan.tenant_id is None and loaded.referral_factory.campaign_id is None


def test_connect_style_update_is_saved(tmp_path):
    config = default_config()
    config = config.model_copy(
        update={
            "servicetitan": config.servicetitan.model_copy(
                update={"environment": "integration", "tenant_id": 99, "client_id": "cid.1", "booking_provider": 5}
            ),
            "referral_factory": config.referral_factory.model_copy(update={"campaign_id": 3}),
        }
    )
    save_config(config, tmp_path / "c.toml")
    loaded = load_config(tmp_path / "c.toml")
    assert (loaded.servicetitan.environment, loaded.servicetitan.tenant_id, loaded.servicetitan.client_id) == (
        "integration",
        99,
        "cid.1",
    )
    assert loaded.referral_factory.campaign_id == 3
    assert loaded.leads == default_config().leads


def test_missing_sections_take_defaults_and_empty_identity_is_allowed():
    config = parse_config_text("")
    assert config == Config()
    assert config.leads.fields == {} and config.servicetitan.tenant_id is None
    assert parse_config_text('[servicetitan]\nclient_id = ""').servicetitan.client_id == ""


def test_quoted_ids_are_read_as_numbers():
    assert parse_config_text('[servicetitan]\ntenant_id = "1234567"').servicetitan.tenant_id == 1234567


def test_job_status_rule_defaults_to_completed():
    config = parse_config_text('[leads.qualification]\nrule = "job_status"')
    assert config.leads.qualification.job_status == "Completed"


def test_dotted_targets_are_flat_and_keep_their_order():
    config = parse_config_text(
        '[leads.fields]\nname = { from = "first_name" }\naddress.street = { value = "1 Main" }\n'
        '"meta.Last Name" = { template = "{first_name} {meta.Last Name}" }\nsummary = { value = 3 }'
    )
    assert list(config.leads.fields) == ["name", "address.street", "meta.Last Name", "summary"]
    assert config.leads.fields["address.street"] == FixedValue(value="1 Main")
    assert config.leads.fields["meta.Last Name"] == TemplateValue(template="{first_name} {meta.Last Name}")
    assert config.leads.fields["summary"].value == 3


def test_each_spec_knows_its_kind_label_payload_and_sources():
    template = TemplateValue(template="{first_name} {{x}} {meta.Last Name}")
    specs = [FromField(from_="email"), FixedValue(value=False), SelectValue(select="yes"), template]
    assert [(s.kind, s.label) for s in specs] == [
        ("from", "Dynamic Value"), ("value", "Fixed Value (Manual Input)"),
        ("select", "Fixed Value (Manual Select)"), ("template", "Template")]
    assert [s.to_toml() for s in specs] == [
        {"from": "email"}, {"value": False}, {"select": "yes"}, {"template": "{first_name} {{x}} {meta.Last Name}"}]
    assert [s.sources() for s in specs] == [("email",), (), (), ("first_name", "meta.Last Name")]
    assert FixedValue(value="  ").is_blank and not FixedValue(value=0).is_blank and not FromField(from_="email").is_blank


def test_the_template_parser_reads_fields_and_literal_braces_and_renders():
    template = TemplateValue(template="{{code}} { referral_code }-{first_name}")
    assert template.fields() == ["referral_code", "first_name"]
    assert template.render({"referral_code": "C1"}.get) == "{code} C1-"
    assert template.render(lambda name: None) == "{code} -"
    assert TemplateValue(template="{a}  {b}").render({"b": "x"}.get) == "x"  # spaces collapse
    assert TemplateValue(template="{a} {b}").render(lambda name: "  ") is None
    for broken, words in [("{first_name", "unmatched '{' at column 1"), ("a } {b}", "unmatched '}' at column 3"),
                          ("{b} {}", "empty {} at column 5"), ("{a{b}}", "unmatched '{' at column 1"),
                          ("{{no field}}", "names no field")]:
        with pytest.raises(ConfigError, match=re.escape(words)):
            field_spec("template", broken)


def test_booking_section_is_the_section_of_a_kind():
    config = default_config()
    assert config.booking_section("lead") is config.leads and config.leads.section_name == "leads"
    assert config.booking_section("referrer") is config.referrers and config.referrers.section_name == "referrers"
    assert (config.leads.kind, config.referrers.kind) == ("lead", "referrer")
    with pytest.raises(ValueError):
        config.booking_section("leads")  # type: ignore[arg-type]


def test_spec_kinds_and_texts():
    assert [cls.kind for cls in (FromField, FixedValue, SelectValue, TemplateValue)] == ["from", "value", "select", "template"]
    assert FixedValue(value=True).text == "true" and FromField(from_="email").text == "email"
    assert field_spec("from", "email") == FromField(from_="email")
    assert field_spec("value", 12) == FixedValue(value=12)
    with pytest.raises(ConfigError, match="did you mean 'template'"):
        field_spec("templte", "{a}")
    with pytest.raises(ConfigError, match="not well formed"):
        field_spec("template", "{first_name")
    with pytest.raises(ConfigError, match="must not be empty"):
        field_spec("from", "")


# -- error messages ------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("text", "key_path", "message"),
    [
        ('[leads.fields]\nname = { frm = "x" }', "leads.fields.name", "unknown value kind 'frm' (did you mean 'from'?)"),
        ('[leads.fields]\nname = "first_name"', "leads.fields.name", 'e.g. { from = "first_name" }'),
        ('[leads.fields]\nname = { from = 3 }', "leads.fields.name.from", "must be text"),
        ('[leads.fields]\nname = { from = "a", value = "b" }', "leads.fields.name", "exactly one of"),
        ("[leads.fields]\nname = {}", "leads.fields.name", "is empty"),
        ('[leads.fields]\nname = { template = "{a" }', "leads.fields.name.template", "not well formed"),
        ('[leads.fields]\nname = { template = "no fields" }', "leads.fields.name.template", "names no field"),
        ("[leads.fields]\nname = { value = 1.5 }", "leads.fields.name.value", "text, an integer or true/false"),
        ('[leads.fields]\na.b = { value = "x" }\n"a.b" = { value = "y" }', "leads.fields", "given twice"),
        ('[leads.fields]\naddress.street = "x"', 'leads.fields."address.street"', 'e.g. { from = "x" }'),
        ("[servicetitan]\ntenant_idd = 3", "servicetitan.tenant_idd", "unknown key 'tenant_idd' (did you mean 'tenant_id'?)"),
        ('[servicetitan]\ntenant_id = "abc"', "servicetitan.tenant_id", "must be an integer"),
        ("[servicetitan]\ntenant_id = true", "servicetitan.tenant_id", "must be an integer"),
        ("[servicetitan]\ntenant_id = 0", "servicetitan.tenant_id", "greater than or equal to 1"),
        ('[servicetitan]\nenvironment = "prod"', "servicetitan.environment", "unknown value 'prod'"),
        ('[servicetitan]\napi_url = "ftp://x"', "servicetitan.api_url", "http(s) URL"),
        ("[servicetitan]\npage_size = 5001", "servicetitan.page_size", "less than or equal to 5000"),
        ('[referral_factory]\ncampaign = 7', "referral_factory.campaign", "did you mean 'campaign_id'"),
        ("[lead]\n", "lead", "unknown key 'lead' (did you mean 'leads'?)"),
        ("leads = 3", "leads", "must be a table"),
        ('[leads]\naction = "create"', "leads.action", "did you mean 'create_booking'"),
        (
            '[leads.qualification]\nrule = "job_status"\njob_status = "completed"',
            "leads.qualification.job_status",
            "did you mean 'Completed'",
        ),
        ('[leads.qualification]\nunqualify_on = ["job_cancelled"]', "leads.qualification.unqualify_on[0]", "job_canceled"),
        (
            '[customer_sync.return_fields]\n"Referral Link" = "referal_link"',
            'customer_sync.return_fields."Referral Link"',
            "did you mean 'referral_link'",
        ),
        ('[customer_sync]\ninclude_inactive = "yes"', "customer_sync.include_inactive", "true or false"),
        ('[customer_sync]\nmode = "ongoin"', "customer_sync.mode", "did you mean 'ongoing'"),
        ("[limits]\nworkers = 0", "limits.workers", "greater than or equal to 1"),
        ('[webhook]\naliases = { referral_code = "code" }', "webhook.aliases.referral_code", "must be a list"),
        ('[webhook]\ntrusted_proxy = "proxy.local"', "webhook.trusted_proxy", "the reverse proxy's IP address"),
        ("[webhook]\nmax_connections = 0", "webhook.max_connections", "greater than or equal to 1"),
    ],
)
def test_schema_errors_name_the_key_path(text, key_path, message):
    with pytest.raises(ConfigSchemaError) as caught:
        parse_config_text(text, path=Path("conf.toml"))
    error = caught.value
    assert error.key_path == key_path
    assert error.exit_code == 3
    assert str(error).startswith(f"{key_path}: ")
    assert message in str(error)
    assert error.hint == "fix it in conf.toml"


def test_every_problem_is_listed():
    with pytest.raises(ConfigSchemaError) as caught:
        parse_config_text('[servicetitan]\nenvironment = "x"\n[limits]\nworkers = "many"')
    keys = [key for key, _ in caught.value.problems]
    assert keys == ["servicetitan.environment", "limits.workers"]
    assert "also limits.workers: must be an integer" in str(caught.value)


def test_syntax_error_has_file_line_and_column(tmp_path):
    path = tmp_path / "config.toml"
    path.write_text('[servicetitan]\ntenant_id = 1\nclient_id = cid\n')
    with pytest.raises(ConfigSyntaxError) as caught:
        load_config(path)
    error = caught.value
    assert (error.line, error.column) == (3, 13)
    assert str(error).startswith(f"{path}:3:13: TOML syntax error: Invalid value")
    assert error.exit_code == 3 and error.key_path is None


def test_syntax_error_at_end_of_file_still_has_a_line(tmp_path):
    path = tmp_path / "config.toml"
    path.write_text("[limits]\nworkers = [\n")
    with pytest.raises(ConfigSyntaxError) as caught:
        load_config(path)
    assert caught.value.line == 3 and caught.value.column == 1
    assert "at the end of the file" in str(caught.value)


def test_duplicate_section_is_a_syntax_error():
    with pytest.raises(ConfigSyntaxError, match=r"<config>:3:\d+: .*twice"):
        parse_config_text("[limits]\nworkers = 1\n[limits]\n")


def test_missing_file_points_at_connect(tmp_path):
    with pytest.raises(ConfigError) as caught:
        load_config(tmp_path / "nope.toml")
    assert "no config file" in str(caught.value) and "stsync connect" in caught.value.hint


def test_directory_and_binary_files_are_config_errors(tmp_path):
    with pytest.raises(ConfigError, match="is a directory"):
        load_config(tmp_path)
    binary = tmp_path / "bin.toml"
    binary.write_bytes(b"a = '\xff\xfe'")
    with pytest.raises(ConfigError, match="not UTF-8"):
        load_config(binary)


# -- endpoints -----------------------------------------------------------------------------
def test_endpoints_follow_the_environment():
    production = resolve_endpoints(default_config())
    assert (production.st_auth_url, production.st_api_url, production.rf_api_url) == (
        "https://auth.servicetitan.io",
        "https://api.servicetitan.io",
        "https://referral-factory.com/api/v2",
    )
    integration = resolve_endpoints(default_config(environment="integration"))
    assert (integration.st_auth_url, integration.st_api_url) == (
        "https://auth-integration.servicetitan.io",
        "https://api-integration.servicetitan.io",
    )


def test_config_overrides_and_env_wins(monkeypatch):
    config = parse_config_text(
        '[servicetitan]\nauth_url = "http://127.0.0.1:9/auth/"\napi_url = "http://127.0.0.1:9/st"\n'
        '[referral_factory]\napi_url = "http://127.0.0.1:9/rf/api/v2/"'
    )
    endpoints = resolve_endpoints(config)
    assert (endpoints.st_auth_url, endpoints.st_api_url, endpoints.rf_api_url) == (
        "http://127.0.0.1:9/auth",
        "http://127.0.0.1:9/st",
        "http://127.0.0.1:9/rf/api/v2",
    )
    monkeypatch.setenv("STSYNC_ST_AUTH_URL", "http://localhost:1/")
    monkeypatch.setenv("STSYNC_ST_API_URL", "http://localhost:2")
    monkeypatch.setenv("STSYNC_RF_API_URL", "http://localhost:3/api/v2/")
    endpoints = resolve_endpoints(config)
    assert (endpoints.st_auth_url, endpoints.st_api_url, endpoints.rf_api_url) == (
        "http://localhost:1",
        "http://localhost:2",
        "http://localhost:3/api/v2",
    )


def test_key_paths_quote_what_toml_would():
    assert format_key_path(("leads", "fields", "name")) == "leads.fields.name"
    assert format_key_path(("leads", "fields", "address.street")) == 'leads.fields."address.street"'
    assert format_key_path(("leads", "qualification", "unqualify_on", 2)) == "leads.qualification.unqualify_on[2]"


# -- property: round trip and invalid mutations --------------------------------------------
toml_text = st.text(st.characters(exclude_categories=("Cs",)), max_size=12)
names = st.text(st.characters(exclude_categories=("Cs",)), min_size=1, max_size=12)
ids = st.integers(min_value=1, max_value=2**63 - 1)
field_names = st.from_regex(r"[a-z_]{1,8}(\.[A-Za-z ]{1,8})?", fullmatch=True)
plain = st.text(st.characters(exclude_categories=("Cs",), exclude_characters="{}"), max_size=6)
templates = st.builds(lambda before, name, after: f"{before}{{{name}}}{after}", plain, field_names, plain)
spec_tables = st.one_of(
    st.builds(lambda v: {"from": v}, names),
    st.builds(lambda v: {"value": v}, st.one_of(toml_text, st.booleans(), st.integers(-(2**63), 2**63 - 1))),
    st.builds(lambda v: {"select": v}, names),
    st.builds(lambda v: {"template": v}, templates),
)
field_tables = st.dictionaries(names, spec_tables, max_size=5)
urls = st.sampled_from([None, "http://127.0.0.1:8080", "https://example.com/api/v2", "http://[::1]:9/x"])


def _optional(**entries):
    """Drop keys whose value is None (TOML has no null)."""
    return {key: value for key, value in entries.items() if value is not None}


config_documents = st.builds(
    lambda st_, rf, leads, qualification, referrers, sync, limits, aliases: {
        "servicetitan": st_,
        "referral_factory": rf,
        "leads": {**leads, "qualification": qualification},
        "referrers": referrers,
        "customer_sync": sync,
        "limits": limits,
        "webhook": {"aliases": aliases},
    },
    st.builds(
        lambda env, tenant, client, bp, auth, api, page: _optional(
            environment=env, tenant_id=tenant, client_id=client, booking_provider=bp, auth_url=auth, api_url=api, page_size=page
        ),
        st.sampled_from(ENVIRONMENTS),
        st.none() | ids,
        st.none() | toml_text,
        st.none() | ids,
        urls,
        urls,
        st.integers(1, 5000),
    ),
    st.builds(lambda campaign, api: _optional(campaign_id=campaign, api_url=api), st.none() | ids, urls),
    st.builds(lambda action, fields: {"action": action, "fields": fields}, st.sampled_from(ACTIONS), field_tables),
    st.builds(
        lambda rule, status, events: _optional(rule=rule, job_status=status, unqualify_on=events),
        st.sampled_from(QUALIFICATION_RULES),
        st.none() | st.sampled_from(JOB_STATUSES),
        st.lists(st.sampled_from(UNQUALIFY_EVENTS), max_size=2, unique=True),
    ),
    st.builds(lambda action, fields: {"action": action, "fields": fields}, st.sampled_from(ACTIONS), field_tables),
    st.builds(
        lambda mode, inactive, fields, returns: {"mode": mode, "include_inactive": inactive, "fields": fields, "return_fields": returns},
        st.sampled_from(SYNC_MODES),
        st.booleans(),
        field_tables,
        st.dictionaries(names, st.sampled_from(RETURN_FIELD_VALUES), max_size=3),
    ),
    st.fixed_dictionaries(
        {
            "servicetitan_per_second": st.integers(1, 1000),
            "referral_factory_per_minute": st.integers(1, 10_000),
            "retry_budget_seconds": st.integers(0, 3600),
            "workers": st.integers(1, 64),
        }
    ),
    st.dictionaries(names, st.lists(names, max_size=3), max_size=3),
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(document=config_documents)
def test_valid_configs_survive_save_and_load_unchanged(tmp_path, document):
    config = parse_config(document)
    path = tmp_path / "roundtrip.toml"
    save_config(config, path)
    loaded = load_config(path)
    assert loaded == config
    assert list(loaded.leads.fields) == list(config.leads.fields)  # order is part of the mapping
    assert render_config(loaded) == path.read_text(encoding="utf-8")


# Each mutation: (how to break a valid document, the key path the error must name).
_TYPED_SCALARS = [
    (("servicetitan", "tenant_id"), "int"),
    (("servicetitan", "booking_provider"), "int"),
    (("servicetitan", "page_size"), "int"),
    (("referral_factory", "campaign_id"), "int"),
    (("limits", "workers"), "int"),
    (("limits", "retry_budget_seconds"), "int"),
    (("servicetitan", "client_id"), "str"),
    (("customer_sync", "include_inactive"), "bool"),
]
_ENUMS = [
    (("servicetitan", "environment"), ENVIRONMENTS),
    (("leads", "action"), ACTIONS),
    (("referrers", "action"), ACTIONS),
    (("leads", "qualification", "rule"), QUALIFICATION_RULES),
    (("leads", "qualification", "job_status"), JOB_STATUSES),
    (("customer_sync", "mode"), SYNC_MODES),
]
_SECTIONS = [
    ("servicetitan",),
    ("referral_factory",),
    ("leads",),
    ("leads", "qualification"),
    ("referrers",),
    ("customer_sync",),
    ("limits",),
    ("webhook",),
    (),
]
_WRONG_FOR = {
    "int": st.one_of(st.booleans(), st.floats(allow_nan=False, allow_infinity=False), st.from_regex(r"[a-z][a-z0-9 ]{0,5}", fullmatch=True), st.lists(st.integers(), max_size=2)),
    "str": st.one_of(st.integers(), st.booleans(), st.lists(st.text(max_size=3), max_size=2)),
    "bool": st.one_of(st.integers(), st.text(max_size=5), st.floats(allow_nan=False, allow_infinity=False)),
}


def _set(document: dict, where: tuple[str, ...], value) -> None:
    table = document
    for part in where[:-1]:
        table = table.setdefault(part, {})
    table[where[-1]] = value


@st.composite
def broken_documents(draw):
    document = draw(config_documents)
    mutation = draw(st.sampled_from(["wrong_type", "bad_enum", "unknown_key", "bad_kind", "bad_return_value"]))
    if mutation == "wrong_type":
        where, kind = draw(st.sampled_from(_TYPED_SCALARS))
        _set(document, where, draw(_WRONG_FOR[kind]))
        return document, format_key_path(where)
    if mutation == "bad_enum":
        where, allowed = draw(st.sampled_from(_ENUMS))
        _set(document, where, draw(names.filter(lambda v: v not in allowed)))
        return document, format_key_path(where)
    if mutation == "unknown_key":
        section = draw(st.sampled_from(_SECTIONS))
        table = document
        for part in section:
            table = table[part]
        key = draw(names.filter(lambda k: k not in table))
        table[key] = draw(st.one_of(st.integers(), toml_text))
        return document, format_key_path((*section, key))
    if mutation == "bad_kind":
        section = draw(st.sampled_from([("leads", "fields"), ("referrers", "fields"), ("customer_sync", "fields")]))
        # `custom = { x = "y" }` is the TOML document `custom.x = "y"`: under an always-dotted
        # prefix the error rightly names the dotted target "custom.x", so such names are not
        # the single-target case this mutation checks.
        target = draw(names.filter(lambda n: n not in DOTTED_PREFIXES))
        kind = draw(names.filter(lambda k: k not in ("from", "value", "select", "template")))
        table = document[section[0]][section[1]]
        table[target] = {kind: draw(names)}
        return document, format_key_path((*section, target))
    target = draw(names)
    document["customer_sync"]["return_fields"][target] = draw(names.filter(lambda v: v not in RETURN_FIELD_VALUES))
    return document, format_key_path(("customer_sync", "return_fields", target))


@settings(max_examples=150, deadline=None)
@given(case=broken_documents())
def test_invalid_configs_always_give_a_key_path_never_a_traceback(case):
    document, key_path = case
    text = tomli_w.dumps(document)  # through the real file path: TOML text → load
    with pytest.raises(ConfigSchemaError) as caught:
        parse_config_text(text, path=Path("c.toml"))
    error = caught.value
    assert error.key_path == key_path
    assert str(error).startswith(f"{key_path}: ")
    assert len(str(error).split("\n")[0]) > len(key_path) + 2  # a message, not only the place


toml_scalars = st.one_of(toml_text, st.booleans(), st.integers(-(2**63), 2**63 - 1), st.floats(allow_nan=False))
toml_values = st.recursive(
    toml_scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(names, inner, max_size=3)),
    max_leaves=8,
)
section_names = st.sampled_from(["servicetitan", "referral_factory", "leads", "referrers", "customer_sync", "limits", "webhook"])


@settings(max_examples=150, deadline=None)
@given(
    document=st.dictionaries(
        st.one_of(section_names, names),
        st.one_of(
            toml_values,
            st.dictionaries(
                st.sampled_from(["fields", "qualification", "action", "environment", "tenant_id", "aliases", "mode", "workers"]) | names,
                toml_values,
                max_size=4,
            ),
        ),
        max_size=4,
    )
)
def test_any_toml_document_gives_a_config_or_a_config_error(document):
    try:
        config = parse_config_text(tomli_w.dumps(document))
    except ConfigSchemaError as error:
        assert error.problems and all(message for _, message in error.problems)
    else:
        assert isinstance(config, Config)


# -- secrets never in the file; the connection's name; limits ---------------------------------


@pytest.mark.parametrize(
    ("text", "key_path"),
    [
        ('[servicetitan]\nclient_secret = "cs2.do-not-echo-1"\n', "servicetitan.client_secret"),
        ('[servicetitan]\napp_key = "ak1.do-not-echo-1"\n', "servicetitan.app_key"),
        ('[referral_factory]\napi_key = "rf-do-not-echo-1"\n', "referral_factory.api_key"),
        ('st_client_secret = "cs2.do-not-echo-1"\n', "st_client_secret"),
        ('[secrets]\nrf_api_key = "rf-do-not-echo-1"\n', "secrets.rf_api_key"),
        ('[webhook]\ntoken = "tok-do-not-echo-1"\n', "webhook.token"),
    ],
)
def test_a_secret_in_the_config_is_refused_without_repeating_it(text, key_path):
    with pytest.raises(ConfigSchemaError) as caught:
        parse_config_text(text)
    assert str(caught.value) == f"{key_path}: secrets never go in the config — use `stsync connect`"
    assert caught.value.key_path == key_path and caught.value.exit_code == 3
    assert "do-not-echo" not in str(caught.value) + str(caught.value.hint) + str(caught.value.to_dict())


def test_the_connection_name_and_the_secret_store_are_config_keys():
    config = parse_config_text('connection = "acme-hvac"\n[secrets]\nstore = "file"\n')
    assert config.connection == "acme-hvac" and config.secrets.store == "file"
    assert parse_config_text("").secrets.store == "keyring"
    with pytest.raises(ConfigSchemaError, match=r"connection: '\.\./x' is not a connection name"):
        parse_config_text('connection = "../x"\n')
    with pytest.raises(ConfigSchemaError, match="secrets.store: unknown value 'vault'"):
        parse_config_text('[secrets]\nstore = "vault"\n')


def test_limits_above_what_the_services_document_warn():
    from stsync.storage.config import limit_warnings

    assert limit_warnings(default_config()) == []
    config = parse_config_text("[limits]\nservicetitan_per_second = 6000\nreferral_factory_per_minute = 601\n")
    warnings = limit_warnings(config)
    assert len(warnings) == 2
    assert "servicetitan_per_second = 6000 is above ServiceTitan's documented 60 calls per second" in warnings[0]
    assert "referral_factory_per_minute = 601" in warnings[1] and "blocked" in warnings[1]


def test_the_generated_config_names_no_document_sections():
    for config in (default_config(), default_config(**EXAMPLE_IDENTITY)):
        text = render_config(config)
        assert "§" not in text and "SPEC" not in text


@pytest.mark.parametrize(("given", "kept"), [("127.0.0.1", "127.0.0.1"), (" ::1 ", "::1"), ("*", "*")])
def test_the_trusted_proxy_is_an_ip_address_or_a_star(given, kept):
    config = parse_config_text(f'[webhook]\ntrusted_proxy = "{given}"', path=Path("conf.toml"))
    assert config.webhook.trusted_proxy == kept
    assert (config.webhook.max_connections, config.webhook.workers) == (1000, 4)
