"""Moving the roots to a second token by ceremony, through `vaultctl ceremony` alone.

Two tokens in two data directories (each provisioned by `vaultctl token init`, so each has its
own roots at first). Token 2 makes a transport key; token 1's SO trusts it after the
fingerprint is confirmed; token 1 wraps its roots into a signed transfer file; token 2 checks
the signature and unwraps them. Key versions wrapped on token 1 (their blobs from token 1's
store) then work on token 2. Every vault process is a subprocess: a process loads SoftHSM
with one token directory.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa

from tests.support.harness import ROOT, vault_environment

VAULTCTL = ROOT / ".venv" / "bin" / "vaultctl"
SETTINGS = {"VAULT_SERVER__WORKERS": "1", "VAULT_SERVER__DEV_TLS": "false"}


def vaultctl(
    data_dir: Path, cwd: Path, *args: str, timeout: float = 180
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(VAULTCTL), *args],
        env=vault_environment(data_dir, settings=SETTINGS),
        cwd=cwd,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def run_python(
    data_dir: Path, script: str, given: Any = None, settings: dict[str, str] | None = None
) -> Any:
    """script in a fresh interpreter on data_dir's token and store, given as JSON on stdin;
    its stdout as JSON."""
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(script)],
        env=vault_environment(data_dir, settings={**SETTINGS, **(settings or {})}),
        cwd=ROOT,
        input=json.dumps(given),
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def ok(done: subprocess.CompletedProcess[str]) -> Any:
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout) if done.stdout.strip().startswith("{") else done.stdout


def write(path: Path, text: str) -> Path:
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


# Key versions made on token 1 as the vault makes them (store and token), and what they
# produced there: a signature per signing key, a GCM ciphertext, a MAC.
_MAKE_VERSIONS = """
import json, os
from vault.app import ceremony_site
from vault.config import Settings
from vault.domain.algorithms import Algorithm, Purpose
made = {}
with ceremony_site(Settings()) as site:
    for key_id, purpose, algorithm in [
        ("ec", Purpose.SIGN_VERIFY, Algorithm.EC_SIGN_P256_SHA256),
        ("pss", Purpose.SIGN_VERIFY, Algorithm.RSA_SIGN_PSS_2048_SHA256),
        ("gcm", Purpose.ENCRYPT_DECRYPT, Algorithm.AES_256_GCM),
        ("oaep", Purpose.ASYMMETRIC_DECRYPT, Algorithm.RSA_DECRYPT_OAEP_2048_SHA1),
        ("mac", Purpose.MAC, Algorithm.HMAC_SHA256),
    ]:
        key = site.keys.create_key("acme", key_id, purpose, algorithm)
        (version,) = site.store.list_versions(key.name)
        entry = {
            "algorithm": algorithm.name,
            "generation": version.root_generation,
            "blob": version.wrapped_blob.hex(),
            "public": (version.public_key_der or b"").hex(),
        }
        keystore = site.keystore
        if purpose is Purpose.SIGN_VERIFY:
            entry["signature"] = keystore.sign(version, algorithm, b"before", False).hex()
        if purpose is Purpose.ENCRYPT_DECRYPT:
            nonce = os.urandom(12)
            sealed = keystore.encrypt_gcm(version, algorithm, nonce, b"secret", b"aad")
            entry["nonce"], entry["sealed"] = nonce.hex(), sealed.hex()
        if purpose is Purpose.MAC:
            entry["mac"] = keystore.generate_mac(version, algorithm, b"before").hex()
        made[key_id] = entry
