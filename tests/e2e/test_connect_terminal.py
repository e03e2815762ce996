"""`stsync connect` as a person at a terminal uses it: the real CLI on a pseudo-terminal
(stdin and stderr are the terminal, stdout a pipe of its own) against the sandbox.

What the setup guide promises: a reconnect after a secret rotation asks for the rotated secret
only and succeeds; the environment is a choice; a locked keyring is reported before anything
is typed or sent; every prompt says where its value is found; each check shows its ✓ as it
passes, on the terminal and never on stdout; Ctrl-C at a prompt is one line and exit 130.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
from terminal_session import TerminalSession

from stsync import credentials
from stsync.storage.config import load_config
from stsync.storage.paths import ConnectionPaths
from stsync.storage.secrets import SecretStore

pytestmark = pytest.mark.e2e

CHECKS = ("ServiceTitan token", "ServiceTitan app key and tenant access", "Booking Provider Value", "Referral Factory campaign")


def prompt(label: str) -> re.Pattern[str]:
    """A prompt line: the label at the start of a line, its choices and default, then ': '."""
    return re.compile(r"(?m)^" + re.escape(label) + r"(?: \(again\))?(?: \([^)\n]*\))?(?: \[[^\]\n]*\])?: ")


def prompts_in(transcript: str) -> list[str]:
    """The labels of every value prompt shown (not the keep-it questions)."""
    labels = [value.label for value in credentials.CONNECT_VALUES] + ["ServiceTitan environment"]
    return [label for line in transcript.splitlines() for label in labels if prompt(label).match(line)]


def paths() -> ConnectionPaths:
    return ConnectionPaths.for_config(Path(os.environ["STSYNC_CONFIG"]))


def assert_checks_shown_in_order(transcript: str) -> None:
    positions = [transcript.rfind(f"✓ {name}: ") for name in CHECKS]
    assert all(p >= 0 for p in positions), transcript
    assert positions == sorted(positions), transcript


@pytest.mark.parametrize("rotated", ["st_client_secret", "rf_api_key"])
def test_reconnect_after_a_rotation_asks_only_for_the_rejected_secret(sandbox_env, cli, rotated):
    sb = sandbox_env
    assert cli(*sb.connect_args(), "--secrets-store", "file").exit_code == 0
    new_value = sb.rotate_client_secret() if rotated == "st_client_secret" else sb.rotate_rf_api_key()
    label = credentials.secret(rotated).label

    with TerminalSession("connect") as session:
        # The connection remembers its store (file) and its identity: nothing else to ask.
        for secret in credentials.SECRETS:
            session.expect(f"A stored {secret.label} exists — keep it? [Y/n]: ")
            session.sendline("")
        session.expect(prompt(label))
        session.sendline(new_value)
        assert session.wait() == 0, session.transcript
        transcript = session.transcript

    assert prompts_in(transcript) == [label], transcript  # only the rejected secret
    assert f"Find it in: {credentials.secret(rotated).where}" in transcript
    assert "Error:" in transcript  # the rejection, in the check's words, before the question
    assert_checks_shown_in_order(transcript)
    assert session.stdout == ""  # prompts, ✓ and messages are the terminal's, not data
    assert new_value not in transcript
    assert SecretStore(paths()).get(rotated) == new_value
    assert paths().secrets_store == "file"
    # The new secret works for the next command.
    assert cli("validate", "--online").exit_code == 0


def test_a_first_connect_asks_the_environment_as_a_choice_and_where_each_value_is(sandbox_env, monkeypatch):
    sb = sandbox_env
    c = sb.credentials
    for name, value in sb.secret_env().items():
        monkeypatch.setenv(name, value)  # secrets from the environment: only the settings are asked

    with TerminalSession("connect") as session:
        session.expect("integration: ServiceTitan's integration (test) environment")
        session.expect(prompt("ServiceTitan environment"))
        session.sendline("staging")
        session.expect("'staging' is not an environment: choose production or integration")
        session.expect(prompt("ServiceTitan environment"))
        session.sendline("integration")
        session.expect(f"Find it in: {credentials.TENANT_ID.where}")
        session.expect(prompt(credentials.TENANT_ID.label))
        session.sendline("-1")
        session.expect("'-1' is not a number of 1 or more")  # refused at the prompt, asked again
        session.expect(prompt(credentials.TENANT_ID.label))
        session.sendline(str(c.tenant_id))
        for setting, value in (
            (credentials.CLIENT_ID, c.client_id),
            (credentials.BOOKING_PROVIDER, c.booking_provider),
            (credentials.CAMPAIGN_ID, c.campaign_id),
        ):
            session.expect(f"Find it in: {setting.where}")
            session.expect(prompt(setting.label))
            session.sendline(str(value))
        assert session.wait() == 0, session.transcript
        transcript = session.transcript

    assert "(production, integration) [production]: " in transcript
    assert_checks_shown_in_order(transcript)
    assert "taken from the environment, not stored" in transcript
    assert session.stdout == ""
    config = load_config(os.environ["STSYNC_CONFIG"])
    assert config.servicetitan.environment == "integration" and config.servicetitan.tenant_id == c.tenant_id


def test_a_locked_keyring_is_reported_before_anything_is_asked_or_sent(sandbox_env, monkeypatch):
    sb = sandbox_env
    monkeypatch.setenv("STSYNC_TEST_KEYRING", "locked")
    sb.clear_request_log()
    with TerminalSession("connect") as session:
        assert session.wait() == 3, session.transcript
        transcript = session.transcript
    assert "No usable secret store" in transcript and "is locked" in transcript
    assert "unlock the keyring" in transcript and "--secrets-store file" in transcript
    assert prompts_in(transcript) == [] and "keep it?" not in transcript
    assert sb.request_log == []
    assert not Path(os.environ["STSYNC_CONFIG"]).exists()


@pytest.mark.parametrize("at", ["ServiceTitan environment", credentials.ST_CLIENT_SECRET.label])
def test_ctrl_c_at_a_prompt_is_one_line_and_exit_130(sandbox_env, at):
    c = sandbox_env.credentials
    answers = {
        "ServiceTitan environment": "integration",
        credentials.TENANT_ID.label: c.tenant_id,
        credentials.CLIENT_ID.label: c.client_id,
    }
    with TerminalSession("connect", "--secrets-store", "file") as session:
        for label, answer in answers.items():
            if label == at:
                break
            session.expect(prompt(label))
            session.sendline(str(answer))
        before = session.expect(prompt(at))
        session.interrupt()
        assert session.wait() == 130, session.transcript
        after = session.transcript[len(before) :]
    lines = [line for line in after.splitlines() if line.strip() and line.strip() != "^C"]
    assert lines == ["Error: interrupted at a prompt; nothing was changed"], after
    assert "Traceback" not in after
    assert not Path(os.environ["STSYNC_CONFIG"]).exists()
    assert session.stdout == ""
