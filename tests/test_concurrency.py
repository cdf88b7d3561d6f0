"""Many clients at once against one real server: no crash, no wrong result, every key
accounted for; and the races the stress test can only hit by chance, made deterministic.

The stress test runs THREADS client threads (each with its own VaultClient, so their
connections spread over both worker processes) for DURATION_S seconds. They share every key,
so they race each other: a key one thread encrypts with may be disabled or destroyed by
another. Every response that carries a Key is recorded as an observation (update_time,
state); the store serialises writes with an etag, so the latest observation is the state the
key must end in (DESTROY_SCHEDULED ending as DESTROYED, as the waiting period is 0 s).
"""

from __future__ import annotations

import hashlib
import random
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import grpc
import pytest
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, utils

from tests.support.api_calls import ensure_account
from tests.support.harness import ROOT, VaultServer, inventory, provision, vault_environment
from vault.client import VaultClient, VaultClientError
from vault.gen.vault.v1 import resources_pb2 as res

ACCOUNT = "accounts/stress"
THREADS = 10
DURATION_S = 20.0
MAX_KEYS = 400
# Three bugs around token-resident keys (see the deterministic tests at the end of this
# file) show up here by chance; they are counted and printed instead of failing the stress
# test. Set to False once those tests pass.
TOLERATE_KNOWN_BUGS = False
HOT_KEYS = 6

# kind: (purpose, algorithm, token_resident)
KINDS: dict[str, tuple[str, str, bool]] = {
    "aes": ("ENCRYPT_DECRYPT", "AES_256_GCM", False),
    "p256": ("SIGN_VERIFY", "EC_SIGN_P256_SHA256", False),
    "hmac": ("MAC", "HMAC_SHA256", False),
    "ed25519": ("SIGN_VERIFY", "EC_SIGN_ED25519", True),
}
STATE_NAMES = {value: name.removeprefix("KEY_STATE_") for name, value in res.KeyState.items()}
NOT_ENABLED = {"DISABLED", "REVOKED", "DESTROY_SCHEDULED", "DESTROYED"}
WRITES = {"create", "rotate", "enable", "disable", "schedule"}


def worker_pids(server: VaultServer) -> set[int]:
    assert server.process is not None
    children: set[int] = set()
    for task in Path(f"/proc/{server.process.pid}/task").iterdir():
        try:
            children.update(int(pid) for pid in (task / "children").read_text().split())
        except FileNotFoundError:
            continue  # the thread ended while we looked
    return children


def check_signature(pem: str, algorithm: str, signature: bytes, data: bytes, digest: bool) -> None:
    """Raise InvalidSignature unless signature verifies with cryptography."""
    public = serialization.load_pem_public_key(pem.encode())
    if isinstance(public, ed25519.Ed25519PublicKey):
        assert algorithm == "EC_SIGN_ED25519" and not digest
        public.verify(signature, data)
    elif isinstance(public, ec.EllipticCurvePublicKey):
        assert algorithm == "EC_SIGN_P256_SHA256" and public.curve.name == "secp256r1"
        chosen: Any = utils.Prehashed(hashes.SHA256()) if digest else hashes.SHA256()
        public.verify(signature, data, ec.ECDSA(chosen))
    else:
        raise AssertionError(f"unexpected public key type {type(public)}")


# -- the stress test -------------------------------------------------------------------------


@dataclass
class Tracked:
    name: str
    kind: str
    # (update_time in ns, state name, what returned it)
    observations: list[tuple[int, str, str]] = field(default_factory=list)
    samples: list[tuple[bytes, bytes, bytes]] = field(default_factory=list)  # ct, aad, pt