print(json.dumps(made))
"""

# On token 2: use each version of token 1 by its blob alone.
_USE_VERSIONS = """
import json, sys
from tests.support.tokens import version_for
from vault.config import Settings
from vault.domain.algorithms import Algorithm
from vault.hsm.keystore import open_keystore
keystore = open_keystore(Settings())
given = json.load(sys.stdin)
out = {}
for key_id, entry in given["versions"].items():
    algorithm = Algorithm[entry["algorithm"]]
    version = version_for(
        root_generation=entry["generation"], wrapped_blob=bytes.fromhex(entry["blob"])
    )
    if "signature" in entry:
        out[key_id] = keystore.sign(version, algorithm, b"after", False).hex()
    elif "sealed" in entry:
        out[key_id] = keystore.decrypt_gcm(
            version, algorithm, bytes.fromhex(entry["nonce"]), bytes.fromhex(entry["sealed"]),
            b"aad",
        ).decode()
    elif "mac" in entry:
        out[key_id] = keystore.verify_mac(
            version, algorithm, b"before", bytes.fromhex(entry["mac"])
        )
    else:
        out[key_id] = keystore.asymmetric_decrypt(
            version, algorithm, bytes.fromhex(given["oaep_ciphertext"])
        ).decode()
print(json.dumps(out))
"""

# Every attribute of the named objects that the ceremonies set, read back from the token
# (the unwrap template entry by entry).
_ATTRIBUTES = """
import json, sys
import pkcs11
from pkcs11 import Attribute, ObjectClass
from vault.config import Settings
from vault.hsm import native
from vault.hsm.environment import use_softhsm_config
from vault.hsm.library import attribute_mapper
settings = Settings()
use_softhsm_config(settings)
token = pkcs11.lib(str(settings.hsm.module)).get_token(token_label=settings.hsm.token_label)
session = token.open(rw=True, user_pin=settings.user_pin(), attribute_mapper=attribute_mapper())
READ = [
    "CLASS", "KEY_TYPE", "LABEL", "ID", "TOKEN", "PRIVATE", "SENSITIVE", "EXTRACTABLE",
    "WRAP_WITH_TRUSTED", "MODIFIABLE", "COPYABLE", "DESTROYABLE", "ALLOWED_MECHANISMS",
    "ENCRYPT", "DECRYPT", "SIGN", "SIGN_RECOVER", "VERIFY", "VERIFY_RECOVER", "WRAP",
    "UNWRAP", "DERIVE", "TRUSTED", "VALUE_LEN", "MODULUS_BITS",
]
out = {}
for label, object_class in json.load(sys.stdin):
    (obj,) = list(session.get_objects({
        Attribute.LABEL: label, Attribute.CLASS: ObjectClass[object_class]
    }))
    values = {}
    for name in READ:
        try:
            value = obj[Attribute[name]]
        except (pkcs11.exceptions.AttributeTypeInvalid, pkcs11.exceptions.AttributeSensitive):
            continue
        if isinstance(value, bytes):
            value = value.hex()
        elif isinstance(value, list):
            value = [int(v) for v in value]
        elif not isinstance(value, (bool, str)):
            value = int(value)
        values[name] = value
    if object_class == "SECRET_KEY":
        template = native.read_attribute_array(
            str(settings.hsm.module), session.handle, obj.handle, int(Attribute.UNWRAP_TEMPLATE)
        )
        values["UNWRAP_TEMPLATE"] = {str(k): v.hex() for k, v in template.items()}
    out[f"{object_class}:{label}"] = values
