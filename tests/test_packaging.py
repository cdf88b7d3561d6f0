"""The SDK as another service installs it: the wheel and sdist carry the generated gRPC code, and
the wheel installed without extras into a fresh virtual environment is a working client (and
nothing of the server) against a real TLS vault.

One build, one environment and one server for the module: building and installing take most
of its time (pip's cache makes the installs local)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tarfile
import time
import zipfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tests.support.harness import ROOT, VaultServer, provision
from vault.config import DevTlsPaths
from vault.tls_dev import ensure_dev_tls

# Distributions (and their import names) only the server and vaultctl use: the `server` extra.
SERVER_ONLY = {
    "python-pkcs11": "pkcs11",
    "sqlalchemy": "sqlalchemy",
    "alembic": "alembic",
    "pydantic": "pydantic",
    "pydantic-settings": "pydantic_settings",
    "click": "click",
    "rich": "rich",
    "tenacity": "tenacity",
    "grpcio-health-checking": "grpc_health",
    "grpcio-reflection": "grpc_reflection",
    "grpcio-tools": "grpc_tools",
}
GENERATED = [
    f"vault/gen/vault/v1/{proto}{suffix}"
    for proto in (
        "resources",
        "key_service",
        "crypto_service",
        "identity_service",
        "bucket_service",
    )
    for suffix in ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py")
]

# Runs in the fresh environment: python -I, so neither the checkout nor PYTHONPATH is on
# sys.path. argv: target, CA file, credentials file. Prints what it observed as JSON.
SDK_SCRIPT = """
import json, sys
from pathlib import Path
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
import vault.client
from vault.client import ObjectCipher, ObjectIntegrityError, VaultClient, load_credentials_file

def verifies(public_key, signature, message):
    try:
        public_key.verify(signature, message, ec.ECDSA(hashes.SHA256()))
    except InvalidSignature:
        return False
    return True

target, ca_file, credentials_file = sys.argv[1:4]
seen = {"sdk": vault.client.__file__}
credentials = load_credentials_file(Path(credentials_file))
with VaultClient(target, ca_file=ca_file, credentials=credentials) as vault:
    vault.create_account("sdk")  # keys and buckets are made in an existing account
    key = vault.create_key("accounts/sdk", "orders", "ENCRYPT_DECRYPT")
    sealed = vault.encrypt(key.name, b"secret", aad=b"order-42")
    seen["decrypted"] = vault.decrypt(
        key.name, sealed.ciphertext, aad=b"order-42"
    ).plaintext.decode()

    signer = vault.create_key(
        "accounts/sdk", "release", "SIGN_VERIFY", "EC_SIGN_P256_SHA256"
    ).name
    signature = vault.sign(signer, message=b"release 1.2.3").signature
    public_key = serialization.load_pem_public_key(vault.get_public_key(signer).pem.encode())
    seen["verified"] = verifies(public_key, signature, b"release 1.2.3")
    seen["forgery_verified"] = verifies(public_key, signature, b"release 1.2.4")
    seen["vault_verified"] = bool(vault.verify(signer, signature, message=b"release 1.2.3"))

    # The VaultClient is the BucketKeySource: bucket keys from the vault's BucketService.
    photos = vault.create_bucket("accounts/sdk", "photos").name
    data = bytes(range(256)) * 5000
    writer = ObjectCipher(vault, photos)
    sealed_object = writer.encrypt("cat", data)
    writer.encrypt("dog", data)
    seen["writer_vault_calls"] = writer.cache.stats().generate_calls
    # A fresh cipher has nothing cached: decrypting asks the vault to unwrap the bucket key.
    reader = ObjectCipher(vault, photos)
    seen["object_round_trip"] = reader.decrypt("cat", sealed_object) == data
    seen["reader_vault_calls"] = reader.cache.stats().decrypt_calls
    other = vault.create_bucket("accounts/sdk", "backups").name
    try:
        ObjectCipher(vault, other).decrypt("cat", sealed_object)
    except ObjectIntegrityError as error:
        seen["other_bucket"] = type(error).__name__
print(json.dumps(seen))
"""

_FIND = """
import importlib.util, json, sys
print(json.dumps({name: importlib.util.find_spec(name) is not None for name in sys.argv[1:]}))
"""


def clean_env() -> dict[str, str]:
    """The environment of a process of another service: none of the vault's settings, no
    PYTHONPATH pointing into the checkout, no activated virtual environment."""
    return {
        key: value
        for key, value in os.environ.items()
        if not key.startswith("VAULT_")
        and key not in ("PYTHONPATH", "VIRTUAL_ENV", "SOFTHSM2_CONF")
    }


def run(args: list[Any], *, cwd: Path, env: Mapping[str, str] | None = None) -> str:
    done = subprocess.run(
        [str(arg) for arg in args],
        cwd=cwd,
        env=env if env is not None else clean_env(),
        capture_output=True,
        text=True,
        timeout=600,
        stdin=subprocess.DEVNULL,
    )
    assert done.returncode == 0, f"{args[:2]}:\n{done.stdout}\n{done.stderr}"
    return done.stdout


@dataclass(frozen=True)
class Dists:
    sdist: Path
    wheel: Path  # built from the sdist, in an isolated build environment
    checkout_wheel: Path  # built from the tracked files of the checkout alone


@pytest.fixture(scope="module")
def dists(tmp_path_factory: pytest.TempPathFactory) -> Dists:
    out = tmp_path_factory.mktemp("dist")
    # Without --sdist/--wheel, build makes the sdist and then the wheel from the sdist.
    run([sys.executable, "-m", "build", "--outdir", out, ROOT], cwd=ROOT)
    (sdist,) = out.glob("vault-*.tar.gz")
    (wheel,) = out.glob("vault-*.whl")

    # A clean checkout: the files git tracks (or would), without vault/gen or the venv.
    checkout = tmp_path_factory.mktemp("checkout")
    listed = run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT)
    for name in filter(None, listed.split("\0")):
        if (ROOT / name).is_file():
            (checkout / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, checkout / name)
    assert not (checkout / "vault" / "gen").exists()
    checkout_out = tmp_path_factory.mktemp("checkout-dist")
    # This environment has the build requirements (dev extra): no second isolated build.
    run(
        [sys.executable, "-m", "build", "--wheel", "--no-isolation", "--outdir", checkout_out],
        cwd=checkout,
    )
    (checkout_wheel,) = checkout_out.glob("vault-*.whl")
    return Dists(sdist, wheel, checkout_wheel)


@pytest.fixture(scope="module")
def sdk_venv(dists: Dists, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh virtual environment with the wheel installed without extras; its bin/."""
    venv = tmp_path_factory.mktemp("sdk-venv")
    run([sys.executable, "-m", "venv", venv], cwd=venv)
    bin_dir = venv / "bin"
    run([bin_dir / "python", "-m", "pip", "install", "--no-input", dists.wheel], cwd=venv)
    return bin_dir


