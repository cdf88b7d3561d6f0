"""SIGKILL while keys are being created: the restarted server reconciles store and token, no
key is lost, none is half-created, and no vault key object is left orphaned in the token.

Client threads create wrapped AES-256-GCM and P-256 keys and token-resident Ed25519 keys in a
loop. To catch a token-resident creation in the middle every time (not only by luck), a
token-resident RSA-4096 key, whose generation takes about a second on SoftHSM, is being
created (round 1) or rotated (round 2) when the whole process group is killed: the store then
holds a PENDING version that start-up reconciliation must discard. The kill comes at a
different moment in each round, and round 2 kills the server that round 1 restarted.
"""

from __future__ import annotations

import re
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import grpc
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa

from tests.support.api_calls import ensure_account
from tests.support.harness import VaultServer, inventory, provision
from vault.client import VaultClient, VaultClientError
from vault.gen.vault.v1 import resources_pb2 as res

ACCOUNT = "accounts/crash"
CREATORS = 4
# (purpose, algorithm, token_resident); creators cycle through these.
KINDS: dict[str, tuple[str, str, bool]] = {
    "aes": ("ENCRYPT_DECRYPT", "AES_256_GCM", False),
    "p256": ("SIGN_VERIFY", "EC_SIGN_P256_SHA256", False),
    "ed25519": ("SIGN_VERIFY", "EC_SIGN_ED25519", True),
}
SLOW = ("SIGN_VERIFY", "RSA_SIGN_PSS_4096_SHA256", True)
DISCARDED = re.compile(r"discarded half-created key version (\S+)")


@dataclass
class Attempt:
    name: str
    kind: str
    request_id: str
    started: float
    ended: float = 0.0
    error: VaultClientError | None = None


@dataclass
class Round:
    created: dict[str, str] = field(default_factory=dict)  # name -> kind, success returned
    in_doubt: list[Attempt] = field(default_factory=list)  # no answer because of the kill
    failed: list[Attempt] = field(default_factory=list)  # an error before the kill
    lock: threading.Lock = field(default_factory=threading.Lock)


def creator(server: VaultServer, tag: str, index: int, rnd: Round, stop: threading.Event) -> None:
    kinds = list(KINDS)
    with server.client(timeout=10) as client:
        n = 0
        while not stop.is_set():
            kind = kinds[(index + n) % len(kinds)]
            purpose, algorithm, resident = KINDS[kind]
            key_id = f"{kind}-{tag}-{index}-{n}"
            attempt = Attempt(f"{ACCOUNT}/keys/{key_id}", kind, uuid.uuid4().hex, time.time())
            n += 1
            try:
                client.create_key(
                    ACCOUNT, key_id, purpose, algorithm,
                    token_resident=resident, request_id=attempt.request_id,
                )  # fmt: skip
            except VaultClientError as error:
                attempt.ended, attempt.error = time.time(), error
                with rnd.lock:
                    rnd.in_doubt.append(attempt)
                return  # after a kill every call fails; the main thread sorts them out
            with rnd.lock:
                rnd.created[attempt.name] = kind


def wait_until(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.005)


def has_pending(client: VaultClient, name: str) -> bool:
    try:
        versions = client.list_key_versions(name)
    except VaultClientError as error:
        assert error.code is grpc.StatusCode.NOT_FOUND
        return False
    return any(v.state == res.VERSION_STATE_PENDING for v in versions)