print(json.dumps(out))
"""

# A PIN holder (no SO) imports a public key with WRAP: it can never be TRUSTED.
_IMPORT_UNTRUSTED = """
import json, sys
import pkcs11
from cryptography.hazmat.primitives import serialization
from pkcs11 import Attribute, KeyType, ObjectClass
from vault.config import Settings
from vault.hsm.environment import use_softhsm_config
settings = Settings()
use_softhsm_config(settings)
token = pkcs11.lib(str(settings.hsm.module)).get_token(token_label=settings.hsm.token_label)
session = token.open(rw=True, user_pin=settings.user_pin())
label, pem = json.load(sys.stdin)
numbers = serialization.load_pem_public_key(pem.encode()).public_numbers()
session.create_object({
    Attribute.CLASS: ObjectClass.PUBLIC_KEY, Attribute.KEY_TYPE: KeyType.RSA,
    Attribute.MODULUS: numbers.n.to_bytes((numbers.n.bit_length() + 7) // 8, "big"),
    Attribute.PUBLIC_EXPONENT: numbers.e.to_bytes(3, "big"),
    Attribute.TOKEN: True, Attribute.PRIVATE: False, Attribute.LABEL: label,
    Attribute.WRAP: True, Attribute.ENCRYPT: False, Attribute.VERIFY: False,
    Attribute.VERIFY_RECOVER: False, Attribute.DERIVE: False,
})
print(json.dumps("imported"))
"""


_COUNT = """
import json, sys
import pkcs11
from pkcs11 import Attribute
from vault.config import Settings
from vault.hsm.environment import use_softhsm_config
settings = Settings()
use_softhsm_config(settings)
token = pkcs11.lib(str(settings.hsm.module)).get_token(token_label=settings.hsm.token_label)
session = token.open(user_pin=settings.user_pin())
(label,) = json.load(sys.stdin)
print(json.dumps(len(list(session.get_objects({Attribute.LABEL: label})))))
"""


@dataclass
class Tokens:
    one: Path
    two: Path
    three: Path
    work: Path  # the ceremony files' directory


@pytest.fixture(scope="module")
def tokens(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Tokens]:
    base = tmp_path_factory.mktemp("ceremony")
    work = base / "ceremony"
    work.mkdir()
    found = Tokens(base / "token1", base / "token2", base / "token3", work)
    for data_dir in (found.one, found.two, found.three):
        ok(vaultctl(data_dir, work, "token", "init"))
    yield found


def _transport_key(tokens: Tokens, data_dir: Path, name: str) -> dict[str, Any]:
    create = write(
        tokens.work / f"create-{name}.toml",
        f"""\
        ceremony = "transport-key-create"
        record = "records/create-{name}.json"
        name = "{name}"
        bits = 3072
        public_key_out = "{name}.pem"
        operators = ["alice", "bob"]
        description = "transport key of the replica token"
        """,
    )
    result: dict[str, Any] = ok(
        vaultctl(
            data_dir, tokens.work, "ceremony", "transport-key", "create", create.name, "--json"
        )
    )
    return result


@pytest.fixture(scope="module")
def cloned(tokens: Tokens) -> dict[str, Any]:
    """The whole ceremony, run once: token 1's versions first, then the roots moved."""
    versions = run_python(tokens.one, _MAKE_VERSIONS)
    created = _transport_key(tokens, tokens.two, "replica")
    trust = write(
        tokens.work / "trust.toml",
        """\
        ceremony = "transport-key-trust"
        record = "records/trust.json"
        name = "replica"
        public_key = "replica.pem"
        """,
    )
    trusted = ok(
        vaultctl(
            tokens.one,
            tokens.work,
            "ceremony",
            "transport-key",
            "trust",
            trust.name,
            "--fingerprint",
            created["fingerprint"],
            "--json",
        )
    )
    clone = write(
        tokens.work / "clone.toml",
        """\
        ceremony = "clone-roots"
        record = "records/clone.json"
        trusted_key = "replica"
        transfer_out = "roots-for-replica.json"
        """,
    )
    sent = ok(vaultctl(tokens.one, tokens.work, "ceremony", "clone-roots", clone.name, "--json"))
    receive = write(
        tokens.work / "receive.toml",
        f"""\
        ceremony = "receive-roots"
        record = "records/receive.json"
        transport_key = "replica"
        transfer = "roots-for-replica.json"
        source_signer_fingerprint = "{sent["signer_fingerprint"]}"
        keep_transport_key = true
        """,
    )
    received = ok(
        vaultctl(tokens.two, tokens.work, "ceremony", "receive-roots", receive.name, "--json")
    )
    return {
        "versions": versions,
        "created": created,
        "trusted": trusted,
        "sent": sent,
        "received": received,
    }


def test_versions_wrapped_on_token_one_work_on_token_two_after_the_clone(
    tokens: Tokens, cloned: dict[str, Any]
) -> None:
    versions = cloned["versions"]
    oaep_public = serialization.load_der_public_key(bytes.fromhex(versions["oaep"]["public"]))
    assert isinstance(oaep_public, rsa.RSAPublicKey)
    oaep_ciphertext = oaep_public.encrypt(
        b"to token two",
        padding.OAEP(mgf=padding.MGF1(hashes.SHA1()), algorithm=hashes.SHA1(), label=None),
    )
    used = run_python(
        tokens.two,
        _USE_VERSIONS,
        {"versions": versions, "oaep_ciphertext": oaep_ciphertext.hex()},
    )
    assert used["gcm"] == "secret"
    assert used["mac"] is True
    assert used["oaep"] == "to token two"
    ec_public = serialization.load_der_public_key(bytes.fromhex(versions["ec"]["public"]))
    assert isinstance(ec_public, ec.EllipticCurvePublicKey)
    ec_public.verify(bytes.fromhex(used["ec"]), b"after", ec.ECDSA(hashes.SHA256()))
    ec_public.verify(
        bytes.fromhex(versions["ec"]["signature"]), b"before", ec.ECDSA(hashes.SHA256())
    )
    pss_public = serialization.load_der_public_key(bytes.fromhex(versions["pss"]["public"]))
    assert isinstance(pss_public, rsa.RSAPublicKey)
    pss_public.verify(
        bytes.fromhex(used["pss"]),
        b"after",
        padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=32),
        hashes.SHA256(),
    )


