"""The secret-leak scan (SPEC §6.6): secrets never appear in output, logs, exceptions, config,
ledger or bundles.

Every command runs with the sandbox's distinctive credentials — plain, with ``-vv`` (HTTP
traffic in the log and on stderr) and with ``--json`` — through successes and failures: a
lead that cannot be sent, a wrong Booking Provider Value, a client secret rotated under
stsync's feet, tokens expired mid-run. After each command its stdout and stderr are searched,
and at checkpoints every file under the test's own HOME, config and state dirs: the log
files, the config, the ledger (the raw bytes of the SQLite file and its WAL), lock and rate
files, the diagnose bundles.

A hit is any 12 consecutive characters of a secret (a truncated secret is still a leak).
Secrets are the ServiceTitan client secret and app key, the Referral Factory API key, every
access token the sandbox issued, and a wrong secret a user typed. The only places allowed
to hold them: the keyring, the secrets file when the file store was chosen (0600), and the
token cache (0600; tokens only). After `disconnect` not even those.

Redaction keeps a process-wide list of secrets; each in-process run starts from an empty one
(as a new process would), so a value the command forgot to register is not hidden by an
earlier run. A few runs go through a real process as well.
"""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest

from stsync.storage.config import load_config
from stsync.storage.config_writer import save_config
from stsync.storage.paths import ConnectionPaths

WINDOW = 12  # characters of a secret that count as a leak
RF_PER_MINUTE = 60_000
ST_PER_SECOND = 1_000


class SecretScan:
    """The secrets a test knows, and where pieces of them turn up."""

    def __init__(self, sb, root: Path) -> None:
        self.sb = sb
        self.root = root
        creds = sb.credentials
        self.secrets: dict[str, str] = {
            "ServiceTitan client secret": creds.client_secret,
            "ServiceTitan app key": creds.app_key,
            "Referral Factory API key": creds.rf_api_key,
        }
        self.tokens: set[str] = set()
        self.leaks: list[str] = []
        self.runs = 0

    def add_secret(self, label: str, value: str) -> None:
        self.secrets[label] = value

    def collect_tokens(self) -> None:
        """Every access token the sandbox issued so far (a token is a secret too)."""
        with self.sb.st.lock:
            self.tokens |= set(self.sb.st.tokens)

    def _needles(self, *, secrets: bool = True, tokens: bool = True) -> dict[str, list[str]]:
        needles: dict[str, list[str]] = {}
        if secrets:
            for label, value in self.secrets.items():
                needles[label] = [value[i : i + WINDOW] for i in range(len(value) - WINDOW + 1)]
        if tokens:
            for token in self.tokens:
                # header.payload.signature: the header is the same for every token and the
                # payload names the client and tenant; the signature part is the secret.
                signature = token.rsplit(".", 1)[-1]
                needles[f"access token …{signature[-4:]}"] = [signature[i : i + WINDOW] for i in range(len(signature) - WINDOW + 1)]
        return needles

    def found(self, text: str, *, secrets: bool = True, tokens: bool = True) -> list[str]:
        return [label for label, pieces in self._needles(secrets=secrets, tokens=tokens).items() if any(p in text for p in pieces)]

    def check_output(self, what: str, result) -> None:
        self.collect_tokens()
        self.runs += 1
        for stream, text in (("stdout", result.stdout), ("stderr", result.stderr)):
            for label in self.found(text):
                self.leaks.append(f"{label} in the {stream} of `{what}`")

    def check_files(self, when: str, *, allowed: dict[Path, str]) -> list[Path]:
        """Every file under the test's root; ``allowed`` maps a file to what it may hold
        ("secrets" or "tokens"). Returns the files read."""
        self.collect_tokens()
        read: list[Path] = []
        for path in sorted(p for p in self.root.rglob("*") if p.is_file()):
            text = path.read_bytes().decode("latin-1")  # byte for byte: SQLite pages included
            may_hold = allowed.get(path)
            for label in self.found(text, secrets=may_hold != "secrets", tokens=may_hold != "tokens"):
                self.leaks.append(f"{label} in {path.relative_to(self.root)} ({when})")
            read.append(path)
        return read

    def assert_clean(self) -> None:
        assert self.leaks == [], "secrets leaked:\n" + "\n".join(self.leaks)