def run_and_kill(
    server: VaultServer,
    tag: str,
    delay: float,
    slow_operation: Callable[[VaultClient], None],
    slow_key: str,
) -> tuple[Round, float]:
    """Creators run for about delay seconds; then slow_operation starts in a thread, and once
    slow_key shows a PENDING version the whole server is SIGKILLed. Returns the round and the
    kill time."""
    rnd = Round()
    stop = threading.Event()
    threads = [
        threading.Thread(target=creator, args=(server, tag, i, rnd, stop), daemon=True)
        for i in range(CREATORS)
    ]
    for thread in threads:
        thread.start()
    with server.client(timeout=10) as client:
        time.sleep(delay)
        slow_errors: list[VaultClientError] = []

        def slow() -> None:
            with server.client(timeout=30) as slow_client:
                try:
                    slow_operation(slow_client)
                except VaultClientError as error:
                    slow_errors.append(error)

        slow_thread = threading.Thread(target=slow, daemon=True)
        slow_thread.start()
        wait_until(lambda: has_pending(client, slow_key), 10, f"{slow_key} PENDING")
        killed_at = time.time()
        server.kill()
    stop.set()
    for thread in threads:
        thread.join(timeout=30)
    slow_thread.join(timeout=30)
    assert not any(t.is_alive() for t in [*threads, slow_thread]), "a client hung after the kill"
    assert slow_errors, "the slow operation finished although the server was killed during it"
    # An attempt that failed before the kill is a bug, not a crash effect.
    rnd.failed = [a for a in rnd.in_doubt if a.ended < killed_at]
    assert not rnd.failed, [(a.name, str(a.error)) for a in rnd.failed]
    assert all(a.error and a.error.code is grpc.StatusCode.UNAVAILABLE for a in rnd.in_doubt), [
        str(a.error) for a in rnd.in_doubt
    ]
    assert len(rnd.created) >= 20, f"only {len(rnd.created)} keys created before the kill"
    return rnd, killed_at


def check_key_works(client: VaultClient, key: res.Key) -> list[str]:
    """GetKey, ListKeyVersions (no PENDING, primary ENABLED) and one use of the primary."""
    problems: list[str] = []
    try:
        got = client.get_key(key.name)
        versions = client.list_key_versions(key.name)
        states = {v.name: res.VersionState.Name(v.state) for v in versions}
        if set(states.values()) != {"VERSION_STATE_ENABLED"}:
            problems.append(f"{key.name}: versions {states}")
        if states.get(got.primary_version) != "VERSION_STATE_ENABLED":
            problems.append(f"{key.name}: primary {got.primary_version} not in {states}")
        if got.state != res.KEY_STATE_ENABLED:
            problems.append(f"{key.name}: state {res.KeyState.Name(got.state)}")
        if got.purpose == res.PURPOSE_ENCRYPT_DECRYPT:
            plaintext = key.name.encode()
            sealed = client.encrypt(key.name, plaintext, aad=b"after-crash")
            opened = client.decrypt(key.name, sealed.ciphertext, aad=b"after-crash")
            if opened.plaintext != plaintext or sealed.key_version != got.primary_version:
                problems.append(f"{key.name}: encrypt/decrypt round trip differs")
        else:
            message = key.name.encode()
            signed = client.sign(key.name, message=message)
            public = serialization.load_pem_public_key(
                client.get_public_key(signed.key_version).pem.encode()
            )
            if signed.key_version != got.primary_version:
                problems.append(f"{key.name}: signed with {signed.key_version}")
            if isinstance(public, ed25519.Ed25519PublicKey):
                public.verify(signed.signature, message)
            elif isinstance(public, ec.EllipticCurvePublicKey):
                public.verify(signed.signature, message, ec.ECDSA(hashes.SHA256()))
            elif isinstance(public, rsa.RSAPublicKey):
                pss = padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=32)
                public.verify(signed.signature, message, pss, hashes.SHA256())
            else:
                problems.append(f"{key.name}: public key {type(public)}")
    except Exception as error:  # collected so that one run reports every broken key
        problems.append(f"{key.name}: {type(error).__name__}: {error}")
    return problems


