"""contrib/: the systemd units pass `systemd-analyze verify` (where systemd is installed), the
Kubernetes manifests parse and say what they must (one replica, Forbid, state on a volume,
secrets from a Secret as the STSYNC_* variables), and every command line they run is one this
stsync accepts."""

from __future__ import annotations

import configparser
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from stsync import envvars
from stsync.cli.app import run
from stsync.storage.config import parse_config_text

CONTRIB = Path(__file__).resolve().parents[2] / "contrib"
SYSTEMD = CONTRIB / "systemd"
KUBERNETES = CONTRIB / "kubernetes"
INSTALLED = "/usr/local/bin/stsync"
SECRET_VARIABLES = {variable.name for variable in envvars.VARIABLES if variable.secret}

EXPECTED_UNITS = {
    "stsync-run@.service": ["run"],
    "stsync-push@.service": ["-q", "push-lead", "--new"],
    "stsync-qualify@.service": ["-q", "qualify"],
    "stsync-sync@.service": ["-q", "sync-customers", "--ongoing"],
    "stsync-sync-full@.service": ["-q", "sync-customers", "--ongoing", "--full"],
}


def unit(path: Path) -> configparser.ConfigParser:
    parser = configparser.ConfigParser(strict=False, interpolation=None, comment_prefixes=("#", ";"))
    parser.optionxform = str  # keys are case-sensitive
    parser.read(path)
    return parser


def accepted(args: list[str], capsys) -> bool:
    """Whether stsync parses this command line (its --help exits 0; an unknown option exits 2)."""
    capsys.readouterr()
    code = run([*args, "--help"])
    capsys.readouterr()
    return code == 0


def test_each_unit_runs_the_command_it_names_and_the_command_is_valid(capsys):
    assert sorted(p.name for p in SYSTEMD.glob("*.service")) == sorted(EXPECTED_UNITS)
    for name, expected in EXPECTED_UNITS.items():
        service = unit(SYSTEMD / name)["Service"]
        argv = shlex.split(service["ExecStart"])
        assert argv[0] == INSTALLED and argv[1:] == expected, name
        assert accepted(argv[1:], capsys), argv
        assert service["Environment"]  # STSYNC_CONFIG=/etc/stsync/%i.toml (the last Environment= line)
        text = (SYSTEMD / name).read_text()
        assert "Environment=STSYNC_CONFIG=/etc/stsync/%i.toml" in text and "EnvironmentFile=-/etc/stsync/%i.env" in text
        assert "StateDirectory=stsync" in text and "UMask=0077" in text
    run_service = unit(SYSTEMD / "stsync-run@.service")["Service"]
    # SIGTERM to stsync alone: the running step finishes; stsync exits 0.
    assert run_service["KillMode"] == "mixed" and run_service["Type"] == "exec" and "3" in run_service["RestartPreventExitStatus"].split()
    for name in EXPECTED_UNITS:
        if name != "stsync-run@.service":
            service = unit(SYSTEMD / name)["Service"]
            assert service["Type"] == "oneshot" and service["SuccessExitStatus"] == "7"


def test_each_timer_starts_its_service_on_its_schedule():
    schedules = {"push": "*:0/5", "qualify": "*:0/10", "sync": "*:0/15", "sync-full": "Sun *-*-* 03:30:00"}
    assert sorted(p.name for p in SYSTEMD.glob("*.timer")) == sorted(f"stsync-{job}@.timer" for job in schedules)
    for job, schedule in schedules.items():
        timer = unit(SYSTEMD / f"stsync-{job}@.timer")
        assert timer["Timer"]["OnCalendar"] == schedule and timer["Timer"]["Unit"] == f"stsync-{job}@%i.service"
        assert timer["Install"]["WantedBy"] == "timers.target"


