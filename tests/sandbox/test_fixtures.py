"""The end-to-end fixtures: a configured stsync, in-process and in a child process, pointed at the sandbox."""

from __future__ import annotations

import os


def test_connected_stsync_reaches_the_sandbox_in_process_and_in_a_child(connected, cli, cli_subprocess):
    assert os.environ["STSYNC_ST_API_URL"] == connected.base_url
    assert connected.count_requests(service="auth") >= 1  # connect verified the credentials live
    connected.clear_request_log()
    in_process = cli("--json", "validate", "--online")
    assert in_process.exit_code == 0, str(in_process)
    assert in_process.json["ok"] is True
    assert connected.count_requests(service="servicetitan") >= 1
    assert connected.count_requests(service="referral_factory") >= 1
    connected.clear_request_log()
    child = cli_subprocess("--json", "validate", "--online")
    assert child.exit_code == 0, str(child)
    assert child.json["ok"] is True
    assert connected.count_requests(service="servicetitan") >= 1
