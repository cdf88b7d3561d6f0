"""TLS on the gRPC transport, against real servers: the development CA that `vaultctl serve`
creates and the CLI trusts by itself, a configured certificate with client certificates
required (mutual TLS), the refusals (plaintext clients, untrusted CAs, missing client
certificates, a public address without TLS, a private key others can read), and the
development CA's files."""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from tests.support.api_calls import ensure_account
from tests.support.harness import ROOT, VaultServer, free_port, provision, vault_environment
from vault.cli._context import same_local_server
from vault.client import (
    AccessKeyCredentials,
    VaultClient,
    VaultClientError,
    load_credentials_file,
)
from vault.config import DevTlsPaths
from vault.tls_dev import (
    DevTlsError,
    create_ca,
    ensure_dev_tls,
    issue_certificate,
    server_names,
    write_certificate,
    write_private_key,
)
from vault.transport.tls import TlsConfigError, load_server_tls

UNAVAILABLE = grpc.StatusCode.UNAVAILABLE
# A fresh connection per client: gRPC could otherwise share one between channels.
LOCAL_POOL = [("grpc.use_local_subchannel_pool", 1)]
SERVE = "from vault.config import Settings\nfrom vault.app import serve\n"
SERVE += "serve(Settings())\n"


@dataclass(frozen=True)
class Pair:
    """A certificate and its private key, as files."""

    cert: Path
    key: Path


@dataclass(frozen=True)
class Ca:
    """A CA: its certificate as a file (what clients or servers trust) and its key."""

    path: Path
    cert: x509.Certificate
    key: ec.EllipticCurvePrivateKey


def make_ca(directory: Path, name: str) -> Ca:
    directory.mkdir(parents=True, exist_ok=True)
    cert, key = create_ca(name)
    path = directory / f"{name}.pem"
    write_certificate(path, cert)
    return Ca(path, cert, key)


def make_pair(directory: Path, name: str, ca: Ca, *, client: bool) -> Pair:
    names = () if client else ("localhost", "127.0.0.1", "::1")
    cert, key = issue_certificate(ca.cert, ca.key, name, names, client=client)
    pair = Pair(directory / f"{name}.pem", directory / f"{name}.key")
    write_certificate(pair.cert, cert)
    write_private_key(pair.key, key)
    return pair


def tls_channel(target: str, ca: Path, client: Pair | None = None) -> grpc.Channel:
    credentials = grpc.ssl_channel_credentials(
        root_certificates=ca.read_bytes(),
        private_key=client.key.read_bytes() if client else None,
        certificate_chain=client.cert.read_bytes() if client else None,
    )
    return grpc.secure_channel(target, credentials, options=LOCAL_POOL)


def healthy(channel: grpc.Channel) -> bool:
    try:
        reply = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service=""), timeout=1.0
        )
    except grpc.RpcError:
        return False
    return bool(reply.status == health_pb2.HealthCheckResponse.SERVING)


def round_trip(client: VaultClient, key: str, data: bytes = b"over TLS") -> None:
    sealed = client.encrypt(key, data, aad=b"tls")
    assert client.decrypt(key, sealed.ciphertext, aad=b"tls").plaintext == data


def refused(client: VaultClient) -> VaultClientError:
    with client, pytest.raises(VaultClientError) as caught:
        client.generate_random(8)
    assert caught.value.code is UNAVAILABLE, caught.value
    return caught.value


def vaultctl(
    env: Mapping[str, str], *args: str, stdin: bytes = b"", timeout: float = 60
) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [sys.executable, "-m", "vault.cli", *args],
        env=dict(env),
        cwd=ROOT,
        input=stdin,
        capture_output=True,
        timeout=timeout,
    )


# -- `vaultctl serve` with the development CA, bound to 0.0.0.0 -------------------------------