class TlsVault(VaultServer):
    """A vault serving TLS with the development CA, whose readiness check speaks TLS."""

    def __init__(self, data_dir: Path) -> None:
        super().__init__(data_dir, {"VAULT_SERVER__WORKERS": "1"})
        self.ca_file = ensure_dev_tls(DevTlsPaths(data_dir / "tls")).paths.ca_cert

    def wait_serving(self, timeout: float) -> None:
        credentials = grpc.ssl_channel_credentials(self.ca_file.read_bytes())
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.process is not None
            if self.process.poll() is not None:
                raise RuntimeError(f"vault server exited early:\n{self.log()}")
            if "vault serving on" in self.log():
                with grpc.secure_channel(self.target, credentials) as channel:
                    try:
                        reply = health_pb2_grpc.HealthStub(channel).Check(
                            health_pb2.HealthCheckRequest(service=""), timeout=2.0
                        )
                    except grpc.RpcError:
                        pass
                    else:
                        if reply.status == health_pb2.HealthCheckResponse.SERVING:
                            return
            time.sleep(0.2)
        raise RuntimeError(f"vault server not serving after {timeout}s:\n{self.log()}")


@pytest.fixture(scope="module")
def tls_vault(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TlsVault]:
    data_dir = tmp_path_factory.mktemp("vault-sdk")
    provision(data_dir)
    with TlsVault(data_dir) as server:
        yield server


def test_sdist_carries_the_protos_and_no_generated_code(dists: Dists) -> None:
    with tarfile.open(dists.sdist) as sdist:
        names = {name.split("/", 1)[1] for name in sdist.getnames() if "/" in name}
    for proto in (
        "resources",
        "key_service",
        "crypto_service",
        "identity_service",
        "bucket_service",
    ):
        assert f"proto/vault/v1/{proto}.proto" in names
    assert {"setup.py", "scripts/gen_proto.py", "vault/client/__init__.py"} <= names
    assert not [name for name in names if name.startswith("vault/gen")]


@pytest.mark.parametrize("built", ["wheel", "checkout_wheel"])
def test_wheels_contain_the_generated_code(dists: Dists, built: str) -> None:
    with zipfile.ZipFile(getattr(dists, built)) as wheel:
        names = set(wheel.namelist())
    assert set(GENERATED) <= names
    assert {"vault/gen/__init__.py", "vault/py.typed", "vault/client/__init__.py"} <= names


def test_a_plain_install_pulls_no_server_dependency(sdk_venv: Path, tmp_path: Path) -> None:
    installed = json.loads(
        run(
            [sdk_venv / "python", "-I", "-c", _FIND, *SERVER_ONLY.values(), "grpc", "vault"],
            cwd=tmp_path,
        )
    )
    assert installed == {**dict.fromkeys(SERVER_ONLY.values(), False), "grpc": True, "vault": True}


def test_vaultctl_without_the_server_extra_says_what_to_install(
    sdk_venv: Path, tmp_path: Path
) -> None:
    done = subprocess.run(
        [sdk_venv / "vaultctl", "keys", "list", "acme"],
        cwd=tmp_path,
        env=clean_env(),
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )
    assert done.returncode == 4
    assert done.stdout == ""
    (line,) = done.stderr.splitlines()
    assert line.startswith("vaultctl: error: ")
    assert "pip install 'vault[server]'" in line
    assert "python-pkcs11" in line and "click" in line


def test_the_installed_sdk_talks_to_a_real_vault_over_tls(
    sdk_venv: Path, tls_vault: TlsVault, tmp_path: Path
) -> None:
    seen = json.loads(
        run(
            [
                sdk_venv / "python",
                "-I",
                "-c",
                SDK_SCRIPT,
                tls_vault.target,
                tls_vault.ca_file,
                tls_vault.data_dir / "admin-credentials.json",
            ],
            cwd=tmp_path,
        )
    )
    assert Path(seen.pop("sdk")).is_relative_to(sdk_venv.parent)
    assert seen == {
        "decrypted": "secret",
        "verified": True,
        "forgery_verified": False,
        "vault_verified": True,
        "writer_vault_calls": 1,
        "object_round_trip": True,
        "reader_vault_calls": 1,
        "other_bucket": "ObjectIntegrityError",
    }