def verify_after_restart(
    server: VaultServer,
    rounds: list[Round],
    slow_names: dict[str, int],
) -> dict[str, res.Key]:
    """Everything the test asserts about a restarted server; returns the listed keys."""
    log = server.log()
    assert "Traceback" not in log, log
    assert "unexpected" not in log, log
    assert "store and token differ" not in log, log
    discarded = set(DISCARDED.findall(log))
    for slow_key, version in slow_names.items():
        assert f"{slow_key}/versions/{version}" in discarded, log

    with server.client(timeout=30) as client:
        listed = {key.name: key for key in client.iter_keys(ACCOUNT, page_size=50)}
        confirmed = {name: kind for rnd in rounds for name, kind in rnd.created.items()}
        lost = sorted(set(confirmed) - set(listed))
        assert not lost, f"keys created before a kill are gone: {lost}"
        # A discarded version belonged to a create or rotate that never answered.
        assert not discarded & {f"{name}/versions/1" for name in confirmed}

        with ThreadPoolExecutor(8) as pool:
            problems = [
                p for found in pool.map(lambda k: check_key_works(client, k), listed.values())
                for p in found
            ]  # fmt: skip
        assert not problems, "\n".join(problems[:40])

        # A create that got no answer is retried with its request id: it returns the key if
        # it had been committed and creates it otherwise, and either way the key works.
        for attempt in [a for rnd in rounds for a in rnd.in_doubt]:
            if attempt.name in listed:
                continue
            purpose, algorithm, resident = KINDS[attempt.kind]
            key = client.create_key(
                ACCOUNT, attempt.name.rsplit("/", 1)[1], purpose, algorithm,
                token_resident=resident, request_id=attempt.request_id,
            )  # fmt: skip
            assert key.name == attempt.name
            assert not check_key_works(client, key)
            listed[key.name] = key
        for attempt in [a for rnd in rounds for a in rnd.in_doubt]:
            again = client.create_key(
                ACCOUNT, attempt.name.rsplit("/", 1)[1], KINDS[attempt.kind][0],
                KINDS[attempt.kind][1], token_resident=KINDS[attempt.kind][2],
                request_id=attempt.request_id,
            )  # fmt: skip
            assert (
                again.name == attempt.name and again.create_time == listed[again.name].create_time
            )

    # The token holds exactly the material of the live token-resident versions.
    token, versions = inventory(server.data_dir, sorted(listed))
    live = {label for state, label in versions.values() if label and state != "DESTROYED"}
    assert token == live, f"orphaned: {sorted(token - live)}, missing: {sorted(live - token)}"
    # Counted independently through the API: one token object per version of each
    # token-resident key (none is destroyed in this test).
    with server.client(timeout=30) as client:
        resident = [k.name for k in listed.values() if k.token_resident]
        with ThreadPoolExecutor(8) as pool:
            counts = list(pool.map(lambda name: len(client.list_key_versions(name)), resident))
    assert len(token) == sum(counts) >= len(resident) > 0
    return listed


def test_sigkill_during_key_creation(tmp_path: Path) -> None:
    started = time.monotonic()
    provision(tmp_path)
    server = VaultServer(tmp_path).start()
    try:
        # Round 2 rotates this key; its first version exists before any kill.
        with server.client(timeout=60) as client:
            ensure_account(client, ACCOUNT)
            rotated = client.create_key(ACCOUNT, "slow-rotated", *SLOW[:2], token_resident=True)

        # Round 1: killed while a token-resident key's first version is being generated.
        slow_created = f"{ACCOUNT}/keys/slow-created"
        round1, _ = run_and_kill(
            server,
            "r1",
            delay=0.8,
            slow_operation=lambda c: c.create_key(
                ACCOUNT, "slow-created", *SLOW[:2], token_resident=True
            ),
            slow_key=slow_created,
        )
        server = VaultServer(tmp_path).start()
        listed = verify_after_restart(server, [round1], {slow_created: 1})
        assert slow_created not in listed  # discarded with its only version
        assert rotated.name in listed

        # Round 2: killed later, while the restarted server rotates a token-resident key.
        round2, _ = run_and_kill(
            server,
            "r2",
            delay=1.6,
            slow_operation=lambda c: c.rotate_key(rotated.name),
            slow_key=rotated.name,
        )
        server = VaultServer(tmp_path).start()
        listed = verify_after_restart(server, [round1, round2], {rotated.name: 2})
        with server.client() as client:
            # The discarded version 2 is gone and the key is back on version 1.
            key = client.get_key(rotated.name)
            assert key.primary_version == f"{rotated.name}/versions/1"
            assert [v.name for v in client.list_key_versions(rotated.name)] == [
                f"{rotated.name}/versions/1"
            ]
            # And it can rotate again: the retried rotation gets version 2.
            assert client.rotate_key(rotated.name).primary_version.endswith("/versions/2")
        in_doubt = sum(len(r.in_doubt) for r in (round1, round2))
        print(
            f"round 1: {len(round1.created)} created, round 2: {len(round2.created)} created, "
            f"{in_doubt} in doubt at the kills, {len(listed)} keys at the end, "
            f"{time.monotonic() - started:.1f} s"
        )
    finally:
        server.stop()
    assert server.process is not None and server.process.returncode == 0