class CliServer:
    """`vaultctl serve` (as `make run` starts it) in its own process group, on 0.0.0.0 or
    listen."""

    def __init__(self, data_dir: Path, listen: str | None = None) -> None:
        self.data_dir = data_dir
        self.port = free_port()
        self.target = listen or f"127.0.0.1:{self.port}"
        # Every vaultctl of the test uses these settings, as a person's shell would.
        self.env = vault_environment(
            data_dir,
            VAULT_SERVER__LISTEN=listen or f"0.0.0.0:{self.port}",
            VAULT_SERVER__WORKERS="1",
        )
        self.log_path = data_dir / f"vaultctl-serve-{self.port}.log"
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def credentials(self) -> AccessKeyCredentials:
        return load_credentials_file(self.data_dir / "admin-credentials.json")

    def client(self, **options: Any) -> VaultClient:
        return VaultClient(self.target, credentials=self.credentials, **options)

    def start(self, timeout: float = 90.0) -> CliServer:
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "vault.cli", "serve"],
                env=self.env,
                cwd=ROOT,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"vaultctl serve exited early:\n{self.log()}")
            if "vault serving on" in self.log():
                ca = DevTlsPaths(self.data_dir / "tls").ca_cert
                with VaultClient(
                    self.target,
                    ca_file=ca,
                    options=LOCAL_POOL,
                    timeout=2,
                    credentials=self.credentials,
                ) as c:
                    try:
                        c.generate_random(1)
                    except VaultClientError:
                        pass
                    else:
                        return self
            time.sleep(0.2)
        raise RuntimeError(f"vaultctl serve not serving after {timeout}s:\n{self.log()}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=30)


@pytest.fixture(scope="module")
def cli_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CliServer]:
    data_dir = tmp_path_factory.mktemp("vault-tls-dev")
    provision(data_dir)
    assert not (data_dir / "tls").exists(), "provisioning alone must not create TLS files"
    server = CliServer(data_dir).start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def dev(cli_server: CliServer) -> DevTlsPaths:
    return DevTlsPaths(cli_server.data_dir / "tls")


@pytest.fixture(scope="module")
def dev_key(cli_server: CliServer, dev: DevTlsPaths) -> str:
    with cli_server.client(ca_file=dev.ca_cert) as client:
        ensure_account(client, "accounts/tls")
        return client.create_key("accounts/tls", "dev", "ENCRYPT_DECRYPT").name


@pytest.fixture(scope="module")
def other_ca(tmp_path_factory: pytest.TempPathFactory) -> Ca:
    return make_ca(tmp_path_factory.mktemp("other-ca"), "other-ca")


def test_vaultctl_serve_creates_the_development_ca_with_private_modes(
    cli_server: CliServer, dev: DevTlsPaths
) -> None:
    assert stat.S_IMODE(dev.directory.stat().st_mode) == 0o700
    for key in (dev.ca_key, dev.server_key):
        assert stat.S_IMODE(key.stat().st_mode) == 0o600, key
    cert = x509.load_pem_x509_certificate(dev.server_cert.read_bytes())
    ca = x509.load_pem_x509_certificate(dev.ca_cert.read_bytes())
    cert.verify_directly_issued_by(ca)
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert {"localhost"} <= set(san.get_values_for_type(x509.DNSName))
    assert {"127.0.0.1", "::1"} <= {str(a) for a in san.get_values_for_type(x509.IPAddress)}
    log = cli_server.log()
    assert f"development CA {dev.ca_cert} (created now)" in log, log
    assert f"vault serving on 0.0.0.0:{cli_server.port} (1 worker, TLS)" in log, log
    assert "PRIVATE KEY" not in log


def test_vaultctl_client_commands_trust_the_development_ca_with_no_options(
    cli_server: CliServer, tmp_path: Path
) -> None:
    env = cli_server.env
    key = "accounts/tls/keys/cli"
    vaultctl(env, "accounts", "create", "tls")  # exists already if dev_key ran first
    created = vaultctl(env, "keys", "create", key, "--purpose", "ENCRYPT_DECRYPT")
    assert created.returncode == 0, created.stderr.decode()
    sealed = tmp_path / "sealed"
    encrypted = vaultctl(
        env, "crypto", "encrypt", key, "--in", "-", "--out", str(sealed), stdin=b"zero flags"
    )
    assert encrypted.returncode == 0, encrypted.stderr.decode()
    decrypted = vaultctl(env, "crypto", "decrypt", key, "--in", str(sealed), "--out", "-")
    assert decrypted.returncode == 0, decrypted.stderr.decode()
    assert decrypted.stdout == b"zero flags"
    # The same server under another loopback name: still trusted by itself.
    other_name = vaultctl(env, "--target", f"localhost:{cli_server.port}", "keys", "get", key)
    assert other_name.returncode == 0, other_name.stderr.decode()


def test_vaultctl_with_another_ca_file_is_refused(cli_server: CliServer, other_ca: Ca) -> None:
    done = vaultctl(
        cli_server.env, "--ca-file", str(other_ca.path), "crypto", "random", "--size", "8"
    )
    assert done.returncode == 3, done.stderr.decode()
    assert "CERTIFICATE_VERIFY_FAILED" in done.stderr.decode()