@pytest.fixture
def fresh_redaction(monkeypatch):
    """Before each in-process run: redaction knows no secret yet, as in a new process."""
    import stsync.logs

    def reset() -> None:
        monkeypatch.setattr(stsync.logs, "_secrets", set())

    return reset


@pytest.fixture
def sandbox_env(make_sandbox, monkeypatch):
    """The sandbox, its limits scaled up so a sync of its customers takes a moment."""
    sb = make_sandbox(customers=24, rf_per_minute=RF_PER_MINUTE, st_per_second=ST_PER_SECOND)
    for name, value in sb.env().items():
        monkeypatch.setenv(name, value)
    return sb


@pytest.fixture
def scan(sandbox_env, isolated) -> SecretScan:
    return SecretScan(sandbox_env, isolated)


def scale_limits(isolated: Path) -> None:
    config = load_config(isolated / "config.toml")
    config.limits.referral_factory_per_minute = RF_PER_MINUTE
    config.limits.servicetitan_per_second = ST_PER_SECOND
    save_config(config, isolated / "config.toml")


@pytest.fixture
def run(cli, scan, fresh_redaction):
    """The CLI in-process; its output is scanned. Returns the result."""

    def run_command(*args: str, expect: int | None = 0):
        fresh_redaction()
        result = cli(*args)
        if expect is not None:
            assert result.exit_code == expect, f"`{' '.join(map(str, args))}`: {result}"
        assert "Traceback" not in result.stderr, str(result)
        scan.check_output(" ".join(map(str, args)), result)
        return result

    return run_command


@pytest.fixture
def run_process(cli_subprocess, scan):
    def run_command(*args: str, expect: int = 0):
        result = cli_subprocess(*args, timeout=60)
        assert result.exit_code == expect, f"`{' '.join(map(str, args))}`: {result}"
        assert "Traceback" not in result.stderr, str(result)
        scan.check_output("(process) " + " ".join(map(str, args)), result)
        return result

    return run_command


def paths_of(isolated: Path) -> ConnectionPaths:
    return ConnectionPaths.for_config(isolated / "config.toml")


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def keyring_file() -> Path:
    return Path(os.environ["STSYNC_TEST_KEYRING"])


def set_booking_provider(isolated: Path, value: int) -> None:
    config = load_config(isolated / "config.toml")
    config.servicetitan.booking_provider = value
    save_config(config, isolated / "config.toml")


def test_the_scan_finds_a_truncated_secret_wherever_it_is(sandbox_env, scan, isolated):
    """The scan itself can fail: 12 characters of a secret in output or in any file is a hit."""
    secret = sandbox_env.credentials.client_secret
    token = "eyJhbGciOiJSUzI1NiJ9.eyJ0ZW5hbnQiOiIxIn0.Zm9vYmFyYmF6cXV4cXV1eGNvcmdlZ3JhdWx0"
    scan.tokens.add(token)
    (isolated / "state").mkdir(exist_ok=True)
    (isolated / "state" / "notes.log").write_bytes(b"\x00\x01 client secret " + secret[5:17].encode() + b"\xff")
    (isolated / "token-cache.json").write_text(token)

    class Result:
        stdout = f"secret: {secret[:10]}…"  # 10 characters: below the window, not a hit
        stderr = f"│ {secret[20:33]} │"

    scan.check_output("a leaky command", Result())
    scan.check_files("self-test", allowed={isolated / "token-cache.json": "tokens"})
    assert scan.leaks == [
        "ServiceTitan client secret in the stderr of `a leaky command`",
        "ServiceTitan client secret in state/notes.log (self-test)",
    ]


