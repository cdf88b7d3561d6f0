"""Monitoring a running vault: Prometheus metrics from every worker on the supervisor's
/metrics, JSON logs whose lines carry the request id of the audit record, a drain on SIGTERM
that lets calls in flight finish, and `vaultctl status`."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from multiprocessing.connection import Connection
from pathlib import Path

import grpc
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.support.api_calls import ensure_account
from tests.support.harness import ROOT, VaultServer, free_port, provision, vault_environment
from tests.support.security_helpers import add_access_key, add_api_key, expect_denied, new_account
from vault.client import VaultClient, VaultClientError

Samples = dict[str, list[tuple[dict[str, str], float]]]

# The lines a server prints on stdout rather than logs (the harness captures both).
_PRINTED = (
    "TLS: ",  # vaultctl serve says how it serves
    "vault serving on ",
    "bootstrapped admin access key ",
    "  stored for vaultctl in ",
    "settings: ",  # the user settings file it recorded this server in, once
)


def scrape(url: str) -> Samples:
    with urllib.request.urlopen(url, timeout=10) as reply:
        text = reply.read().decode()
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples.setdefault(sample.name, []).append((dict(sample.labels), sample.value))
    return samples


def value(samples: Samples, name: str, **labels: str) -> float:
    return sum(
        found
        for sample_labels, found in samples.get(name, [])
        if all(sample_labels.get(key) == wanted for key, wanted in labels.items())
    )


class ObservedVault:
    """A vault started as `vaultctl serve` is, with metrics on and JSON logs."""

    def __init__(self, data_dir: Path, **settings: str) -> None:
        self.metrics_port = free_port()
        self.server = VaultServer(
            data_dir,
            extra_env={
                "VAULT_SERVER__DEV_TLS": "false",
                "VAULT_SERVER__METRICS_LISTEN": f"127.0.0.1:{self.metrics_port}",
                "VAULT_LOG_FORMAT": "json",
                **settings,
            },
            serve_args=("-m", "vault.cli", "serve"),
        )

    @property
    def metrics_url(self) -> str:
        return f"http://127.0.0.1:{self.metrics_port}/metrics"

    def scrape(self) -> Samples:
        return scrape(self.metrics_url)

    def log_entries(self) -> list[dict[str, object]]:
        """Every log line of the server, parsed; fails on a line that is neither JSON nor one
        the server prints on purpose."""
        entries = []
        for line in self.server.log().splitlines():
            if not line.strip() or line.startswith(_PRINTED):
                continue
            entry = json.loads(line)  # every other line is one JSON object
            assert isinstance(entry, dict), line
            entries.append(entry)
        return entries


@pytest.fixture(scope="module")
def observed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ObservedVault]:
    data_dir = tmp_path_factory.mktemp("observed")
    provision(data_dir)
    # DEBUG: the error interceptor logs each failed call then, so calls have log lines.
    vault = ObservedVault(data_dir, VAULT_LOG_LEVEL="DEBUG")
    vault.server.start()
    try:
        yield vault
    finally:
        vault.server.stop()


@pytest.fixture(scope="module")
def admin(observed: ObservedVault) -> Iterator[VaultClient]:
    with observed.server.client() as client:
        yield client


# -- metrics ---------------------------------------------------------------------------------


def test_metrics_count_requests_by_method_and_code(
    observed: ObservedVault, admin: VaultClient
) -> None:
    account = new_account(admin, "m")
    key = admin.create_key(account, "counted", "ENCRYPT_DECRYPT").name
    other = add_access_key(admin, new_account(admin, "o"))
    before = observed.scrape()
    for _ in range(5):
        admin.encrypt(key, b"counted")
    with observed.server.client(other.credentials) as outsider:
        expect_denied(lambda: outsider.encrypt(key, b"not yours"))
    after = observed.scrape()

    def delta(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    crypto = {"service": "vault.v1.CryptoService", "method": "Encrypt"}
    assert delta("vault_grpc_requests_total", **crypto, code="OK") == 5
    assert delta("vault_grpc_requests_total", **crypto, code="PERMISSION_DENIED") == 1
    # The latency histogram: every call in _count and in the +Inf bucket, buckets cumulative.
    assert delta("vault_grpc_request_duration_seconds_count", **crypto) == 6
    assert delta("vault_grpc_request_duration_seconds_bucket", **crypto, le="+Inf") == 6
    buckets = sorted(
        (float(labels["le"]), count)
        for labels, count in after["vault_grpc_request_duration_seconds_bucket"]
        if labels["service"] == crypto["service"] and labels["method"] == "Encrypt"
    )
    assert len(buckets) > 5
    assert [count for _, count in buckets] == sorted(count for _, count in buckets)
    # The token ran one GCM encryption per allowed call, none for the denied one.
    assert delta("vault_token_operations_total", operation="encrypt") == 5
    assert delta("vault_key_cache_lookups_total") == 5
    assert value(after, "vault_key_cache_lookups_total", result="hit") >= 1
    # Audit: every call's record was committed; nothing waits now.
    assert delta("vault_audit_commit_duration_seconds_count") >= 1
    assert delta("vault_audit_records_committed_total") >= 6
    assert value(after, "vault_audit_records_waiting") == 0
    assert value(after, "vault_audit_records_since_checkpoint") >= 1
    # The supervisor's own view.
    assert value(after, "vault_workers") == 2
    assert value(after, "vault_start_time_seconds") > 0


def test_metrics_count_token_errors_and_limit_rejections(
    observed: ObservedVault, admin: VaultClient
) -> None:
    account = new_account(admin, "l")
    key = admin.create_key(account, "limited", "ENCRYPT_DECRYPT").name
    api_key = add_api_key(admin, account, [(["*"], ["*"])], rate_limit=(0.001, 1))
    before = observed.scrape()
    with observed.server.client(api_key.credentials) as limited:
        limited.encrypt(key, b"first")
        with pytest.raises(VaultClientError) as refused:
            limited.encrypt(key, b"second")
    assert refused.value.code is grpc.StatusCode.RESOURCE_EXHAUSTED
    ciphertext = admin.encrypt(key, b"x").ciphertext
    with pytest.raises(VaultClientError):
        admin.decrypt(key, ciphertext[:-1] + bytes([ciphertext[-1] ^ 1]))
    after = observed.scrape()

    def delta(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert delta("vault_limit_rejections_total", reason="RATE_LIMITED") == 1
    assert delta("vault_grpc_requests_total", method="Encrypt", code="RESOURCE_EXHAUSTED") == 1
    assert delta("vault_token_operation_errors_total", operation="decrypt") == 1


def test_a_dead_workers_counts_stay_in_the_totals(
    observed: ObservedVault, admin: VaultClient
) -> None:
    """Counters of a worker that died are kept (prometheus-client's multiprocess files); the
    supervisor restarts it and /metrics keeps adding up."""
    key = admin.create_key(new_account(admin, "d"), "k", "ENCRYPT_DECRYPT").name
    for _ in range(3):
        admin.encrypt(key, b"before")
    before = value(observed.scrape(), "vault_grpc_requests_total", method="Encrypt")
    from tests.test_server import wait_for, workers

    old = workers(observed.server)
    os.kill(old[1], 9)
    wait_for(lambda: len(set(workers(observed.server)) - set(old)) == 1, 60, "a new worker")
    wait_for(lambda: value(observed.scrape(), "vault_workers") == 2, 60, "two workers")
    assert value(observed.scrape(), "vault_grpc_requests_total", method="Encrypt") >= before


def test_metrics_listen_refuses_a_port_in_use(tmp_path: Path) -> None:
    provision(tmp_path)
    vault = ObservedVault(tmp_path)
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", vault.metrics_port))
        taken.listen()
        with pytest.raises(RuntimeError, match="metrics_listen"):
            vault.server.start(timeout=60)
    assert vault.server.process is not None
    assert vault.server.process.wait(timeout=30) != 0


# -- logs ------------------------------------------------------------------------------------


def test_json_log_lines_carry_the_request_id_of_the_audit_record(
    observed: ObservedVault, admin: VaultClient
) -> None:
    missing = f"{new_account(admin, 'j')}/keys/missing"
    with pytest.raises(VaultClientError):
        admin.get_key(missing)
    (record,) = [
        event
        for event in admin.iter_audit_events(resource=missing)
        if event.method.endswith("/GetKey")
    ]
    assert record.request_id

    def lines_of_the_call() -> list[dict[str, object]]:
        return [e for e in observed.log_entries() if e.get("request_id") == record.request_id]

    from tests.test_server import wait_for

    wait_for(lambda: bool(lines_of_the_call()), 10, "the call's log line")
    (line,) = lines_of_the_call()
    assert line["level"] == "DEBUG"
    assert line["logger"] == "vault.transport.errors"
    assert "GetKey failed: NOT_FOUND" in str(line["message"])
    assert isinstance(line["pid"], int) and line["pid"] != observed.server.process.pid  # type: ignore[union-attr]
    entries = observed.log_entries()
    assert {"time", "level", "logger", "message", "pid"} <= set(entries[0])
    # Lines logged outside any call carry no request id.
    assert any("request_id" not in entry for entry in entries)


def test_the_json_log_holds_no_secret(observed: ObservedVault, admin: VaultClient) -> None:
    account = new_account(admin, "s")
    access = add_access_key(admin, account)
    api_key = add_api_key(admin, account, [(["*"], ["*"])])
    key = admin.create_key(account, "secretive", "ENCRYPT_DECRYPT").name
    plaintext = b"plaintext-that-must-not-be-logged-7f3a"
    with observed.server.client(access.credentials) as owner:
        ciphertext = owner.encrypt(key, plaintext).ciphertext
        assert owner.decrypt(key, ciphertext).plaintext == plaintext
    with observed.server.client(api_key.credentials) as bearer:
        bearer.encrypt(key, plaintext)
    # Failures log at DEBUG: a wrong secret, a tampered ciphertext.
    from vault.client import AccessKeyCredentials

    wrong = AccessKeyCredentials(access.key_id, access.credentials.secret_key[::-1])
    with observed.server.client(wrong) as impostor, pytest.raises(VaultClientError):
        impostor.encrypt(key, plaintext)
    with pytest.raises(VaultClientError):
        admin.decrypt(key, ciphertext[:-1] + bytes([ciphertext[-1] ^ 1]))
    admin_secret = observed.server.credentials.secret_key
    user_pin = (observed.server.data_dir / "secrets" / "user.pin").read_text().strip()
    text = observed.server.log()
    assert observed.log_entries()  # the stream parses, line by line
    for secret in (
        access.credentials.secret_key,
        api_key.token,
        admin_secret,
        user_pin,
        plaintext.decode(),
        plaintext.hex(),
        ciphertext.hex(),
    ):
        assert secret not in text


def test_an_unknown_log_format_is_refused(tmp_path: Path) -> None:
    env = vault_environment(tmp_path, VAULT_LOG_FORMAT="yaml", VAULT_SERVER__DEV_TLS="false")
    done = subprocess.run(
        [sys.executable, "-m", "vault.cli", "serve"],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )
    assert done.returncode == 4
    assert "log_format must be one of text, json" in done.stderr


# -- vaultctl status -------------------------------------------------------------------------


def vaultctl(server: VaultServer, *args: str) -> subprocess.CompletedProcess[str]:
    env = vault_environment(server.data_dir, VAULT_SERVER__LISTEN=server.target)
    return subprocess.run(
        [sys.executable, "-m", "vault.cli", *args],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )


def test_status_of_a_serving_vault(observed: ObservedVault) -> None:
    done = vaultctl(observed.server, "--json", "status")
    assert done.returncode == 0, done.stderr
    status = json.loads(done.stdout)
    assert status["health"] == "SERVING"
    assert set(status["services"].values()) == {"SERVING"}
    server = status["server"]
    assert server["version"] == "0.1.0"
    assert server["workers"] == 2
    assert server["uptime_seconds"] > 0
    assert server["token_available"] and server["store_available"] and server["audit_intact"]
    assert server["metrics_listen"] == f"127.0.0.1:{observed.metrics_port}"
    metrics = status["metrics"]
    assert metrics["workers_alive"] == 2
    assert metrics["requests"] >= 1
    human = vaultctl(observed.server, "status")
    assert human.returncode == 0, human.stderr
    assert "SERVING" in human.stdout and "uptime" in human.stdout


def test_status_without_the_admin_role_shows_health_only(
    observed: ObservedVault, admin: VaultClient
) -> None:
    user = add_access_key(admin, new_account(admin, "u"))
    env = vault_environment(
        observed.server.data_dir,
        VAULT_SERVER__LISTEN=observed.server.target,
        VAULT_ACCESS_KEY_ID=user.key_id,
        VAULT_SECRET_KEY=user.credentials.secret_key,
    )
    done = subprocess.run(
        [sys.executable, "-m", "vault.cli", "--json", "status"],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )
    assert done.returncode == 0, done.stderr
    status = json.loads(done.stdout)
    assert status["health"] == "SERVING"
    assert status["server"] is None
    assert status["server_error"] == "PERMISSION_DENIED"


def test_status_of_an_unreachable_vault_exits_3(tmp_path: Path) -> None:
    server = VaultServer(tmp_path)  # never started: nothing listens on its port
    done = vaultctl(server, "status")
    assert done.returncode == 3
    assert "no vault reachable" in done.stderr


def test_status_of_a_vault_that_does_not_serve_exits_1(tmp_path: Path) -> None:
    """Health NOT_SERVING (here: the store is locked by another writer) gives exit code 1."""
    import sqlite3

    provision(tmp_path)
    with VaultServer(tmp_path) as server:
        locker = sqlite3.connect(tmp_path / "vault.db", timeout=30, isolation_level=None)
        try:
            locker.execute("BEGIN EXCLUSIVE")
            from tests.test_server import wait_for

            def not_serving() -> bool:
                with server.client() as client:
                    return bool(client.health("") == "NOT_SERVING")

            wait_for(not_serving, 30, "NOT_SERVING")
            done = vaultctl(server, "--json", "status")
            assert done.returncode == 1, done.stderr
            assert json.loads(done.stdout)["health"] == "NOT_SERVING"
        finally:
            locker.execute("ROLLBACK")
            locker.close()


# -- drain on SIGTERM -------------------------------------------------------------------------


def test_sigterm_during_a_stream_of_calls_lets_those_in_flight_finish(tmp_path: Path) -> None:
    """Clients keep creating slow keys (token-resident RSA-3072) when SIGTERM arrives: every
    call the vault began is answered OK and its audit record committed, later calls are
    refused, and the server exits 0. A generous drain makes this independent of load."""
    provision(tmp_path)
    vault = ObservedVault(tmp_path, VAULT_SERVER__DRAIN_SECONDS="120")
    server = vault.server.start()
    with server.client() as admin:
        ensure_account(admin, "drain")
    outcomes: list[tuple[str, object]] = []
    finished_at: dict[str, float] = {}
    stop = threading.Event()
    lock = threading.Lock()

    def stream(index: int) -> None:
        with server.client(timeout=180) as client:
            for n in range(1000):
                if stop.is_set():
                    return
                key_id = f"s{index}x{n}"
                try:
                    client.create_key(
                        "accounts/drain", key_id, "SIGN_VERIFY", "RSA_SIGN_PSS_3072_SHA256",
                        token_resident=True,
                    )  # fmt: skip
                    result: object = "OK"
                    with lock:
                        finished_at[key_id] = time.monotonic()
                except VaultClientError as error:
                    result = error.code
                    stop.set()  # the server is going: no more calls from this client
                with lock:
                    outcomes.append((key_id, result))

    threads = [threading.Thread(target=stream, args=(i,)) for i in range(3)]
    for thread in threads:
        thread.start()
    from tests.test_server import wait_for

    wait_for(lambda: len(outcomes) >= 3, 120, "the first keys")
    assert server.process is not None
    stopped_at = time.monotonic()
    server.stop()  # SIGTERM to the process group, while calls are under way
    stop.set()
    for thread in threads:
        thread.join(timeout=180)
    assert server.process.returncode == 0, server.log()[-2000:]
    # Calls were in flight when the signal came, and were answered after it.
    assert any(at > stopped_at for at in finished_at.values()), (stopped_at, finished_at)
    refused = {key_id: result for key_id, result in outcomes if result != "OK"}
    # A call that reached the server as it stopped is refused: UNAVAILABLE, or CANCELLED when
    # it arrived between the server's last accepted call and its goodbye to the connection.
    assert set(refused.values()) <= {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED}
    entries = vault.log_entries()
    assert not [e for e in entries if "killing" in str(e["message"])]
    stopped = [
        e for e in entries if re.fullmatch(r"worker \d \(pid \d+\) stopped", str(e["message"]))
    ]
    assert len(stopped) == 2, stopped
    restarted = VaultServer(tmp_path).start()
    try:
        with restarted.client() as client:
            events = list(client.iter_audit_events(method="CreateKey"))
            started = {e.request_id for e in events if e.outcome == "STARTED"}
            finished = {e.request_id: e.outcome for e in events if e.outcome != "STARTED"}
            # Every call the vault began before or after SIGTERM was finished and recorded;
            # the refused ones were never begun.
            assert started and all(finished.get(rid) == "OK" for rid in started), finished
            begun = {e.resource.rsplit("/", 1)[1] for e in events}
            assert not begun & set(refused), (begun, refused)
            created = {key.name.rsplit("/", 1)[1] for key in client.iter_keys("accounts/drain")}
            answered = {key_id for key_id, result in outcomes if result == "OK"}
            assert answered <= created
            assert len(created) == len(started)
    finally:
        restarted.stop()
    assert "discarded" not in restarted.log()


# -- pure pieces -----------------------------------------------------------------------------


def test_the_json_formatter_adds_the_request_id_only_inside_a_call() -> None:
    import logging

    from vault.logs import JsonFormatter, request_context

    formatter = JsonFormatter()
    record = logging.LogRecord("vault.x", logging.WARNING, __file__, 1, "a %s", ("b",), None)
    outside = json.loads(formatter.format(record))
    assert outside["message"] == "a b" and outside["level"] == "WARNING"
    assert outside["logger"] == "vault.x" and outside["pid"] == os.getpid()
    assert "request_id" not in outside
    with request_context("r-1"):
        assert json.loads(formatter.format(record))["request_id"] == "r-1"
    assert "request_id" not in json.loads(formatter.format(record))
    try:
        raise ValueError("boom")
    except ValueError:
        record.exc_info = sys.exc_info()
    assert "ValueError" in json.loads(formatter.format(record))["exception"]


@pytest.mark.parametrize(
    ("listen", "expected"),
    [
        ("127.0.0.1:9464", ("127.0.0.1", 9464)),
        ("[::1]:1", ("::1", 1)),
        ("localhost:80", ("localhost", 80)),
    ],
)
def test_metrics_listen_parsing(listen: str, expected: tuple[str, int]) -> None:
    from vault.metrics_exporter import parse_listen

    assert parse_listen(listen) == expected


@pytest.mark.parametrize("listen", ["9464", "host:9464", "127.0.0.1:0", "127.0.0.1:x", ":9464"])
def test_malformed_metrics_listen_is_refused(listen: str) -> None:
    from vault.metrics_exporter import MetricsListenError, parse_listen

    with pytest.raises(MetricsListenError):
        parse_listen(listen)


def _request_ids_of_a_forked_child(conn: Connection) -> None:
    from vault.transport import observe

    conn.send([observe._new_request_id() for _ in range(100)])


def test_made_up_request_ids_differ_within_and_across_worker_processes() -> None:
    """Ids the server makes up for calls without x-request-id: 32 hex digits as before, from
    a generator each forked worker seeds afresh (a copy of the parent's would repeat ids)."""
    import multiprocessing

    from vault.transport import observe

    ours = [observe._new_request_id() for _ in range(100)]
    context = multiprocessing.get_context("fork")
    theirs: list[str] = []
    for _ in range(2):
        parent_end, child_end = context.Pipe()
        child = context.Process(target=_request_ids_of_a_forked_child, args=(child_end,))
        child.start()
        theirs += parent_end.recv()
        child.join(timeout=30)
        assert child.exitcode == 0
    assert all(re.fullmatch(r"[0-9a-f]{32}", made) for made in ours + theirs)
    assert len(set(ours + theirs)) == 300