class Ledger:
    """What the threads created, saw and expect; every method is thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.keys: dict[str, Tracked] = {}
        self.ops: Counter[str] = Counter()
        self.expected_errors: Counter[str] = Counter()
        self.unexpected: list[str] = []
        self.wrong: list[str] = []

    def add(self, kind: str, key: res.Key, thread: str) -> None:
        with self._lock:
            self.keys[key.name] = Tracked(key.name, kind)
        self.observe(key, "create", thread)

    def observe(self, key: res.Key, op: str, thread: str) -> None:
        with self._lock:
            tracked = self.keys[key.name]
            tracked.observations.append(
                (key.update_time.ToNanoseconds(), STATE_NAMES[key.state], f"{op}@{thread}")
            )

    def pick(self, rng: random.Random, kinds: tuple[str, ...]) -> Tracked | None:
        """A random key of one of kinds; half the time one of the newest few, so that
        threads collide on the same keys often."""
        with self._lock:
            names = [name for name, key in self.keys.items() if key.kind in kinds]
            if not names:
                return None
            if rng.random() < 0.5:
                names = names[-HOT_KEYS:]
            return self.keys[rng.choice(names)]

    def sample(self, tracked: Tracked, entry: tuple[bytes, bytes, bytes]) -> None:
        with self._lock:
            if len(tracked.samples) < 4:
                tracked.samples.append(entry)

    def count(self, what: str) -> None:
        with self._lock:
            self.ops[what] += 1

    def error(self, op: str, tracked: Tracked | None, error: VaultClientError) -> None:
        write = op in WRITES
        state = error.metadata.get("state", "")
        with self._lock:
            if (
                error.code is grpc.StatusCode.FAILED_PRECONDITION
                and error.reason == "WRONG_KEY_STATE"
                and state in NOT_ENABLED
            ):
                self.expected_errors[f"{op}: FAILED_PRECONDITION WRONG_KEY_STATE ({state})"] += 1
            elif (
                write
                and error.code is grpc.StatusCode.ABORTED
                and error.reason == "CONCURRENT_MODIFICATION"
            ):
                self.expected_errors[f"{op}: ABORTED CONCURRENT_MODIFICATION"] += 1
            elif (
                TOLERATE_KNOWN_BUGS
                and tracked is not None
                and KINDS[tracked.kind][2]
                and error.code is grpc.StatusCode.NOT_FOUND
                and error.message == "key version not found"
            ):
                # Known bug (see test_sign_while_a_token_resident_key_rotates): while a
                # token-resident version is generated, the key's primary is the PENDING version.
                self.expected_errors[f"{op}: NOT_FOUND during resident rotation (BUG)"] += 1
            elif (
                TOLERATE_KNOWN_BUGS
                and tracked is not None
                and KINDS[tracked.kind][2]
                and error.reason == "TOKEN_OPERATION_FAILED"
                and "MultipleObjectsReturned" in error.message
            ):
                # Known bug (see test_token_resident_keys_while_another_process_changes_the_token):
                # SoftHSM can list one token object twice in a process.
                self.expected_errors[f"{op}: MultipleObjectsReturned (BUG)"] += 1
            else:
                name = tracked.name if tracked else "-"
                self.unexpected.append(f"{op} {name}: {error} {error.metadata}")

    def wrong_result(self, text: str) -> None:
        with self._lock:
            self.wrong.append(text)


class StressThread(threading.Thread):
    def __init__(
        self, index: int, server: VaultServer, ledger: Ledger, stop: threading.Event
    ) -> None:
        super().__init__(name=f"stress-{index}", daemon=True)
        self.index = index
        self.server = server
        self.ledger = ledger
        self.stop = stop
        self.rng = random.Random(1000 + index)
        self.created = 0
        self.crashed: BaseException | None = None

    def run(self) -> None:
        operations: list[tuple[float, Callable[[VaultClient], None]]] = [
            (0.6, self.create),
            (3.0, self.encrypt_decrypt),
            (3.0, self.sign_verify),
            (2.0, self.mac),
            (0.8, self.rotate),
            (0.6, self.disable),
            (0.8, self.enable),
            (0.15, self.schedule),
            (0.4, self.list_enabled),
        ]
        weights = [weight for weight, _ in operations]
        try:
            with self.server.client(timeout=30) as client:
                while not self.stop.is_set():
                    (_, operation) = self.rng.choices(operations, weights)[0]
                    operation(client)
        except BaseException as error:  # reported by the test, not lost in the thread
            self.crashed = error

    # Each operation: pick a key, call, check the result, classify any error.

    def _attempt(self, op: str, tracked: Tracked | None, call: Callable[[], None]) -> None:
        try:
            call()
            self.ledger.count(f"{op} ok")
        except VaultClientError as error:
            self.ledger.count(f"{op} error")
            self.ledger.error(op, tracked, error)

    def create(self, client: VaultClient) -> None:
        if len(self.ledger.keys) >= MAX_KEYS:
            return
        kind = self.rng.choice(list(KINDS))
        purpose, algorithm, resident = KINDS[kind]
        key_id = f"{kind}-{self.index}-{self.created}"
        self.created += 1

        def call() -> None:
            key = client.create_key(
                ACCOUNT, key_id, purpose, algorithm, token_resident=resident,
                labels={"kind": kind, "thread": str(self.index)},
            )  # fmt: skip
            if key.state != res.KEY_STATE_ENABLED or not key.primary_version.endswith("/1"):
                self.ledger.wrong_result(f"create {key_id}: {key}")
            self.ledger.add(kind, key, self.name)

        self._attempt("create", None, call)

    def encrypt_decrypt(self, client: VaultClient) -> None:
        tracked = self.ledger.pick(self.rng, ("aes",))
        if tracked is None:
            return
        plaintext = self.rng.randbytes(self.rng.randint(0, 2048))
        aad = self.rng.randbytes(self.rng.randint(0, 64))

        def call() -> None:
            sealed = client.encrypt(tracked.name, plaintext, aad=aad)
            if not sealed.key_version.startswith(tracked.name + "/versions/"):
                self.ledger.wrong_result(f"encrypt {tracked.name}: {sealed.key_version}")
            opened = client.decrypt(tracked.name, sealed.ciphertext, aad=aad)
            if opened.plaintext != plaintext or opened.key_version != sealed.key_version:
                self.ledger.wrong_result(f"decrypt {tracked.name}: round trip differs")
            self.ledger.sample(tracked, (sealed.ciphertext, aad, plaintext))
            try:
                client.decrypt(tracked.name, sealed.ciphertext, aad=aad + b"!")
                self.ledger.wrong_result(f"decrypt {tracked.name}: wrong AAD accepted")
            except VaultClientError as error:
                if error.reason != "DECRYPTION_FAILED":
                    raise

        self._attempt("encrypt_decrypt", tracked, call)

    def sign_verify(self, client: VaultClient) -> None:
        tracked = self.ledger.pick(self.rng, ("p256", "ed25519"))
        if tracked is None:
            return
        message = self.rng.randbytes(self.rng.randint(0, 4096))
        use_digest = tracked.kind == "p256" and self.rng.random() < 0.3
        data = hashlib.sha256(message).digest() if use_digest else message

        def call() -> None:
            if use_digest:
                signed = client.sign(tracked.name, digest=data)
            else:
                signed = client.sign(tracked.name, message=data)
            if not signed.key_version.startswith(tracked.name + "/versions/"):
                self.ledger.wrong_result(f"sign {tracked.name}: {signed.key_version}")
            public = client.get_public_key(signed.key_version)
            algorithm = KINDS[tracked.kind][1]
            if public.name != signed.key_version or res.Algorithm.Name(public.algorithm) != (
                "ALGORITHM_" + algorithm
            ):
                self.ledger.wrong_result(f"public key {signed.key_version}: {public.name}")
            try:
                check_signature(public.pem, algorithm, signed.signature, data, use_digest)
            except InvalidSignature:
                self.ledger.wrong_result(f"sign {signed.key_version}: signature does not verify")
            kwargs = {"digest" if use_digest else "message": data}
            if not client.verify(signed.key_version, signed.signature, **kwargs).valid:
                self.ledger.wrong_result(f"verify {signed.key_version}: valid=false")
            tampered = bytes([data[0] ^ 1]) + data[1:] if data else b"x"
            other = {"digest" if use_digest else "message": tampered}
            if client.verify(signed.key_version, signed.signature, **other).valid:
                self.ledger.wrong_result(f"verify {signed.key_version}: tampered data valid")

        self._attempt("sign_verify", tracked, call)

    def mac(self, client: VaultClient) -> None:
        tracked = self.ledger.pick(self.rng, ("hmac",))
        if tracked is None:
            return
        data = self.rng.randbytes(self.rng.randint(0, 1024))

        def call() -> None:
            mac = client.generate_mac(tracked.name, data)
            if len(mac.mac) != 32:
                self.ledger.wrong_result(f"mac {tracked.name}: {len(mac.mac)} bytes")
            if not client.verify_mac(mac.key_version, data, mac.mac).valid:
                self.ledger.wrong_result(f"verify_mac {mac.key_version}: valid=false")
            if client.verify_mac(mac.key_version, data + b"!", mac.mac).valid:
                self.ledger.wrong_result(f"verify_mac {mac.key_version}: other data valid")

        self._attempt("mac", tracked, call)

    def _write(self, op: str, kinds: tuple[str, ...], call: Callable[[str], res.Key]) -> None:
        tracked = self.ledger.pick(self.rng, kinds)
        if tracked is None:
            return

        def attempt() -> None:
            key = call(tracked.name)
            self.ledger.observe(key, op, self.name)

        self._attempt(op, tracked, attempt)

    def rotate(self, client: VaultClient) -> None:
        self._write("rotate", tuple(KINDS), client.rotate_key)

    def disable(self, client: VaultClient) -> None:
        self._write("disable", tuple(KINDS), client.disable_key)

    def enable(self, client: VaultClient) -> None:
        self._write("enable", tuple(KINDS), client.enable_key)

    def schedule(self, client: VaultClient) -> None:
        self._write(
            "schedule",
            tuple(KINDS),
            lambda name: client.schedule_key_destruction(name, timedelta(0)),
        )

    def list_enabled(self, client: VaultClient) -> None:
        def call() -> None:
            page = client.list_keys(ACCOUNT, state="ENABLED", page_size=50)
            for key in page.keys:
                if key.state != res.KEY_STATE_ENABLED:
                    self.ledger.wrong_result(f"list state=ENABLED returned {key.name} {key.state}")

        self._attempt("list", None, call)


def expected_state(tracked: Tracked) -> str:
    ordered = sorted(tracked.observations)
    last_time, last_state, _ = ordered[-1]
    same_time = {state for when, state, _ in ordered if when == last_time}
    assert len(same_time) == 1, f"{tracked.name}: two states at one update_time: {ordered}"
    return "DESTROYED" if last_state == "DESTROY_SCHEDULED" else last_state


@pytest.fixture
def stress_server(tmp_path: Path) -> Iterator[VaultServer]:
    provision(tmp_path)
    with VaultServer(tmp_path) as server:
        yield server


def test_mixed_operations_stress(stress_server: VaultServer) -> None:
    server = stress_server
    workers_before = worker_pids(server)
    assert len(workers_before) == 2
    ledger = Ledger()
    with server.client() as client:
        ensure_account(client, ACCOUNT)
        for kind, (purpose, algorithm, resident) in KINDS.items():
            for n in range(3):
                key = client.create_key(
                    ACCOUNT, f"{kind}-seed-{n}", purpose, algorithm, token_resident=resident
                )
                ledger.add(kind, key, "main")

        stop = threading.Event()
        threads = [StressThread(i, server, ledger, stop) for i in range(THREADS)]
        started = time.monotonic()
        for thread in threads:
            thread.start()
        time.sleep(DURATION_S)
        stop.set()
        for thread in threads:
            thread.join(timeout=60)
        elapsed = time.monotonic() - started

        assert not [t.name for t in threads if t.is_alive()], "client threads hung"
        crashed = {t.name: repr(t.crashed) for t in threads if t.crashed is not None}
        assert not crashed, crashed
        summary = (
            f"{len(ledger.keys)} keys, {sum(ledger.ops.values())} operations in {elapsed:.1f} s\n"
            f"operations: {dict(sorted(ledger.ops.items()))}\n"
            f"expected errors: {dict(sorted(ledger.expected_errors.items()))}"
        )
        print(summary)
        # The server and both workers survived, none restarted.
        assert server.process is not None and server.process.poll() is None, server.log()
        assert worker_pids(server) == workers_before, server.log()[-5000:]
        log = server.log()
        assert not ledger.wrong, "\n".join(ledger.wrong[:50])
        assert not ledger.unexpected, (
            "\n".join(ledger.unexpected[:50]) + f"\n{summary}\nserver log:\n{log[-3000:]}"
        )
        assert sum(ledger.ops.values()) > 1000, summary

        expected = {name: expected_state(tracked) for name, tracked in ledger.keys.items()}
        must_die = {name for name, state in expected.items() if state == "DESTROYED"}
        deadline = time.monotonic() + 15
        while True:
            listed_keys = list(client.iter_keys(ACCOUNT, page_size=17))
            listed = {key.name: key for key in listed_keys}
            dying = [n for n in must_die if listed[n].state != res.KEY_STATE_DESTROYED]
            if not dying or time.monotonic() > deadline:
                break
            time.sleep(0.25)
        assert not dying, f"never destroyed: {dying}"

        # Every key accounted for, none twice, none extra, each in the state expected.
        assert len(listed_keys) == len(listed)
        assert set(listed) == set(ledger.keys)
        wrong_state = {
            name: (STATE_NAMES[listed[name].state], state, sorted(ledger.keys[name].observations))
            for name, state in expected.items()
            if STATE_NAMES[listed[name].state] != state
        }
        assert not wrong_state, wrong_state
        by_state = Counter(STATE_NAMES[key.state] for key in listed_keys)
        print(f"final states: {dict(by_state)}")
        assert by_state["DESTROYED"] > 0 and by_state["ENABLED"] > 0

        def check_key(key: res.Key) -> list[str]:
            return final_check(client, key, ledger.keys[key.name])

        with ThreadPoolExecutor(8) as pool:
            problems = [p for found in pool.map(check_key, listed_keys) for p in found]
        known = [p for p in problems if p.startswith("KNOWN BUG")]
        problems = [p for p in problems if not p.startswith("KNOWN BUG")]
        assert not problems, "\n".join(problems[:50])
        print("\n".join(known))
        survivors = {p.split()[2].rstrip(":") for p in known}

    # The token holds exactly the material of the live token-resident versions.
    token, versions = inventory(server.data_dir, sorted(listed))
    live = {label for state, label in versions.values() if label and state != "DESTROYED"}
    # A version that survived a destruction (the known bug above) is ENABLED in the store;
    # depending on the interleaving its token object was destroyed or not.
    ambiguous = {
        label
        for version, (_, label) in versions.items()
        if label and version.split("/versions/")[0] in survivors
    }
    assert token - ambiguous == live - ambiguous, (
        f"orphaned: {sorted(token - live)}, missing: {sorted(live - token)}"
    )
    resident_destroyed = [n for n in must_die if ledger.keys[n].kind == "ed25519"]
    print(f"token objects: {len(token)}; destroyed token-resident keys: {len(resident_destroyed)}")

    log = server.log()
    assert "Traceback" not in log, log
    assert "unexpected" not in log, log


def final_check(client: VaultClient, key: res.Key, tracked: Tracked) -> list[str]:
    """Versions consistent with the key's state; old ciphertexts still open on live keys."""
    problems: list[str] = []
    versions = client.list_key_versions(key.name)
    numbers = [int(v.name.rsplit("/", 1)[1]) for v in versions]
    states = [res.VersionState.Name(v.state) for v in versions]
    primary = int(key.primary_version.rsplit("/", 1)[1])
    if numbers != list(range(1, len(numbers) + 1)) or primary != numbers[-1]:
        problems.append(f"{key.name}: versions {numbers}, primary {primary}")
    if key.state == res.KEY_STATE_DESTROYED:
        survivor = ["VERSION_STATE_DESTROYED"] * (len(states) - 1) + ["VERSION_STATE_ENABLED"]
        if TOLERATE_KNOWN_BUGS and KINDS[tracked.kind][2] and states == survivor:
            # Known bug (test_destruction_racing_a_token_resident_rotation): the key was
            # destroyed while its newest version was being generated in the token.
            problems.append(f"KNOWN BUG {key.name}: a version survived the destruction")
        elif set(states) != {"VERSION_STATE_DESTROYED"}:
            problems.append(f"{key.name}: DESTROYED key with versions {states}")
        use: dict[str, Callable[[], object]] = {
            "aes": lambda: client.encrypt(key.name, b"x"),
            "p256": lambda: client.get_public_key(key.name),
            "ed25519": lambda: client.get_public_key(key.name),
            "hmac": lambda: client.generate_mac(key.name, b"x"),
        }
        try:
            use[tracked.kind]()
            problems.append(f"{key.name}: a DESTROYED key still works")
        except VaultClientError as error:
            if error.reason != "WRONG_KEY_STATE":
                problems.append(f"{key.name}: {error}")
        return problems
    if set(states) != {"VERSION_STATE_ENABLED"}:
        problems.append(f"{key.name}: {STATE_NAMES[key.state]} key with versions {states}")
    for ciphertext, aad, plaintext in tracked.samples:
        try:
            opened = client.decrypt(key.name, ciphertext, aad=aad)
            if key.state != res.KEY_STATE_ENABLED:
                problems.append(f"{key.name}: {STATE_NAMES[key.state]} key decrypted")
            elif opened.plaintext != plaintext:
                problems.append(f"{key.name}: old ciphertext decrypts differently")
        except VaultClientError as error:
            if key.state == res.KEY_STATE_ENABLED or error.reason != "WRONG_KEY_STATE":
                problems.append(f"{key.name}: old ciphertext: {error}")
    return problems