def test_without_the_clone_token_two_cannot_open_token_one_blobs(
    tokens: Tokens, cloned: dict[str, Any]
) -> None:
    """Token 3 was provisioned the same way but never received the roots."""
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(_USE_VERSIONS)],
        env=vault_environment(tokens.three, settings=SETTINGS),
        cwd=ROOT,
        input=json.dumps({"versions": cloned["versions"], "oaep_ciphertext": "00"}),
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert done.returncode != 0 and done.stdout == ""
    # SoftHSM answers a KWP integrity failure (another root's blob) with CKR_GENERAL_ERROR.
    assert "vault.domain.errors.TokenUnavailable" in done.stderr
    assert "GeneralError" in done.stderr


def test_received_roots_have_exactly_the_source_roots_attributes(
    tokens: Tokens, cloned: dict[str, Any]
) -> None:
    labels = cloned["sent"]["roots"]
    assert len(labels) == 9 and all(label.startswith("vault:root:1:") for label in labels)
    assert sorted(cloned["received"]["received"]) == sorted(labels)
    asked = [[label, "SECRET_KEY"] for label in labels]
    source = run_python(tokens.one, _ATTRIBUTES, asked)
    destination = run_python(tokens.two, _ATTRIBUTES, asked)
    for label in labels:
        # PKCS#11 forbids VALUE_LEN in an unwrap template and SoftHSM leaves it unset on an
        # unwrapped key; the check values below show the value is the source root's.
        assert source[f"SECRET_KEY:{label}"].pop("VALUE_LEN") == 32
        assert destination[f"SECRET_KEY:{label}"].pop("VALUE_LEN") == 0
    assert destination == source
    records = tokens.work / "records"
    sent = json.loads((records / "clone.json").read_text())["body"]["objects"]
    received = json.loads((records / "receive.json").read_text())["body"]["objects"]
    check_values = {o["label"]: o["check_value"] for o in sent if o["kind"] == "root"}
    assert {o["label"]: o["check_value"] for o in received} == check_values
    assert len(set(check_values.values())) == 9
    ec_root = destination["SECRET_KEY:vault:root:1:ec-sign"]
    assert ec_root["EXTRACTABLE"] is True and ec_root["WRAP_WITH_TRUSTED"] is True
    assert ec_root["MODIFIABLE"] is False and ec_root["SENSITIVE"] is True
    assert ec_root["WRAP"] is True and ec_root["UNWRAP"] is True
    assert not any(ec_root[name] for name in ("ENCRYPT", "DECRYPT", "SIGN", "DERIVE"))
    # The unwrap template pins DERIVE (0x10c) false and SIGN (0x108) true, as the source's.
    assert ec_root["UNWRAP_TEMPLATE"]["268"] == "00"
    assert ec_root["UNWRAP_TEMPLATE"]["264"] == "01"


