"""Does the time a failed authentication takes tell whether the key id exists?

Starts a vault of its own (one worker, no throttling), then sends interleaved rounds of
failing GetKey calls over one connection and prints the median and spread of each kind:

- a bad signature under an existing access key id;
- a bad signature under one access key id that does not exist, sent again and again;
- a bad signature under a new, never issued access key id each time;
- a wrong token for an existing API key id, and a token for an API key id that does not exist.

Run: `.venv/bin/python -m bench.auth_timing [attempts per kind] [vault root]` (default 2000,
and this checkout). A vault root holds another version's `vault` and `softhsm` directories
(`git archive` of an older commit, plus a copy of `vault/gen`), to compare before and after
under the same load. Not part of `make bench`: it measures a security property, not
throughput.
"""

from __future__ import annotations

import secrets
import statistics
import string
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Final

import grpc

from tests.support.harness import ROOT, VaultServer, provision
from vault.client import AccessKeyCredentials
from vault.domain.identity import make_api_token
from vault.domain.signing import AUTHORIZATION_HEADER, sign_request
from vault.gen.vault.v1 import key_service_pb2

_GET_KEY: Final = "/vault.v1.KeyService/GetKey"
_BASE32: Final = string.ascii_uppercase + "234567"
_SETTINGS: Final = {
    "VAULT_SERVER__WORKERS": "1",
    "VAULT_AUTH__MAX_FAILURES_PER_ADDRESS": "100000000",
    "VAULT_AUTH__MAX_FAILURES_PER_KEY": "100000000",
}

Attempt = Callable[[], list[tuple[str, str]]]


def _random_key_id() -> str:
    return "VK" + "".join(secrets.choice(_BASE32) for _ in range(18))


def _signed(key_id: str, body: bytes) -> list[tuple[str, str]]:
    header = sign_request(
        _GET_KEY,
        key_id,
        secrets.token_urlsafe(32),
        int(time.time()),
        secrets.token_urlsafe(18),
        body,
    )
    return [(AUTHORIZATION_HEADER, header.render())]


def _bearer(api_key_id: str) -> list[tuple[str, str]]:
    return [(AUTHORIZATION_HEADER, f"Bearer {make_api_token(api_key_id, secrets.token_bytes(32))}")]


def _time_once(
    call: grpc.UnaryUnaryMultiCallable[bytes, bytes], body: bytes, metadata: list[tuple[str, str]]
) -> float:
    started = time.perf_counter()
    try:
        call(body, metadata=tuple(metadata), timeout=30)
    except grpc.RpcError as error:
        if error.code() is not grpc.StatusCode.UNAUTHENTICATED:
            raise
    else:
        raise AssertionError("a failing attempt was accepted")
    return (time.perf_counter() - started) * 1e6


def main(attempts: int, vault_root: Path) -> None:
    with tempfile.TemporaryDirectory(prefix="auth-timing-") as scratch:
        data_dir = Path(scratch)
        provision(data_dir, vault_root=vault_root)
        with (
            VaultServer(data_dir, extra_env=_SETTINGS, vault_root=vault_root) as server,
            server.client() as admin,
        ):
            account_id = f"t{secrets.token_hex(5)}"
            admin.create_account(account_id, display_name="timing")
            account = f"accounts/{account_id}"
            key = admin.create_key(account, "k", "ENCRYPT_DECRYPT").name
            access = admin.create_access_key(account)
            api = admin.create_api_key(account, [(["GetKey"], ["keys/*"])])
            known = AccessKeyCredentials(access.access_key.access_key_id, access.secret_key)
            body = key_service_pb2.GetKeyRequest(name=key).SerializeToString()
            unknown = _random_key_id()
            unknown_api = api.api_key.api_key_id[:-4] + "zzzz"
            kinds: dict[str, Attempt] = {
                "bad signature, existing access key id": lambda: _signed(known.access_key_id, body),
                "bad signature, one unknown access key id": lambda: _signed(unknown, body),
                "bad signature, new unknown access key id each time": lambda: _signed(
                    _random_key_id(), body
                ),
                "wrong token, existing API key id": lambda: _bearer(api.api_key.api_key_id),
                "token of an unknown API key id": lambda: _bearer(unknown_api),
            }
            samples: dict[str, list[float]] = {name: [] for name in kinds}
            with grpc.insecure_channel(server.target) as channel:
                call: grpc.UnaryUnaryMultiCallable[bytes, bytes] = channel.unary_unary(
                    _GET_KEY, request_serializer=None, response_deserializer=None
                )
                for round_number in range(attempts + 50):
                    order = list(kinds.items())
                    secrets.SystemRandom().shuffle(order)
                    for name, make in order:
                        metadata = make()
                        elapsed = _time_once(call, body, metadata)
                        if round_number >= 50:  # the first rounds only warm up
                            samples[name].append(elapsed)
    print(f"{attempts} attempts per kind, interleaved, one connection, one worker (us)")
    print(f"{'kind':<52} {'median':>8} {'p25':>8} {'p75':>8}")
    for name, values in samples.items():
        q1, median, q3 = statistics.quantiles(values, n=4)
        print(f"{name:<52} {median:8.0f} {q1:8.0f} {q3:8.0f}")


if __name__ == "__main__":
    main(
        int(sys.argv[1]) if len(sys.argv) > 1 else 2000,
        Path(sys.argv[2]).resolve() if len(sys.argv) > 2 else ROOT,
    )
