"""`vaultctl status`: whether the vault serves, and how it is doing."""

from __future__ import annotations

import time
import urllib.error
import urllib.request
from typing import Any, Final

import click

from vault.cli._context import CliState, json_option, pass_state
from vault.cli._output import emit, note, print_fields

EXIT_NOT_SERVING: Final = 1
SERVICES: Final = (
    "vault.v1.KeyService",
    "vault.v1.CryptoService",
    "vault.v1.IdentityService",
    "vault.v1.AuditService",
    "vault.v1.ServerService",
)
_METRICS_TIMEOUT: Final = 3.0


@click.command("status")
@click.option(
    "--metrics-url",
    default=None,
    metavar="URL",
    help="Where to read the server's Prometheus metrics (default: http://<server."
    "metrics_listen>/metrics as the server reports it; none when it is off).",
)
@json_option
@pass_state
def status_command(state: CliState, metrics_url: str | None) -> None:
    """Show whether the vault serves: health (overall and per service), version, workers,
    uptime, token and store, and the main metrics when the metrics endpoint is reachable.

    Health needs no credential; the rest (ServerService) needs the admin role and is left
    out, with a note, without it.

    \b
    Exit codes: 0 serving; 1 reachable but not serving; 3 not reachable.

    \b
    Examples:
      vaultctl status
      vaultctl --json status
      vaultctl --target vault.internal:50051 --ca-file ca.pem status
    """
    from vault.client import VaultClientError

    client = state.client()
    overall = client.health("")  # unreachable: VaultClientError, exit 3
    record: dict[str, Any] = {
        "target": state.dialed,
        "health": overall,
        "services": {service: client.health(service) for service in SERVICES},
    }
    try:
        # Its audit record needs the store: a vault that does not serve may not answer soon.
        status = client.get_server_status(timeout=None if overall == "SERVING" else 5.0)
    except VaultClientError as error:
        if overall == "SERVING" and error.code.name not in (
            "PERMISSION_DENIED",
            "UNAUTHENTICATED",
            "UNIMPLEMENTED",
        ):
            raise
        record["server"] = None
        record["server_error"] = error.code.name
    else:
        start = status.start_time.ToDatetime()
        record["server"] = {
            "version": status.version,
            "start_time": start.isoformat(timespec="seconds") + "Z",
            "uptime_seconds": round(max(0.0, time.time() - status.start_time.ToSeconds()), 1),
            "workers": status.workers,
            "answered_by": {"worker_index": status.worker_index, "pid": status.worker_pid},
            "token_available": status.token_available,
            "store_available": status.store_available,
            "audit_intact": status.audit_intact,
            "auth_enabled": status.auth_enabled,
            "tls": status.tls,
            "metrics_listen": status.metrics_listen or None,
            "drain_seconds": status.drain_seconds,
        }
        if metrics_url is None and status.metrics_listen:
            metrics_url = f"http://{status.metrics_listen}/metrics"
    record["metrics"] = None
    if metrics_url is not None:
        try:
            record["metrics"] = summarise(read_metrics(metrics_url))
        except (OSError, ValueError) as error:
            record["metrics_error"] = f"{metrics_url}: {error}"
    emit(state, record, lambda: _print(record))
    if overall != "SERVING":
        click.get_current_context().exit(EXIT_NOT_SERVING)


def read_metrics(url: str) -> dict[str, list[tuple[dict[str, str], float]]]:
    """{sample name: [(labels, value)]} of the Prometheus text at url."""
    from prometheus_client.parser import text_string_to_metric_families

    if not url.startswith(("http://", "https://")):
        raise ValueError("expected an http:// or https:// URL")
    with urllib.request.urlopen(url, timeout=_METRICS_TIMEOUT) as reply:  # noqa: S310 (scheme checked)
        text = reply.read().decode("utf-8")
    samples: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples.setdefault(sample.name, []).append((dict(sample.labels), sample.value))
    return samples


def _total(
    samples: dict[str, list[tuple[dict[str, str], float]]], name: str, **match: str
) -> float:
    return sum(
        value
        for labels, value in samples.get(name, [])
        if all(labels.get(key) == wanted for key, wanted in match.items())
    )


def summarise(samples: dict[str, list[tuple[dict[str, str], float]]]) -> dict[str, Any]:
    """The figures an operator looks at first."""
    by_code: dict[str, float] = {}
    for labels, value in samples.get("vault_grpc_requests_total", []):
        code = labels.get("code", "")
        by_code[code] = by_code.get(code, 0.0) + value
    hits = _total(samples, "vault_key_cache_lookups_total", result="hit")
    misses = _total(samples, "vault_key_cache_lookups_total", result="miss")
    return {
        "workers_alive": int(_total(samples, "vault_workers")),
        "worker_restarts": int(_total(samples, "vault_worker_restarts_total")),
        "requests": int(sum(by_code.values())),
        "requests_by_code": {code: int(n) for code, n in sorted(by_code.items())},
        "token_operations": int(_total(samples, "vault_token_operations_total")),
        "token_errors": int(_total(samples, "vault_token_operation_errors_total")),
        "key_cache_hit_ratio": round(hits / (hits + misses), 4) if hits + misses else None,
        "limit_rejections": int(_total(samples, "vault_limit_rejections_total")),
        "audit_records_waiting": int(_total(samples, "vault_audit_records_waiting")),
        "audit_records_since_checkpoint": int(
            _total(samples, "vault_audit_records_since_checkpoint")
        ),
    }


def _print(record: dict[str, Any]) -> None:
    fields: list[tuple[str, Any]] = [("target", record["target"]), ("health", record["health"])]
    fields += [(f"  {name}", value) for name, value in record["services"].items()]
    server = record["server"]
    if server is not None:
        fields += [
            ("version", server["version"]),
            ("started", server["start_time"]),
            ("uptime", _duration(server["uptime_seconds"])),
            ("workers", server["workers"]),
            ("token", "available" if server["token_available"] else "UNAVAILABLE"),
            ("store", "available" if server["store_available"] else "UNAVAILABLE"),
            ("audit chain", "intact" if server["audit_intact"] else "BROKEN"),
            ("auth", server["auth_enabled"]),
            ("tls", server["tls"]),
            ("metrics", server["metrics_listen"] or "off"),
        ]
    metrics = record["metrics"]
    if metrics is not None:
        fields += [(f"metrics: {name}", value) for name, value in metrics.items()]
    print_fields(fields, title="vault status")
    if server is None:
        note(f"server details need the admin role ({record['server_error']}); health only")
    if "metrics_error" in record:
        note(f"metrics not readable: {record['metrics_error']}")


def _duration(seconds: float) -> str:
    whole = int(seconds)
    days, rest = divmod(whole, 86_400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    return (f"{days}d " if days else "") + f"{hours:02d}:{minutes:02d}:{secs:02d}"