def test_transport_and_trusted_keys_have_only_their_one_capability(
    tokens: Tokens, cloned: dict[str, Any]
) -> None:
    label = "vault:transport:replica"
    mine = run_python(tokens.two, _ATTRIBUTES, [[label, "PRIVATE_KEY"], [label, "PUBLIC_KEY"]])
    private = mine[f"PRIVATE_KEY:{label}"]
    assert private["SENSITIVE"] is True and private["EXTRACTABLE"] is False
    assert private["UNWRAP"] is True
    assert not any(private[name] for name in ("DECRYPT", "SIGN", "SIGN_RECOVER", "DERIVE"))
    assert private["ALLOWED_MECHANISMS"] == [0x9]  # CKM_RSA_PKCS_OAEP
    assert private["TOKEN"] is True and private["MODIFIABLE"] is False
    public = mine[f"PUBLIC_KEY:{label}"]
    assert public["MODULUS_BITS"] == 3072
    assert not any(public[name] for name in ("ENCRYPT", "VERIFY", "WRAP", "DERIVE"))

    trusted_label = "vault:trusted:replica"
    theirs = run_python(tokens.one, _ATTRIBUTES, [[trusted_label, "PUBLIC_KEY"]])
    trusted = theirs[f"PUBLIC_KEY:{trusted_label}"]
    assert trusted["TRUSTED"] is True and trusted["WRAP"] is True
    assert not any(trusted[name] for name in ("ENCRYPT", "VERIFY", "VERIFY_RECOVER", "DERIVE"))
    assert trusted["ALLOWED_MECHANISMS"] == [0x9]
    assert trusted["MODULUS_BITS"] == 3072
    assert cloned["trusted"]["fingerprint"] == cloned["created"]["fingerprint"]


def test_the_public_key_file_and_its_fingerprint(tokens: Tokens, cloned: dict[str, Any]) -> None:
    pem = (tokens.work / "replica.pem").read_bytes()
    public = serialization.load_pem_public_key(pem)
    assert isinstance(public, rsa.RSAPublicKey) and public.key_size == 3072
    der = public.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    assert cloned["created"]["fingerprint"] == hashes_sha256(der)


def hashes_sha256(data: bytes) -> str:
    import hashlib

    return hashlib.sha256(data).hexdigest()


@pytest.mark.parametrize("whose", ["a token never trusted", "a copy of the trusted key"])
def test_an_untrusted_transport_key_gets_key_not_wrappable_at_the_source(
    tokens: Tokens, cloned: dict[str, Any], whose: str
) -> None:
    if whose == "a token never trusted":
        _transport_key(tokens, tokens.three, "stranger")
        name, pem_file = "stranger", "stranger.pem"
    else:
        name, pem_file = "replica-copy", "replica.pem"
    pem = (tokens.work / pem_file).read_text()
    run_python(tokens.one, _IMPORT_UNTRUSTED, [f"vault:trusted:{name}", pem])
    clone = write(
        tokens.work / f"clone-{name}.toml",
        f"""\
        ceremony = "clone-roots"
        record = "records/clone-{name}.json"
        trusted_key = "{name}"
        transfer_out = "roots-for-{name}.json"
        """,
    )
    refused = vaultctl(tokens.one, tokens.work, "ceremony", "clone-roots", clone.name)
    assert refused.returncode == 4
    assert "KEY_NOT_WRAPPABLE" in refused.stderr
    assert "not trusted by this token's SO" in refused.stderr
    assert not (tokens.work / f"roots-for-{name}.json").exists()
    assert not (tokens.work / f"records/clone-{name}.json").exists()