# -- deterministic races ---------------------------------------------------------------------
# Token-resident RSA-4096 generation takes about a second on SoftHSM, which holds a version
# PENDING long enough to act on the key from another thread every time.

RACES = "accounts/races"


@pytest.fixture(scope="module")
def race_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[VaultServer]:
    data_dir = tmp_path_factory.mktemp("races")
    provision(data_dir)
    with VaultServer(data_dir) as server:
        with server.client() as client:
            ensure_account(client, RACES)
        yield server


class Rotation(threading.Thread):
    def __init__(self, server: VaultServer, name: str) -> None:
        super().__init__(daemon=True)
        self.server, self.key_name = server, name
        self.result: res.Key | VaultClientError | None = None

    def run(self) -> None:
        with self.server.client() as client:
            try:
                self.result = client.rotate_key(self.key_name)
            except VaultClientError as error:
                self.result = error


def start_slow_rotation(
    client: VaultClient, server: VaultServer, key_id: str
) -> tuple[str, Rotation]:
    """A token-resident RSA-4096 key whose rotation is under way (version 2 PENDING)."""
    key = client.create_key(
        RACES, key_id, "SIGN_VERIFY", "RSA_SIGN_PSS_4096_SHA256", token_resident=True
    )
    rotation = Rotation(server, key.name)
    rotation.start()
    deadline = time.monotonic() + 10
    while not any(v.state == res.VERSION_STATE_PENDING for v in client.list_key_versions(key.name)):
        assert rotation.is_alive() and time.monotonic() < deadline, "rotation not seen PENDING"
        time.sleep(0.005)
    return key.name, rotation