# --------------------------------------------------------------------------------------
# Every command, with the file store
# --------------------------------------------------------------------------------------
def test_no_command_leaks_a_secret_with_the_file_store(sandbox_env, scan, run, run_process, isolated, tmp_path):
    sb = sandbox_env
    paths = paths_of(isolated)
    connect = [*sb.connect_args(), "--secrets-store", "file"]

    # connect, with a wrong secret first (a typed secret is a secret even when wrong).
    wrong = "cs2.WRONGf00dfeedbeef0123456789abcdef"
    scan.add_secret("a wrong client secret typed by the user", wrong)
    wrong_args = list(connect)
    wrong_args[wrong_args.index("--client-secret") + 1] = wrong
    run("-vv", *wrong_args, expect=4)
    run("--json", *wrong_args, expect=4)
    run("-vv", *connect)
    run("--json", *connect)
    scale_limits(isolated)
    allowed = {paths.secrets_file: "secrets", paths.token_cache: "tokens"}
    assert paths.secrets_file.exists() and mode(paths.secrets_file) == 0o600
    assert scan.found(paths.secrets_file.read_text(), tokens=False), "the file store holds the secrets"

    # mapping and validation
    run("-vv", "map", "show")
    run("--json", "map", "show", "--for", "customers")
    run("-vv", "validate", "--online")
    run("--json", "validate", "--online")

    # push-lead: dry run, for real, a lead that cannot be sent
    run("-vv", "push-lead", "--new", "--dry-run")
    run("--json", "push-lead", "--new", "--dry-run")
    run("-vv", "push-lead", "--new")
    run("--json", "push-lead", "--email", "jane.doe@example.com", "--first-name", "Jane", "--referral-code", "leakTest1")
    run("-vv", "push-lead", "--email", "bob@localhost", "--first-name", "Bob", "--referral-code", "leakTest2", expect=5)
    run("--json", "push-lead", "--email", "bob@localhost", "--first-name", "Bob", "--referral-code", "leakTest2", expect=5)
    assert paths.token_cache.exists() and mode(paths.token_cache) == 0o600
    assert scan.found(paths.token_cache.read_text(), secrets=False), "the token cache holds the current token"

    # A wrong Booking Provider Value: ServiceTitan refuses (404), stsync explains.
    set_booking_provider(isolated, 7)
    run("-vv", "push-lead", "--email", "carl@example.com", "--first-name", "Carl", "--referral-code", "leakTest3", expect=4)
    run("--json", "diagnose", expect=None)
    set_booking_provider(isolated, sb.credentials.booking_provider)

    # sync-customers
    run("-vv", "sync-customers", "--once")
    run("--json", "sync-customers", "--ongoing", "--dry-run")
    run("--json", "sync-customers", "--ongoing")

    # qualify, with every token dead mid-way (401 → a new token)
    run("map", "qualify", "job-created")
    sb.convert_booking_to_job(sb.bookings()[0]["id"])
    scan.collect_tokens()
    sb.expire_tokens()
    run("-vv", "qualify", "--dry-run")
    run("-vv", "qualify")
    run("--json", "qualify")

    # report: from the ledger, refreshed, as a page and a spreadsheet
    run("-vv", "report", "--refresh", "--html", tmp_path / "report.html", "--csv", tmp_path / "report.csv")
    run("--json", "report", "--by", "referrer")

    # history and diagnose, with bundles
    lead_email = sb.rf_users(campaign_id=sb.credentials.campaign_id, type="person_invited")[0]["email"]
    run("-vv", "history")
    run("--json", "history", "--email", lead_email)
    run("--json", "history", "--failed")
    run("-vv", "diagnose", expect=None)
    run("--json", "diagnose", "--email", lead_email, expect=None)
    run("-vv", "diagnose", "--email", "bob@localhost", expect=None)
    run("-vv", "diagnose", "--bundle", tmp_path / "support-1", expect=None)
    run("--json", "diagnose", "--email", lead_email, "--bundle", f"{tmp_path}/bundles/", expect=None)
    # status (its JSON and its Prometheus textfile) and JSON logs
    run("-vv", "status", expect=None)
    run("--json", "status", "--prometheus", tmp_path / "stsync.prom", expect=None)
    run("--log-format", "json", "-vv", "push-lead", "--new")
    bundles = sorted(tmp_path.glob("support-1.*")) + sorted((tmp_path / "bundles").glob("*"))
    assert {p.suffix for p in bundles} == {".md", ".json"} and len(bundles) == 4, bundles
    read = scan.check_files("after the tour", allowed=allowed)
    assert set(bundles) <= set(read) and tmp_path / "stsync.prom" in read
    assert paths.log_file in read and paths.ledger in read and (isolated / "config.toml") in read
    assert "POST /crm/v2/tenant/" in paths.log_file.read_text(), "-vv logs the HTTP traffic"

    # The client secret is rotated in ServiceTitan: stsync fails with exit 4, then reconnects.
    scan.add_secret("the rotated client secret", sb.rotate_client_secret())
    sb.expire_tokens()
    run("-vv", "validate", "--online", expect=4)
    run("--json", "push-lead", "--email", "erin@example.com", "--first-name", "Erin", "--referral-code", "leakTest5", expect=4)
    run("-vv", "diagnose", "--bundle", tmp_path / "support-2", expect=None)
    run_process("-vv", "sync-customers", "--once", expect=4)
    reconnect = list(connect)
    reconnect[reconnect.index("--client-secret") + 1] = scan.secrets["the rotated client secret"]
    run("-vv", *reconnect)
    run("-vv", "sync-customers", "--ongoing")
    scan.check_files("after the rotation", allowed=allowed)

    # disconnect: the secrets and the token leave the secret stores; nowhere may hold them now.
    run("-vv", "disconnect", "--yes")
    run("--json", "history")
    scan.check_files("after disconnect", allowed={})
    assert scan.runs >= 35  # the tour ran
    scan.assert_clean()