def test_a_wrong_fingerprint_trusts_nothing(tokens: Tokens, cloned: dict[str, Any]) -> None:
    created = _transport_key(tokens, tokens.three, "mismatch")
    wrong = ("0" if created["fingerprint"][0] != "0" else "1") + created["fingerprint"][1:]
    trust = write(
        tokens.work / "trust-mismatch.toml",
        """\
        ceremony = "transport-key-trust"
        record = "records/trust-mismatch.json"
        name = "mismatch"
        public_key = "mismatch.pem"
        """,
    )
    refused = vaultctl(
        tokens.one,
        tokens.work,
        "ceremony",
        "transport-key",
        "trust",
        trust.name,
        "--fingerprint",
        wrong,
    )
    assert refused.returncode == 1
    assert "fingerprint mismatch" in refused.stderr
    clone = write(
        tokens.work / "clone-mismatch.toml",
        """\
        ceremony = "clone-roots"
        record = "records/clone-mismatch.json"
        trusted_key = "mismatch"
        transfer_out = "roots-for-mismatch.json"
        """,
    )
    missing = vaultctl(tokens.one, tokens.work, "ceremony", "clone-roots", clone.name)
    assert missing.returncode == 4
    assert "no trusted key labelled vault:trusted:mismatch" in missing.stderr


def test_a_changed_transfer_file_or_another_signer_is_refused(
    tokens: Tokens, cloned: dict[str, Any]
) -> None:
    transfer = json.loads((tokens.work / "roots-for-replica.json").read_text())
    transfer["body"]["roots"][0]["check_value"] = "00" * 8
    (tokens.work / "changed.json").write_text(json.dumps(transfer))
    for transfer_file, signer, expected in (
        ("changed.json", cloned["sent"]["signer_fingerprint"], "signature does not verify"),
        ("roots-for-replica.json", "ab" * 32, "not by the expected"),
    ):
        receive = write(
            tokens.work / "receive-bad.toml",
            f"""\
            ceremony = "receive-roots"
            record = "records/receive-bad.json"
            transport_key = "replica"
            transfer = "{transfer_file}"
            source_signer_fingerprint = "{signer}"
            """,
        )
        refused = vaultctl(tokens.two, tokens.work, "ceremony", "receive-roots", receive.name)
        assert refused.returncode == 4, refused.stderr
        assert "SIGNATURE_INVALID" in refused.stderr and expected in refused.stderr
        assert not (tokens.work / "records/receive-bad.json").exists()


def test_receiving_again_changes_nothing(tokens: Tokens, cloned: dict[str, Any]) -> None:
    receive = write(
        tokens.work / "receive-again.toml",
        f"""\
        ceremony = "receive-roots"
        record = "records/receive-again.json"
        transport_key = "replica"
        transfer = "roots-for-replica.json"
        source_signer_fingerprint = "{cloned["sent"]["signer_fingerprint"]}"
        """,
    )
    again = ok(
        vaultctl(tokens.two, tokens.work, "ceremony", "receive-roots", receive.name, "--json")
    )
    assert again["received"] == []
    assert sorted(again["already_present"]) == sorted(cloned["sent"]["roots"])
    # By default the transport key pair goes once the roots are in.
    assert cloned["received"]["transport_key_destroyed"] is False
    assert again["transport_key_destroyed"] is True
    assert run_python(tokens.two, _COUNT, ["vault:transport:replica"]) == 0