def test_sdk_trusting_the_development_ca_encrypts_and_decrypts(
    cli_server: CliServer, dev: DevTlsPaths, dev_key: str
) -> None:
    # Bound to 0.0.0.0, reached through 127.0.0.1 and localhost: both in the certificate.
    for target in (cli_server.target, f"localhost:{cli_server.port}"):
        with VaultClient(
            target, ca_file=dev.ca_cert, options=LOCAL_POOL, credentials=cli_server.credentials
        ) as client:
            round_trip(client, dev_key)


def test_health_and_reflection_work_over_tls(cli_server: CliServer, dev: DevTlsPaths) -> None:
    with tls_channel(cli_server.target, dev.ca_cert) as channel:
        assert healthy(channel)
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        request = reflection_pb2.ServerReflectionRequest(list_services="")
        (reply,) = list(stub.ServerReflectionInfo(iter([request]), timeout=10))
    services = {service.name for service in reply.list_services_response.service}
    assert {"vault.v1.KeyService", "vault.v1.CryptoService", "grpc.health.v1.Health"} <= services


def test_a_unix_socket_serves_tls_with_the_development_ca(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    data_dir = tmp_path_factory.mktemp("vault-unix")
    provision(data_dir)
    server = CliServer(data_dir, listen=f"unix:{data_dir}/vault.sock").start()
    try:
        assert "(1 worker, TLS)" in server.log()
        done = vaultctl(server.env, "crypto", "random", "--size", "8")  # trusts the dev CA
        assert done.returncode == 0, done.stderr.decode()
        refused(server.client(options=LOCAL_POOL))
    finally:
        server.stop()


def test_a_plaintext_client_is_refused(cli_server: CliServer) -> None:
    refused(cli_server.client(options=LOCAL_POOL, timeout=10))
    with grpc.insecure_channel(cli_server.target, options=LOCAL_POOL) as channel:
        assert not healthy(channel)


def test_a_client_trusting_another_ca_is_refused(cli_server: CliServer, other_ca: Ca) -> None:
    refused(cli_server.client(ca_file=other_ca.path, options=LOCAL_POOL, timeout=10))


# -- a configured certificate, client certificates required ---------------------------------


@dataclass(frozen=True)
class Mtls:
    server: VaultServer
    server_ca: Path
    client: Pair  # issued by the CA in server.client_ca_file
    stranger: Pair  # a client certificate from another CA


class TlsVaultServer(VaultServer):
    """tests.support.harness.VaultServer whose readiness check speaks TLS."""

    def __init__(
        self, data_dir: Path, extra_env: Mapping[str, str], ca: Path, client: Pair
    ) -> None:
        super().__init__(data_dir, extra_env)
        self.ca, self.client_pair = ca, client

    def wait_serving(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.process is not None
            if self.process.poll() is not None:
                raise RuntimeError(f"vault server exited early:\n{self.log()}")
            if "vault serving on" in self.log():
                with tls_channel(self.target, self.ca, self.client_pair) as channel:
                    if healthy(channel):
                        return
            time.sleep(0.2)
        raise RuntimeError(f"vault server not serving after {timeout}s:\n{self.log()}")


@pytest.fixture(scope="module")
def mtls(tmp_path_factory: pytest.TempPathFactory, other_ca: Ca) -> Iterator[Mtls]:
    pki = tmp_path_factory.mktemp("pki")
    server_ca = make_ca(pki, "server-ca")
    client_ca = make_ca(pki, "client-ca")
    server_pair = make_pair(pki, "server", server_ca, client=False)
    client = make_pair(pki, "client", client_ca, client=True)
    stranger = make_pair(pki, "stranger", other_ca, client=True)
    data_dir = tmp_path_factory.mktemp("vault-mtls")
    provision(data_dir)
    env = {
        "VAULT_SERVER__TLS_CERT_FILE": str(server_pair.cert),
        "VAULT_SERVER__TLS_KEY_FILE": str(server_pair.key),
        "VAULT_SERVER__CLIENT_CA_FILE": str(client_ca.path),
        "VAULT_SERVER__WORKERS": "1",
        "VAULT_AUTH__CLIENT_CERTIFICATE_ACCOUNTS": "true",
    }
    server = TlsVaultServer(data_dir, env, server_ca.path, client).start()
    try:
        yield Mtls(server, server_ca.path, client, stranger)
    finally:
        server.stop()


def test_mutual_tls_accepts_a_client_certificate_from_the_client_ca(mtls: Mtls) -> None:
    assert "(1 worker, mutual TLS)" in mtls.server.log()
    with VaultClient(
        mtls.server.target,
        ca_file=mtls.server_ca,
        client_cert_file=mtls.client.cert,
        client_key_file=mtls.client.key,
        options=LOCAL_POOL,
        credentials=mtls.server.credentials,
    ) as client:
        ensure_account(client, "accounts/mtls")
        key = client.create_key("accounts/mtls", "k", "ENCRYPT_DECRYPT").name
        round_trip(client, key)


def test_a_client_certificate_acts_for_the_account_its_common_name_names(mtls: Mtls) -> None:
    def certificate_only() -> VaultClient:
        return VaultClient(
            mtls.server.target,
            ca_file=mtls.server_ca,
            client_cert_file=mtls.client.cert,
            client_key_file=mtls.client.key,
            options=LOCAL_POOL,
        )

    # Its common name is "client": no such account yet, so the certificate alone is not a
    # credential.
    with certificate_only() as anonymous, pytest.raises(VaultClientError) as caught:
        anonymous.generate_random(8)
    assert caught.value.code is grpc.StatusCode.UNAUTHENTICATED
    with mtls.server.client(
        ca_file=mtls.server_ca,
        client_cert_file=mtls.client.cert,
        client_key_file=mtls.client.key,
        options=LOCAL_POOL,
    ) as admin:
        admin.create_account("client")
        admin.create_account("mtls-other")
        other = admin.create_key("accounts/mtls-other", "k", "ENCRYPT_DECRYPT").name
    with certificate_only() as client:
        key = client.create_key("accounts/client", "own", "ENCRYPT_DECRYPT").name
        round_trip(client, key)
        with pytest.raises(VaultClientError) as denied:
            client.get_key(other)
        assert denied.value.code is grpc.StatusCode.PERMISSION_DENIED
        with pytest.raises(VaultClientError) as not_admin:
            client.list_accounts()
        assert not_admin.value.code is grpc.StatusCode.PERMISSION_DENIED


def test_mutual_tls_refuses_a_client_without_a_certificate(mtls: Mtls) -> None:
    refused(mtls.server.client(ca_file=mtls.server_ca, options=LOCAL_POOL))
    refused(mtls.server.client(options=LOCAL_POOL))


def test_mutual_tls_refuses_a_certificate_from_another_ca(mtls: Mtls) -> None:
    refused(
        VaultClient(
            mtls.server.target,
            ca_file=mtls.server_ca,
            client_cert_file=mtls.stranger.cert,
            client_key_file=mtls.stranger.key,
            options=LOCAL_POOL,
        )
    )


# -- refusals at start-up (nothing is served, no token needed) --------------------------------


def test_binding_0_0_0_0_without_tls_is_refused(tmp_path: Path) -> None:
    port = free_port()
    env = vault_environment(
        tmp_path, VAULT_SERVER__LISTEN=f"0.0.0.0:{port}", VAULT_SERVER__DEV_TLS="false"
    )
    done = vaultctl(env, "serve")
    assert done.returncode == 4, done.stderr.decode()
    assert "is not a loopback address and no TLS certificate is configured" in (
        done.stderr.decode()
    )
    assert not (tmp_path / "tls").exists()
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        assert not healthy(channel)


def test_a_server_key_readable_by_others_is_refused_at_start(tmp_path: Path, other_ca: Ca) -> None:
    pair = make_pair(tmp_path, "server", other_ca, client=False)
    pair.key.chmod(0o644)
    env = vault_environment(
        tmp_path,
        VAULT_SERVER__LISTEN=f"127.0.0.1:{free_port()}",
        VAULT_SERVER__TLS_CERT_FILE=str(pair.cert),
        VAULT_SERVER__TLS_KEY_FILE=str(pair.key),
    )
    expected = f"server.tls_key_file {pair.key} has mode 0644"
    # The command line: one line, exit code 4 (local error).
    done = vaultctl(env, "serve")
    assert done.returncode == 4, done.stderr.decode()
    stderr = done.stderr.decode()
    assert stderr.startswith(f"vaultctl: error: {expected}"), stderr
    assert f"chmod 600 {pair.key}" in stderr
    # serve() itself, as the tests' harness starts it, refuses too, before touching anything.
    direct = subprocess.run(
        [sys.executable, "-c", SERVE], env=env, cwd=ROOT, capture_output=True, timeout=60
    )
    assert direct.returncode != 0
    assert f"TlsConfigError: {expected}" in direct.stderr.decode()
    assert not (tmp_path / "vault.db").exists()


# -- loading the server's TLS files -----------------------------------------------------------


def test_load_server_tls_explains_each_unusable_file(tmp_path: Path, other_ca: Ca) -> None:
    from vault.config import TlsFiles

    pair = make_pair(tmp_path, "server", other_ca, client=False)
    other = make_pair(tmp_path, "other", other_ca, client=False)
    loaded = load_server_tls(TlsFiles(pair.cert, pair.key))
    assert not loaded.mutual and "PRIVATE" not in repr(loaded)
    cases = {
        "is not the private key of the certificate": TlsFiles(pair.cert, other.key),
        "does not exist": TlsFiles(pair.cert, tmp_path / "missing.key"),
        "holds no PEM certificate": TlsFiles(pair.key, pair.key),
        "holds no readable PEM private key": TlsFiles(pair.cert, pair.cert),
    }
    pair.cert.chmod(0o600)  # readable as a "key" file in the last case
    for expected, files in cases.items():
        with pytest.raises(TlsConfigError, match=expected):
            load_server_tls(files)
    with pytest.raises(TlsConfigError, match=r"client_ca_file .* holds no PEM certificate"):
        load_server_tls(TlsFiles(pair.cert, pair.key, client_ca_file=pair.key))


# -- the development CA's files ---------------------------------------------------------------


def test_development_ca_generation_is_idempotent_and_private(tmp_path: Path) -> None:
    paths = DevTlsPaths(tmp_path / "data" / "tls")
    first = ensure_dev_tls(paths)
    assert first.ca_created and first.server_issued
    assert stat.S_IMODE(paths.directory.stat().st_mode) == 0o700
    for key in (paths.ca_key, paths.server_key):
        assert stat.S_IMODE(key.stat().st_mode) == 0o600, key
        assert key.read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----")
    every = (paths.ca_cert, paths.ca_key, paths.server_cert, paths.server_key)
    files = {path: path.read_bytes() for path in every}

    second = ensure_dev_tls(paths)
    assert not second.ca_created and not second.server_issued
    assert {path: path.read_bytes() for path in files} == files

    # A new listen address: a new server certificate with every name, from the same CA.
    third = ensure_dev_tls(paths, server_names("192.0.2.7:50051"))
    assert not third.ca_created and third.server_issued
    assert paths.ca_cert.read_bytes() == files[paths.ca_cert]
    assert paths.ca_key.read_bytes() == files[paths.ca_key]
    cert = x509.load_pem_x509_certificate(paths.server_cert.read_bytes())
    cert.verify_directly_issued_by(x509.load_pem_x509_certificate(files[paths.ca_cert]))
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    addresses = {str(a) for a in san.get_values_for_type(x509.IPAddress)}
    assert addresses == {"127.0.0.1", "::1", "192.0.2.7"}
    assert stat.S_IMODE(paths.server_key.stat().st_mode) == 0o600

    # Without the CA's key nothing new can be issued, and the CA is never silently replaced.
    paths.ca_key.unlink()
    assert not ensure_dev_tls(paths).server_issued  # the current certificate still fits
    with pytest.raises(DevTlsError, match=r"key .* is missing"):
        ensure_dev_tls(paths, ["vault.example"])
    assert paths.ca_cert.read_bytes() == files[paths.ca_cert]


def test_server_names_follow_the_listen_address() -> None:
    assert server_names("127.0.0.1:50051") == ["localhost", "127.0.0.1", "::1"]
    assert server_names("[::1]:50051") == ["localhost", "127.0.0.1", "::1"]
    assert server_names("vault.internal:443")[-1] == "vault.internal"
    assert server_names("unix:/run/vault.sock") == ["localhost", "127.0.0.1", "::1"]
    wildcard = server_names("0.0.0.0:50051")
    assert len(wildcard) in (3, 4) and "0.0.0.0" not in wildcard  # plus this machine's name


# -- client side ------------------------------------------------------------------------------


def test_client_certificate_options_need_tls(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="go together"):
        VaultClient("127.0.0.1:1", ca_file=tmp_path / "ca.pem", client_cert_file="c.pem")
    with pytest.raises(ValueError, match="needs ca_file"):
        VaultClient("127.0.0.1:1", client_cert_file="c.pem", client_key_file="k.pem")


def test_the_cli_recognises_the_local_server() -> None:
    assert same_local_server("127.0.0.1:50051", "127.0.0.1:50051")
    assert same_local_server("localhost:50051", "127.0.0.1:50051")
    assert same_local_server("127.0.0.1:50051", "0.0.0.0:50051")
    assert same_local_server("[::1]:50051", "[::]:50051")
    assert not same_local_server("127.0.0.1:50052", "127.0.0.1:50051")
    assert not same_local_server("vault.example:50051", "0.0.0.0:50051")
    assert not same_local_server("unix:/tmp/other.sock", "unix:/tmp/vault.sock")