def test_the_units_pass_systemd_analyze_verify(tmp_path):
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed (Debian: apt-get install systemd; .ci/run installs it)")
    # verify checks that ExecStart's program exists: point the copies at this environment's stsync.
    stsync = Path(sys.executable).with_name("stsync")
    assert stsync.exists(), stsync
    for source in SYSTEMD.iterdir():
        (tmp_path / source.name).write_text(source.read_text().replace(INSTALLED, str(stsync)))
    instances = [str(tmp_path / p.name.replace("@.", "@acme.")) for p in sorted(SYSTEMD.iterdir()) if "@." in p.name]
    result = subprocess.run([analyze, "verify", *instances], capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    # Warnings (an unknown key, a bad value) do not change the exit code: none may mention our units.
    noise = [line for line in (result.stdout + result.stderr).splitlines() if "stsync" in line]
    assert noise == [], noise


def manifests() -> dict[str, list[dict]]:
    return {path.name: [doc for doc in yaml.safe_load_all(path.read_text()) if doc] for path in sorted(KUBERNETES.glob("*.yaml"))}


def containers_of(doc: dict) -> list[dict]:
    spec = doc["spec"]
    if doc["kind"] == "CronJob":
        spec = spec["jobTemplate"]["spec"]
    return spec["template"]["spec"]["containers"]


def test_the_kubernetes_manifests_parse_and_hold_together(capsys):
    docs = manifests()
    assert set(docs) == {"configmap.yaml", "cronjobs.yaml", "deployment.yaml", "secret.yaml"}
    by_kind: dict[str, list[dict]] = {}
    for doc in (d for found in docs.values() for d in found):
        by_kind.setdefault(doc["kind"], []).append(doc)
    [secret] = by_kind["Secret"]
    assert set(secret["stringData"]) <= SECRET_VARIABLES and {"STSYNC_ST_CLIENT_SECRET", "STSYNC_ST_APP_KEY", "STSYNC_RF_API_KEY"} <= set(secret["stringData"])
    [configmap] = by_kind["ConfigMap"]
    config = parse_config_text(configmap["data"]["config.toml"])  # a config this stsync loads
    assert config.schedule.push == 300 and config.schedule.full_sync == 7 * 86400
    [claim] = by_kind["PersistentVolumeClaim"]

    [deployment] = by_kind["Deployment"]
    spec = deployment["spec"]
    assert spec["replicas"] == 1 and spec["strategy"]["type"] == "Recreate"
    [container] = containers_of(deployment)
    argv = container["command"] + container["args"]
    assert argv[:2] == ["stsync", "run"] and "--webhooks" in argv and accepted(argv[1:], capsys)
    check_container(container, deployment["spec"]["template"]["spec"], secret, configmap, claim)
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"

    cronjobs = {doc["metadata"]["name"]: doc for doc in by_kind["CronJob"]}
    commands = {name: containers_of(doc)[0]["command"] + containers_of(doc)[0]["args"] for name, doc in cronjobs.items()}
    assert commands == {
        "stsync-acme-push": ["stsync", "-q", "push-lead", "--new"],
        "stsync-acme-qualify": ["stsync", "-q", "qualify"],
        "stsync-acme-sync": ["stsync", "-q", "sync-customers", "--ongoing"],
        "stsync-acme-sync-full": ["stsync", "-q", "sync-customers", "--ongoing", "--full"],
    }
    for name, doc in cronjobs.items():
        assert doc["spec"]["concurrencyPolicy"] == "Forbid", name
        assert accepted(commands[name][1:], capsys), commands[name]
        check_container(containers_of(doc)[0], doc["spec"]["jobTemplate"]["spec"]["template"]["spec"], secret, configmap, claim)


def check_container(container: dict, pod: dict, secret: dict, configmap: dict, claim: dict) -> None:
    env = {item["name"]: item.get("value") for item in container["env"]}
    assert env["STSYNC_CONFIG"] == "/etc/stsync/config.toml" and env["STSYNC_STATE_DIR"] == "/var/lib/stsync"
    assert set(env) <= set(envvars.BY_NAME) and not set(env) & SECRET_VARIABLES  # secrets only from the Secret
    assert container["envFrom"] == [{"secretRef": {"name": secret["metadata"]["name"]}}]
    mounts = {mount["mountPath"]: mount["name"] for mount in container["volumeMounts"]}
    volumes = {volume["name"]: volume for volume in pod["volumes"]}
    assert volumes[mounts["/var/lib/stsync"]]["persistentVolumeClaim"]["claimName"] == claim["metadata"]["name"]
    assert volumes[mounts["/etc/stsync"]]["configMap"]["name"] == configmap["metadata"]["name"]
    assert pod["securityContext"]["runAsNonRoot"] is True