def test_the_fingerprint_can_be_typed_in(tokens: Tokens, cloned: dict[str, Any]) -> None:
    created = _transport_key(tokens, tokens.three, "typed")
    trust = write(
        tokens.work / "trust-typed.toml",
        """\
        ceremony = "transport-key-trust"
        record = "records/trust-typed.json"
        name = "typed"
        public_key = "typed.pem"
        """,
    )
    spoken = " ".join(created["fingerprint"][i : i + 4].upper() for i in range(0, 64, 4))
    done = subprocess.run(
        [str(VAULTCTL), "ceremony", "transport-key", "trust", trust.name, "--json"],
        env=vault_environment(tokens.one, settings=SETTINGS),
        cwd=tokens.work,
        input=spoken + "\n",
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert created["fingerprint"][:4] in done.stderr  # shown before it is asked for
    label = "vault:trusted:typed"
    trusted = run_python(tokens.one, _ATTRIBUTES, [[label, "PUBLIC_KEY"]])
    assert trusted[f"PUBLIC_KEY:{label}"]["TRUSTED"] is True
    record = json.loads((tokens.work / "records/trust-typed.json").read_text())["body"]
    assert record["result"] == {"confirmed_fingerprint": created["fingerprint"]}
    assert record["objects"] == [
        {
            "kind": "trusted-public-key",
            "label": label,
            "sha256_fingerprint": created["fingerprint"],
        }
    ]


def test_verifying_on_a_token_that_signed_nothing_creates_no_key(
    tokens: Tokens, cloned: dict[str, Any]
) -> None:
    """Token 3 only made transport keys (their records made its ceremony key), so a fresh
    data directory stands in: verify-record there must not create a ceremony key."""
    fresh = tokens.work.parent / "token4"
    ok(vaultctl(fresh, tokens.work, "token", "init"))
    refused = vaultctl(fresh, tokens.work, "ceremony", "verify-record", "records/clone.json")
    assert refused.returncode == 4
    assert "has no ceremony key" in refused.stderr
    assert run_python(fresh, _COUNT, ["vault:system:ceremony:1"]) == 0


def test_a_token_whose_own_roots_wrap_versions_keeps_them(
    tokens: Tokens, cloned: dict[str, Any]
) -> None:
    """Token 3 has key versions of its own under its generation 1: receiving token 1's
    generation 1 would orphan them, so nothing is changed."""
    created = _transport_key(tokens, tokens.three, "busy")
    trust = write(
        tokens.work / "trust-busy.toml",
        """\
        ceremony = "transport-key-trust"
        record = "records/trust-busy.json"
        name = "busy"
        public_key = "busy.pem"
        """,
    )
    ok(
        vaultctl(
            tokens.one,
            tokens.work,
            "ceremony",
            "transport-key",
            "trust",
            trust.name,
            "--fingerprint",
            created["fingerprint"],
        )
    )
    clone = write(
        tokens.work / "clone-busy.toml",
        """\
        ceremony = "clone-roots"
        record = "records/clone-busy.json"
        trusted_key = "busy"
        transfer_out = "roots-for-busy.json"
        """,
    )
    sent = ok(vaultctl(tokens.one, tokens.work, "ceremony", "clone-roots", clone.name, "--json"))
    own = run_python(tokens.three, _MAKE_VERSIONS)
    receive = write(
        tokens.work / "receive-busy.toml",
        f"""\
        ceremony = "receive-roots"
        record = "records/receive-busy.json"
        transport_key = "busy"
        transfer = "roots-for-busy.json"
        source_signer_fingerprint = "{sent["signer_fingerprint"]}"
        """,
    )
    refused = vaultctl(tokens.three, tokens.work, "ceremony", "receive-roots", receive.name)
    assert refused.returncode == 4
    assert "CEREMONY_REFUSED" in refused.stderr
    assert "5 key versions here are wrapped under root generation 1" in refused.stderr
    assert not (tokens.work / "records/receive-busy.json").exists()
    # Token 3's own versions still open with its own roots; its transport key is still there.
    oaep_public = serialization.load_der_public_key(bytes.fromhex(own["oaep"]["public"]))
    assert isinstance(oaep_public, rsa.RSAPublicKey)
    ciphertext = oaep_public.encrypt(
        b"still mine",
        padding.OAEP(mgf=padding.MGF1(hashes.SHA1()), algorithm=hashes.SHA1(), label=None),
    )
    used = run_python(
        tokens.three, _USE_VERSIONS, {"versions": own, "oaep_ciphertext": ciphertext.hex()}
    )
    assert used["gcm"] == "secret" and used["oaep"] == "still mine"
    assert run_python(tokens.three, _COUNT, ["vault:transport:busy"]) == 2