# --------------------------------------------------------------------------------------
# The keyring, and secrets from the environment
# --------------------------------------------------------------------------------------
def test_no_secret_leaves_the_keyring_or_the_environment(sandbox_env, scan, run, run_process, isolated, tmp_path, monkeypatch):
    sb = sandbox_env
    paths = paths_of(isolated)
    run("-vv", *sb.connect_args())
    scale_limits(isolated)
    assert not paths.secrets_file.exists(), "the keyring was chosen: no secrets file"
    assert scan.found(keyring_file().read_text(), tokens=False), "the keyring holds the secrets"
    allowed = {keyring_file(): "secrets", paths.token_cache: "tokens"}

    run("-vv", "push-lead", "--new")
    run("--json", "sync-customers", "--once")
    run("-vv", "push-lead", "--email", "dana@example.com", "--first-name", "Dana", "--referral-code", "leakTest4")
    run("-vv", "diagnose", "--bundle", tmp_path / "support-keyring", expect=None)
    scan.check_files("keyring store", allowed=allowed)

    # The same secrets from the environment (cron without a keyring): nothing prints them.
    for name, value in sb.secret_env().items():
        monkeypatch.setenv(name, value)
    run("-vv", "validate", "--online")
    run("--json", "diagnose", "--bundle", tmp_path / "support-env", expect=None)
    run_process("-vv", "qualify")
    scan.check_files("secrets from the environment", allowed=allowed)

    run("-vv", "disconnect", "--yes")
    for name in sb.secret_env():
        monkeypatch.delenv(name)
    assert scan.found(keyring_file().read_text()) == [], "disconnect emptied the keyring"
    scan.check_files("after disconnect", allowed={})
    scan.assert_clean()
    # The bundle says where each secret came from — and nothing more.
    bundle = json.loads((tmp_path / "support-env.json").read_text())
    assert set(bundle["secrets"]["sources"].values()) == {"env"}, bundle["secrets"]