def test_sign_while_a_token_resident_key_rotates(race_server: VaultServer) -> None:
    with race_server.client() as client:
        name, rotation = start_slow_rotation(client, race_server, "rotating-signer")
        failures: list[str] = []
        signed = 0
        while rotation.is_alive():
            try:
                client.sign(name, message=b"during rotation")
                signed += 1
            except VaultClientError as error:
                failures.append(str(error))
            time.sleep(0.02)
        rotation.join()
        assert isinstance(rotation.result, res.Key), rotation.result
        assert not failures, f"{len(failures)} failed, {signed} signed; first: {failures[0]}"


def test_destruction_racing_a_token_resident_rotation(race_server: VaultServer) -> None:
    with race_server.client() as client:
        for attempt in range(3):
            name, rotation = start_slow_rotation(client, race_server, f"doomed-{attempt}")
            client.schedule_key_destruction(name, timedelta(0))
            deadline = time.monotonic() + 10
            while client.get_key(name).state != res.KEY_STATE_DESTROYED:
                assert time.monotonic() < deadline
                time.sleep(0.02)
            raced = rotation.is_alive()  # destroyed while the new version was generated
            rotation.join()
            if raced:
                break
        else:
            pytest.skip("the destruction job never ran inside the generation window")
        time.sleep(1.0)  # let the destruction job run again, should it repair anything
        assert client.get_key(name).state == res.KEY_STATE_DESTROYED
        states = [res.VersionState.Name(v.state) for v in client.list_key_versions(name)]
        token, versions = inventory(race_server.data_dir, [name])
        leaked = [v for v, (_, label) in versions.items() if label in token]
        assert states == ["VERSION_STATE_DESTROYED"] * len(states) and not leaked, (
            f"rotation returned {rotation.result}; versions {states}; still in token: {leaked}"
        )


