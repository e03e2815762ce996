"""The real OS keyring end to end: the CLI against the sandbox with its secrets in a real Secret
Service (gnome-keyring on a private D-Bus session), not the file-backed test keyring.

Every other test runs with ``PYTHON_KEYRING_BACKEND=isolated_keyring.FileKeyring``
(tests/conftest.py). Here the CLI runs in child processes without it (nor
``STSYNC_TEST_KEYRING``), so ``keyring`` picks its SecretService backend and talks D-Bus to a
``gnome-keyring-daemon`` started inside ``dbus-run-session``. The daemon has its own HOME and
XDG_RUNTIME_DIR under tmp_path, so the machine's own keyring is never found or unlocked, and no
DISPLAY, so an unlock prompt fails at once instead of opening a window.

- ``connect`` stores the three secrets in the keyring (another client, secret-tool, reads them
  back) and nowhere else: not in the config, the log, the ledger, locks, the token cache or any
  output;
- the everyday commands read them from there (diagnose says so; a key replaced in the keyring
  by hand is the one the next run uses);
- a locked collection: exit 3 and an error naming the fix, and that fix works.

Needs the Debian/Ubuntu packages dbus, gnome-keyring and libsecret-tools: `.ci/run` installs
them; where they are absent the tests skip and say what to install.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from stsync_fixtures import CliResult

NEEDED = {"dbus-run-session": "dbus", "gnome-keyring-daemon": "gnome-keyring", "secret-tool": "libsecret-tools"}
MISSING = sorted({package for tool, package in NEEDED.items() if shutil.which(tool) is None})

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(not sys.platform.startswith("linux"), reason="a Secret Service over D-Bus is Linux's OS keyring"),
    pytest.mark.skipif(
        bool(MISSING),
        reason=f"no Secret Service to test against: install {' '.join(MISSING)} "
        f"(sudo apt-get install --no-install-recommends {' '.join(MISSING)}), as .ci/run does",
    ),
]

PASSWORD = "stsync-test-login"  # the throwaway login keyring's password
SECRETS_BUS_NAME = "org.freedesktop.secrets"
CONNECTION = "default"  # STSYNC_CONFIG=<tmp>/config.toml is the default connection
WINDOW = 12  # consecutive characters of a secret that count as a leak (as in test_secret_leaks)
# What must not reach the Secret Service's session: the developer's own desktop and keyring.
NOT_PASSED_ON = ("DISPLAY", "WAYLAND_DISPLAY", "GNOME_KEYRING_CONTROL", "DBUS_SESSION_BUS_ADDRESS", "SSH_AUTH_SOCK")
# The hermetic fixture's file-backed keyring, which this test deliberately does not use.
TEST_KEYRING_HOOK = ("PYTHON_KEYRING_BACKEND", "STSYNC_TEST_KEYRING")


class SecretService:
    """A gnome-keyring-daemon on its own D-Bus session, for one test.

    ``dbus-run-session`` runs a shell that starts the daemon (unlocking, or creating, the login
    keyring with PASSWORD unless ``unlocked=False``), prints the bus address and waits on its
    stdin; closing stdin ends the session, and the daemon exits with its bus.
    """

    def __init__(self, home: Path, *, unlocked: bool) -> None:
        self.home = home
        home.mkdir(parents=True, exist_ok=True)
        # Short: the daemon's control socket goes in here, and a socket path has ~108 bytes.
        self.runtime = Path(tempfile.mkdtemp(prefix="stsync-keyring-"))
        self.session_env = {k: v for k, v in os.environ.items() if k not in NOT_PASSED_ON + TEST_KEYRING_HOOK}
        self.session_env.update(
            HOME=str(home),
            XDG_DATA_HOME=str(home / "data"),  # the daemon's keyrings/login.keyring
            XDG_CONFIG_HOME=str(home / "config"),
            XDG_RUNTIME_DIR=str(self.runtime),  # its control socket: never the desktop's daemon
            KEYRING_PASSWORD=PASSWORD,
        )
        start = (
            'printf %s "$KEYRING_PASSWORD" | gnome-keyring-daemon --unlock --components=secrets'
            if unlocked
            else "gnome-keyring-daemon --start --components=secrets"
        )
        self.log = home / "session.log"
        with self.log.open("w") as log:
            self.process = subprocess.Popen(
                ["dbus-run-session", "--", "sh", "-c", f'{start} >/dev/null && echo "$DBUS_SESSION_BUS_ADDRESS" && exec cat >/dev/null'],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log, env=self.session_env, text=True,
            )  # fmt: skip
        self.address = self.process.stdout.readline().strip()
        self.daemons: set[int] = set()
        if not self.address:
            self.close()
            raise AssertionError(f"the Secret Service did not start:\n{self.log.read_text()}")
        self.wait_for_new_daemon()

    # -- the session --------------------------------------------------------------------
    def _connection(self):
        from jeepney.io.blocking import open_dbus_connection

        return open_dbus_connection(bus=self.address)

    def owner_pid(self) -> int | None:
        """The process that owns org.freedesktop.secrets on this bus (None: no owner yet)."""
        from jeepney import MessageType
        from jeepney.bus_messages import message_bus

        with self._connection() as connection:
            reply = connection.send_and_get_reply(message_bus.GetConnectionUnixProcessID(SECRETS_BUS_NAME))
        return None if reply.header.message_type == MessageType.error else int(reply.body[0])

    def run_in_session(self, command: str) -> subprocess.CompletedProcess:
        """A shell command inside the session, as a user following a hint would run it."""
        env = {**self.session_env, "DBUS_SESSION_BUS_ADDRESS": self.address}
        return subprocess.run(["sh", "-c", command], env=env, capture_output=True, text=True, timeout=30, stdin=subprocess.DEVNULL)

    def wait_for_new_daemon(self, timeout: float = 15) -> None:
        """Wait until a daemon not seen before owns the bus name: the daemon claims it a moment
        after its starter returns, and after ``--replace`` the old one lets go first."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            pid = self.owner_pid()
            if pid is not None and pid not in self.daemons:
                self.daemons.add(pid)
                return
            time.sleep(0.05)
        raise AssertionError(f"no new gnome-keyring-daemon took over the session:\n{self.log.read_text()}")

    def close(self) -> None:
        if self.process.stdin and not self.process.stdin.closed:
            self.process.stdin.close()
        try:
            self.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        # The daemons leave with their bus; make sure none outlives the test.
        deadline = time.monotonic() + 5
        for pid in self.daemons:
            while _alive(pid) and time.monotonic() < deadline:
                time.sleep(0.05)
            if _alive(pid):
                os.kill(pid, signal.SIGTERM)
        shutil.rmtree(self.runtime, ignore_errors=True)

    # -- the keyring, through other clients than stsync ---------------------------------
    def lookup(self, name: str) -> str | None:
        done = subprocess.run(
            ["secret-tool", "lookup", "service", "stsync", "username", f"{CONNECTION}/{name}"],
            env=self.client_env(), capture_output=True, text=True, timeout=30, stdin=subprocess.DEVNULL,
        )  # fmt: skip
        return done.stdout.rstrip("\n") if done.returncode == 0 else None

    def store(self, name: str, value: str) -> None:
        done = subprocess.run(
            ["secret-tool", "store", "--label", f"stsync {CONNECTION}/{name}", "service", "stsync", "username", f"{CONNECTION}/{name}"],
            env=self.client_env(), input=value, capture_output=True, text=True, timeout=30,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr

    def item_attributes(self) -> list[dict[str, str]]:
        """The attributes of every item of every collection (attributes need no unlocking)."""
        import secretstorage

        with self._connection() as connection:
            return [dict(item.get_attributes()) for collection in secretstorage.get_all_collections(connection)
                    for item in collection.get_all_items()]  # fmt: skip

    def lock(self) -> None:
        import secretstorage

        with self._connection() as connection:
            collection = secretstorage.get_default_collection(connection)
            collection.lock()
            assert collection.is_locked()

    # -- stsync -------------------------------------------------------------------------
    def client_env(self) -> dict[str, str]:
        """The test's isolated environment, without the test keyring, on this session's bus."""
        env = {k: v for k, v in os.environ.items() if k not in NOT_PASSED_ON + TEST_KEYRING_HOOK}
        env["DBUS_SESSION_BUS_ADDRESS"] = self.address
        env["XDG_RUNTIME_DIR"] = str(self.runtime)
        return env

    def stsync(self, *args: str) -> CliResult:
        done = subprocess.run(
            [sys.executable, "-m", "stsync", *args],
            env=self.client_env(), capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL,
        )  # fmt: skip
        return CliResult(done.returncode, done.stdout, done.stderr)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return Path(f"/proc/{pid}/stat").exists() and ") Z" not in Path(f"/proc/{pid}/stat").read_text()


@pytest.fixture
def secret_service_home(tmp_path: Path) -> Path:
    return tmp_path / "secret-service"


@pytest.fixture
def start_secret_service(secret_service_home: Path):
    started: list[SecretService] = []

    def start(*, unlocked: bool = True) -> SecretService:
        service = SecretService(secret_service_home, unlocked=unlocked)
        started.append(service)
        return service

    yield start
    for service in started:
        service.close()


def secrets_of(sb) -> dict[str, str]:
    creds = sb.credentials
    return {"st_client_secret": creds.client_secret, "st_app_key": creds.app_key, "rf_api_key": creds.rf_api_key}


def leaks(secrets: dict[str, str], text: str) -> list[str]:
    return [name for name, value in secrets.items() if any(value[i : i + WINDOW] in text for i in range(len(value) - WINDOW + 1))]


def test_connect_stores_the_secrets_in_the_keyring_only_and_every_command_reads_them(
    sandbox_env, start_secret_service, secret_service_home, tmp_path
):
    sb = sandbox_env
    secrets = secrets_of(sb)
    service = start_secret_service()
    outputs: list[tuple[str, CliResult]] = []

    def stsync(*args: str, expect: int = 0) -> CliResult:
        result = service.stsync(*args)
        outputs.append((" ".join(args[:3]), result))
        assert result.exit_code == expect, str(result)
        assert "Traceback" not in result.stderr, str(result)
        return result

    connected = stsync("-vv", "--json", *sb.connect_args()).json
    assert connected["secrets_store"] == "keyring" and sorted(connected["stored_secrets"]) == sorted(secrets)

    # In the keyring, one entry per secret, read back by another client; nothing else in it.
    assert {name: service.lookup(name) for name in secrets} == secrets
    assert sorted(item["username"] for item in service.item_attributes() if item.get("service") == "stsync") == sorted(
        f"{CONNECTION}/{name}" for name in secrets
    )
    assert len(service.item_attributes()) == len(secrets)

    stsync("-vv", "validate", "--online")
    pushed = stsync("--json", "push-lead", "--new").json
    bookings = sb.bookings()
    assert bookings and len(bookings) == len({b["externalId"] for b in bookings}), pushed
    diagnosed = stsync("--json", "diagnose").json
    store_check = next(check for check in diagnosed["checks"] if check["name"] == "Secret store")
    assert store_check["status"] == "pass", store_check
    assert "keyring.backends.SecretService.Keyring" in store_check["message"]
    for name in secrets:
        assert f"{name} ← keyring" in store_check["message"], store_check

    # The commands read the keyring on every run: a key replaced there by hand is used next.
    new_rf_key = sb.rotate_rf_api_key()
    stsync("validate", "--online", expect=4)
    service.store("rf_api_key", new_rf_key)
    secrets["rf_api_key_before_rotation"] = secrets["rf_api_key"]
    secrets["rf_api_key"] = new_rf_key
    stsync("validate", "--online")
    stsync("push-lead", "--new")

    # Nowhere else: not in any output, nor any file stsync or its user has (config, log, ledger
    # and its WAL, locks, rate files, token cache). The daemon's own (encrypted) files are its.
    assert not list(tmp_path.rglob("secrets.json"))
    for what, result in outputs:
        assert leaks(secrets, result.stdout + result.stderr) == [], f"a secret in the output of `{what}`"
    scanned = [path for path in tmp_path.rglob("*") if path.is_file() and secret_service_home not in path.parents]
    assert any(path.name == "stsync.log" for path in scanned) and any(path.name.startswith("ledger") for path in scanned)
    for path in scanned:
        assert leaks(secrets, path.read_bytes().decode("latin-1")) == [], f"a secret in {path}"

    # A collection locked under stsync's feet: exit 3, and the error says how to unlock it.
    service.lock()
    validated = stsync("--json", "validate", "--online", expect=3).json
    secrets_check = next(check for check in validated["checks"] if check["name"] == "Secrets")
    assert secrets_check["status"] == "fail" and "is locked" in secrets_check["message"], secrets_check
    assert "gnome-keyring-daemon --replace --unlock" in secrets_check["fix"], secrets_check
    booked = len(sb.bookings())
    sb.add_leads(2)  # work waiting: a push that needed no secret would book it
    error = stsync("--json", "push-lead", "--new", expect=3).json["error"]
    assert "is locked" in error["message"] and "gnome-keyring-daemon --replace --unlock" in error["hint"], error
    human = stsync("push-lead", "--new", expect=3)
    assert "is locked" in human.stderr and "unlock the keyring" in human.stderr, str(human)
    assert len(sb.bookings()) == booked


def test_a_keyring_left_locked_fails_with_the_fix_and_the_fix_works(sandbox_env, start_secret_service):
    sb = sandbox_env
    first = start_secret_service()
    connected = first.stsync(*sb.connect_args())
    assert connected.exit_code == 0, str(connected)
    first.close()

    # The next login session's daemon starts without the password: the collection is locked.
    service = start_secret_service(unlocked=False)
    result = service.stsync("--json", "push-lead", "--new")
    assert result.exit_code == 3, str(result)
    assert "Traceback" not in result.stderr
    error = result.json["error"]
    assert "is locked" in error["message"], error
    commands = re.findall(r"`([^`]*gnome-keyring-daemon[^`]*)`", error["hint"])
    assert commands, error
    # Follow the hint, as a user on a headless box would, with the keyring's password.
    unlock = service.run_in_session(commands[0].replace("PASSWORD", PASSWORD))
    assert unlock.returncode == 0, unlock.stderr
    service.wait_for_new_daemon()

    result = service.stsync("--json", "push-lead", "--new")
    assert result.exit_code == 0, str(result)
    assert sb.bookings(), "the leads waiting were booked with the secrets from the unlocked keyring"
