"""The ``status`` report as Prometheus figures: the text ``/metrics`` answers (``serve`` and
``stsync run --webhooks``) and the node-exporter textfile ``status --prometheus PATH`` writes.

prometheus_client formats and writes them (``write_to_textfile`` replaces the file by rename,
so the collector never reads half a file). Every figure is a gauge labelled with the
connection (and the job, or the kind of failure): several connections on one machine write
several files, or answer on several ports, without clashing.

    stsync_healthy                                  1 when nothing needs attention
    stsync_attention_reasons                        how many things need attention
    stsync_job_last_run_timestamp_seconds{job}      when the last run ended (or started)
    stsync_job_last_success_timestamp_seconds{job}  when the last ok/partial run ended
    stsync_job_last_exit_code{job}                  the last run's exit code (SPEC §5)
    stsync_job_overdue{job}, stsync_job_running{job}, stsync_job_interval_seconds{job}
    stsync_open_failures{kind}                      pushes, customers, qualifications, deliveries
    stsync_webhook_deliveries_waiting, stsync_webhook_oldest_waiting_age_seconds
    stsync_referral_factory_cooldown_active, stsync_referral_factory_cooldown_until_timestamp_seconds
    stsync_referral_factory_blocked, stsync_referral_factory_rate_factor
    stsync_token_valid, stsync_token_expiry_timestamp_seconds
    stsync_status_generated_timestamp_seconds
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, generate_latest, write_to_textfile
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from stsync.errors import ConfigError
from stsync.notify.conditions import parse_time
from stsync.services.status import StatusReport, connection_status
from stsync.webhooks.handler import Request, Route, TextResponse

if TYPE_CHECKING:
    from stsync.storage.config import Config
    from stsync.storage.ledger import Ledger
    from stsync.storage.paths import ConnectionPaths

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def _timestamp(text: str | None) -> float | None:
    moment = parse_time(text)
    return moment.timestamp() if moment else None


class StatusCollector(Collector):
    def __init__(self, report: StatusReport) -> None:
        self.report = report

    def collect(self) -> Iterator[GaugeMetricFamily]:
        report = self.report
        connection = report.connection

        def gauge(name: str, doc: str, value: float | None) -> GaugeMetricFamily:
            family = GaugeMetricFamily(name, doc, labels=["connection"])
            if value is not None:
                family.add_metric([connection], float(value))
            return family

        yield gauge("stsync_healthy", "1 when stsync status finds nothing that needs attention", 1 if report.healthy else 0)
        yield gauge("stsync_attention_reasons", "How many things need a person's attention", len(report.attention))
        yield gauge("stsync_status_generated_timestamp_seconds", "When these figures were read", _timestamp(report.generated_at))

        per_job = {
            "last_run": GaugeMetricFamily(
                "stsync_job_last_run_timestamp_seconds",
                "When the job's last run ended (or started, if still running)",
                labels=["connection", "job"],
            ),
            "last_success": GaugeMetricFamily(
                "stsync_job_last_success_timestamp_seconds",
                "When the job last succeeded (ok or partial)",
                labels=["connection", "job"],
            ),
            "exit_code": GaugeMetricFamily(
                "stsync_job_last_exit_code", "Exit code of the job's last run (SPEC exit codes)", labels=["connection", "job"]
            ),
            "overdue": GaugeMetricFamily(
                "stsync_job_overdue",
                "1 when the job has not succeeded for longer than overdue_after x its interval",
                labels=["connection", "job"],
            ),
            "running": GaugeMetricFamily(
                "stsync_job_running", "1 while a run of the job holds its lock", labels=["connection", "job"]
            ),
            "interval": GaugeMetricFamily(
                "stsync_job_interval_seconds", "The job's interval in [schedule]", labels=["connection", "job"]
            ),
        }
        for job in report.jobs:
            labels = [connection, job.job]
            last = job.last_run or {}
            if last:
                stamp = _timestamp(last.get("finished_at") or last.get("started_at"))
                if stamp is not None:
                    per_job["last_run"].add_metric(labels, stamp)
                if last.get("exit_code") is not None:
                    per_job["exit_code"].add_metric(labels, float(last["exit_code"]))
            success = _timestamp((job.last_success or {}).get("finished_at"))
            if success is not None:
                per_job["last_success"].add_metric(labels, success)
            per_job["overdue"].add_metric(labels, 1.0 if job.overdue else 0.0)
            per_job["running"].add_metric(labels, 1.0 if job.running else 0.0)
            if job.interval_seconds is not None:
                per_job["interval"].add_metric(labels, float(job.interval_seconds))
        yield from per_job.values()

        failures = GaugeMetricFamily(
            "stsync_open_failures", "Records that failed for good and are not fixed", labels=["connection", "kind"]
        )
        for kind, found in report.failures.items():
            failures.add_metric([connection, kind], float(found.get("count") or 0))
        yield failures

        hooks = report.webhooks
        yield gauge(
            "stsync_webhook_deliveries_waiting", "Webhook deliveries accepted and not processed yet", hooks.get("waiting") or 0
        )
        yield gauge(
            "stsync_webhook_oldest_waiting_age_seconds",
            "Age of the oldest waiting delivery",
            hooks.get("oldest_age_seconds") or 0,
        )

        rf = report.referral_factory
        cooldown = rf.get("cooldown") or {}
        yield gauge(
            "stsync_referral_factory_cooldown_active",
            "1 while no process of the connection may call Referral Factory",
            1 if cooldown.get("active") else 0,
        )
        yield gauge(
            "stsync_referral_factory_cooldown_until_timestamp_seconds",
            "When the Referral Factory cool-down ends",
            _timestamp(cooldown.get("until")),
        )
        yield gauge("stsync_referral_factory_blocked", "1 while the cool-down follows an IP block", 1 if rf.get("blocked") else 0)
        yield gauge(
            "stsync_referral_factory_rate_factor",
            "The share of referral_factory_per_minute in force (1 = full speed)",
            rf.get("rate_factor", 1.0),
        )

        token = report.token
        yield gauge("stsync_token_valid", "1 while the cached ServiceTitan token is valid", 1 if token.get("valid") else 0)
        yield gauge(
            "stsync_token_expiry_timestamp_seconds",
            "When the cached ServiceTitan token expires",
            _timestamp(token.get("expires_at")),
        )


def _registry(report: StatusReport) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(StatusCollector(report))
    return registry


def prometheus_text(report: StatusReport) -> str:
    """The exposition text (what ``/metrics`` answers)."""
    return generate_latest(_registry(report)).decode("utf-8")


def write_textfile(report: StatusReport, path: str | Path) -> Path:
    """Write the node-exporter textfile atomically (a temp file beside it, then rename)."""
    target = Path(path).expanduser()
    if target.is_dir():
        raise ConfigError(
            f"--prometheus {target} is a directory",
            hint="give a file path ending in .prom, e.g. /var/lib/node_exporter/textfile/stsync.prom",
        )
    if not target.parent.is_dir():
        raise ConfigError(
            f"--prometheus {target}: the directory {target.parent} does not exist",
            hint="create it, or point at node_exporter's textfile directory",
        )
    try:
        write_to_textfile(str(target), _registry(report))
    except OSError as exc:
        raise ConfigError(f"cannot write {target}: {exc.strerror or exc}", hint="check the directory's permissions") from None
    return target


def metrics_route(paths: ConnectionPaths, config: Config, ledger: Ledger | None = None) -> Route:
    """``GET /metrics`` for ``serve`` and ``stsync run --webhooks``: the status figures, read
    afresh for each scrape (the local state only: a scrape costs no remote request), through
    the server's own ledger when given."""
    def answer(request: Request) -> TextResponse:
        return TextResponse(
            200, {}, text=prometheus_text(connection_status(paths, config, ledger=ledger)), content_type=CONTENT_TYPE
        )

    return answer