def test_a_scheduled_destruction_is_undone_only_by_cancelling(race_server: VaultServer) -> None:
    """Disable, enable, revoke and rotate are refused while a destruction is scheduled, so
    none of them can call it off behind the scheduler's back (and the destruction job cannot
    destroy a key another request just re-enabled)."""
    with race_server.client() as client:
        key = client.create_key(RACES, "scheduled", "ENCRYPT_DECRYPT")
        scheduled = client.schedule_key_destruction(key.name, timedelta(hours=1))
        refused: list[Callable[[], object]] = [
            lambda: client.disable_key(key.name),
            lambda: client.enable_key(key.name),
            lambda: client.revoke_key(key.name, "compromised"),
            lambda: client.rotate_key(key.name),
        ]
        for call in refused:
            with pytest.raises(VaultClientError) as caught:
                call()
            assert caught.value.reason == "WRONG_KEY_STATE"
        still = client.get_key(key.name)
        assert still.state == res.KEY_STATE_DESTROY_SCHEDULED
        assert still.destroy_scheduled_time == scheduled.destroy_scheduled_time
        cancelled = client.cancel_key_destruction(key.name)
        assert cancelled.state == res.KEY_STATE_DISABLED
        assert not cancelled.HasField("destroy_scheduled_time")
        enabled = client.enable_key(key.name)
        assert enabled.state == res.KEY_STATE_ENABLED
        assert not enabled.HasField("destroy_scheduled_time")


# Creates and destroys throwaway token objects, as another process on the token would (a
# second vault host, vaultctl): every change makes SoftHSM re-read the token directory.
CHURN = """
import sys, time, uuid
from pkcs11 import KeyType
from vault.config import Settings
from vault.hsm.keystore import open_keystore
session = open_keystore(Settings())._library.context().session
print("ready", flush=True)
deadline = time.monotonic() + float(sys.argv[1])
while time.monotonic() < deadline:
    try:
        label = "churn:" + uuid.uuid4().hex
        session.generate_key(KeyType.AES, 256, label=label, store=True, capabilities=0).destroy()
    except Exception:
        pass
"""


def test_token_resident_keys_while_another_process_changes_the_token(
    race_server: VaultServer,
) -> None:
    pids = worker_pids(race_server)
    churn = subprocess.Popen(
        [sys.executable, "-c", CHURN, "8"],
        env=vault_environment(race_server.data_dir),
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert churn.stdout is not None and churn.stdout.readline().strip() == "ready"
        failures: Counter[str] = Counter()
        signed = Counter[str]()

        def work(index: int) -> None:
            with race_server.client() as client:
                deadline = time.monotonic() + 6
                n = 0
                while time.monotonic() < deadline:
                    n += 1
                    try:
                        key = client.create_key(RACES, f"churn-{index}-{n}", "SIGN_VERIFY",
                                                "EC_SIGN_ED25519")  # fmt: skip
                        client.sign(key.name, message=b"while the token changes")
                        signed["ok"] += 1
                    except VaultClientError as error:
                        failures[f"{error.code.name} {error.reason}: {error.message}"] += 1

        threads = [threading.Thread(target=work, args=(i,)) for i in range(6)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=60)
    finally:
        churn.communicate(timeout=30)  # waits, and closes the pipe
    assert signed["ok"] > 50
    assert not failures, f"{dict(failures)} ({signed['ok']} signed)"
    assert worker_pids(race_server) == pids, race_server.log()[-3000:]
