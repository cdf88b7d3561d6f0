"""Root generations by ceremony: a new generation, what still refers to the old one, the
rewrap that moves keys off it, and its retirement; and the signed records of all of it.

One token in its own data directory, driven by `vaultctl ceremony`; key versions are made and
used by subprocesses building the vault's own use cases on that token and store.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from tests.support.harness import development_so_pin
from tests.test_ceremony_clone import ok, run_python, vaultctl, write

# Key versions as the vault makes them; what they produced; each key's versions afterwards.
_KEYS = """
import json, os, sys
from datetime import timedelta
from vault.app import ceremony_site
from vault.config import Settings
from vault.domain.algorithms import Algorithm, Purpose
from vault.domain.names import KeyName
given = json.load(sys.stdin)
out = {"made": {}, "used": {}, "versions": {}}
with ceremony_site(Settings()) as site:
    for key_id in given.get("create", []):
        purpose = Purpose.SIGN_VERIFY if key_id.startswith("sig") else Purpose.ENCRYPT_DECRYPT
        key = site.keys.create_key("acme", key_id, purpose)
        (version,) = site.store.list_versions(key.name)
        made = {"generation": version.root_generation}
        if purpose is Purpose.SIGN_VERIFY:
            made["public"] = version.public_key_der.hex()
        else:
            nonce = os.urandom(12)
            sealed = site.keystore.encrypt_gcm(version, key.algorithm, nonce, b"old", b"")
            made["nonce"], made["sealed"] = nonce.hex(), sealed.hex()
        out["made"][key_id] = made
    for key_id in given.get("disable", []):
        site.keys.disable_key(f"accounts/acme/keys/{key_id}")
    for key_id, made in given.get("use", {}).items():
        key = site.keys.get_key(f"accounts/acme/keys/{key_id}")
        versions = site.store.list_versions(key.name)
        first = versions[0]
        if "public" in made:
            out["used"][key_id] = [
                site.keystore.sign(v, key.algorithm, b"msg", False).hex() for v in versions
            ]
        else:
            out["used"][key_id] = site.keystore.decrypt_gcm(
                first, key.algorithm, bytes.fromhex(made["nonce"]),
                bytes.fromhex(made["sealed"]), b"",
            ).decode()
    for key_id in given.get("destroy", []):
        site.keys.schedule_destruction(f"accounts/acme/keys/{key_id}", timedelta(0))
    if given.get("destroy"):
        site.keys.destroy_due_keys()
    for key_id in given.get("list", []):
        out["versions"][key_id] = [
            [v.name.version, v.root_generation, str(v.state)]
            for v in site.store.list_versions(KeyName("acme", key_id))
        ]
print(json.dumps(out))
"""

SETTINGS_DESTROY = {"VAULT_KEYS__MIN_DESTROY_WAITING_SECONDS": "0"}


@pytest.fixture(scope="module")
def vault(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    base = tmp_path_factory.mktemp("generations")
    data_dir, work = base / "data", base / "ceremony"
    work.mkdir()
    ok(vaultctl(data_dir, work, "token", "init"))
    return data_dir, work


def keys(data_dir: Path, **given: Any) -> Any:
    return run_python(data_dir, _KEYS, given, settings=SETTINGS_DESTROY)


def generations(data_dir: Path, work: Path) -> dict[int, dict[str, Any]]:
    listed = ok(vaultctl(data_dir, work, "ceremony", "root-generations", "--json"))
    return {row["generation"]: row for row in listed["root_generations"]}


def ceremony_file(work: Path, name: str, ceremony: str, extra: str = "") -> str:
    write(
        work / name,
        f"""\
        ceremony = "{ceremony}"
        record = "records/{name.removesuffix(".toml")}.json"
        operators = ["carol", "dave"]
        description = "quarterly root rotation"
        {extra}
        """,
    )
    return name


def test_new_generation_rewrap_and_retire(vault: tuple[Path, Path]) -> None:
    data_dir, work = vault
    made = keys(data_dir, create=["sig-a", "enc-a", "enc-b", "enc-off"], disable=["enc-off"])
    made = made["made"]
    assert {entry["generation"] for entry in made.values()} == {1}
    before = generations(data_dir, work)
    assert before[1]["current"] is True and before[1]["versions"] == 4

    created = ok(
        vaultctl(
            data_dir,
            work,
            "ceremony",
            "new-root-generation",
            ceremony_file(work, "new.toml", "new-root-generation"),
            "--json",
        )
    )
    assert created["generation"] == 2 and len(created["roots"]) == 9
    after = generations(data_dir, work)
    assert after[2]["current"] is True and after[2]["versions"] == 0
    assert after[1]["current"] is False and after[1]["versions"] == 4

    # Retiring is refused while anything refers to the generation, or for the current one.
    refused = vaultctl(
        data_dir,
        work,
        "ceremony",
        "retire-root-generation",
        "1",
        ceremony_file(work, "retire-early.toml", "retire-root-generation", "generation = 1"),
    )
    assert refused.returncode == 4
    assert "4 key versions still refer to root generation 1" in refused.stderr
    current = vaultctl(
        data_dir,
        work,
        "ceremony",
        "retire-root-generation",
        "2",
        ceremony_file(work, "retire-current.toml", "retire-root-generation", "generation = 2"),
    )
    assert current.returncode == 4 and "the one new key versions go under" in current.stderr

    # New versions go under generation 2; the old ones still work.
    fresh = keys(data_dir, create=["sig-new"])["made"]["sig-new"]
    assert fresh["generation"] == 2
    used = keys(data_dir, use={"sig-a": made["sig-a"], "enc-a": made["enc-a"]})["used"]
    assert used["enc-a"] == "old"
    public = serialization.load_der_public_key(bytes.fromhex(made["sig-a"]["public"]))
    assert isinstance(public, ec.EllipticCurvePublicKey)
    public.verify(bytes.fromhex(used["sig-a"][0]), b"msg", ec.ECDSA(hashes.SHA256()))

    # The rewrap rotates the enabled keys onto generation 2, with a progress bar.
    moved = vaultctl(
        data_dir,
        work,
        "ceremony",
        "rewrap",
        "--generation",
        "1",
        ceremony_file(work, "rewrap.toml", "rewrap", "generation = 1"),
        "--json",
    )
    report = ok(moved)
    assert "keys under generation 1" in moved.stderr
    assert report["target_generation"] == 2 and report["rotated"] == 3
    by_key = {entry["key"].rsplit("/", 1)[1]: entry for entry in report["keys"]}
    assert {k: e["new_version"] for k, e in by_key.items()} == {
        "sig-a": 2,
        "enc-a": 2,
        "enc-b": 2,
        "enc-off": None,
    }
    assert "not rotated: the key is DISABLED" in by_key["enc-off"]["note"]
    assert "ReEncrypt" in by_key["enc-a"]["note"]
    assert report["versions_left_under_generation"] == 4
    listed = keys(data_dir, list=["sig-a", "enc-a"])["versions"]
    assert listed["sig-a"] == [[1, 1, "ENABLED"], [2, 2, "ENABLED"]]
    # Both versions of a rotated key sign: the old under generation 1, the new under 2.
    both = keys(data_dir, use={"sig-a": made["sig-a"], "enc-a": made["enc-a"]})["used"]
    assert len(both["sig-a"]) == 2 and both["enc-a"] == "old"
    again = ok(
        vaultctl(
            data_dir,
            work,
            "ceremony",
            "rewrap",
            "--generation",
            "1",
            ceremony_file(work, "rewrap-again.toml", "rewrap", "generation = 1"),
            "--json",
        )
    )
    assert again["rotated"] == 0
    assert (
        "already rotated" in {e["key"].rsplit("/", 1)[1]: e for e in again["keys"]}["enc-a"]["note"]
    )

    # Once no version refers to generation 1, its roots can go.
    keys(data_dir, destroy=["sig-a", "enc-a", "enc-b", "enc-off"])
    assert generations(data_dir, work)[1]["versions"] == 0
    retired = ok(
        vaultctl(
            data_dir,
            work,
            "ceremony",
            "retire-root-generation",
            "1",
            ceremony_file(work, "retire.toml", "retire-root-generation", "generation = 1"),
            "--json",
        )
    )
    assert len(retired["destroyed"]) == 9
    final = generations(data_dir, work)
    assert final[1]["in_token"] is False and final[1]["retired"] is True
    assert final[2]["current"] is True and final[2]["versions"] == 1
    status = ok(vaultctl(data_dir, work, "token", "status", "--json"))
    assert status["root_generations"] == [2]


def test_a_ceremony_file_for_another_generation_is_refused(vault: tuple[Path, Path]) -> None:
    data_dir, work = vault
    name = ceremony_file(work, "retire-mismatch.toml", "retire-root-generation", "generation = 5")
    refused = vaultctl(data_dir, work, "ceremony", "retire-root-generation", "1", name)
    assert refused.returncode == 4
    assert "describes generation 5, not 1" in refused.stderr


def test_records_are_signed_and_say_what_was_done(vault: tuple[Path, Path]) -> None:
    data_dir, work = vault
    name = ceremony_file(work, "records-new.toml", "new-root-generation")
    created = ok(vaultctl(data_dir, work, "ceremony", "new-root-generation", name, "--json"))
    record_file = work / "records" / "records-new.json"
    record = json.loads(record_file.read_text())
    body = record["body"]
    status = ok(vaultctl(data_dir, work, "token", "status", "--json"))
    assert record["format"] == "vault-ceremony-record/1"
    assert body["ceremony"] == "new-root-generation"
    assert body["token"]["serial"] == status["serial"] and body["token"]["label"] == "vault"
    assert body["config"] == {
        "file": name,
        "sha256": hashlib.sha256((work / name).read_bytes()).hexdigest(),
    }
    assert body["operators"] == ["carol", "dave"]
    assert body["result"] == {"generation": created["generation"]}
    assert sorted(o["label"] for o in body["objects"]) == sorted(created["roots"])
    assert all(len(o["check_value"]) == 16 for o in body["objects"])
    assert body["time"].startswith("20") and "+00:00" in body["time"]

    # Verified against this token's ceremony key, or a fingerprint given.
    shown = ok(vaultctl(data_dir, work, "ceremony", "verify-record", str(record_file), "--json"))
    assert shown["valid"] is True and shown["ceremony"] == "new-root-generation"
    pinned = vaultctl(
        data_dir,
        work,
        "ceremony",
        "verify-record",
        str(record_file),
        "--signer-fingerprint",
        record["signature"]["signer_fingerprint"],
    )
    assert pinned.returncode == 0, pinned.stderr
    public = serialization.load_der_public_key(
        __import__("base64").b64decode(record["signature"]["signer_public_key"])
    )
    assert isinstance(public, ec.EllipticCurvePublicKey) and public.curve.name == "secp256r1"

    # A changed record does not verify.
    body["operators"] = ["mallory"]
    changed = work / "records" / "changed.json"
    changed.write_text(json.dumps(record))
    refused = vaultctl(data_dir, work, "ceremony", "verify-record", str(changed))
    assert refused.returncode == 1
    assert "signature does not verify" in refused.stderr

    # No PIN in any record or output file the ceremonies wrote.
    pins = [development_so_pin(data_dir), (data_dir / "secrets" / "user.pin").read_bytes().strip()]
    for path in work.rglob("*"):
        if path.is_file():
            assert not any(pin in path.read_bytes() for pin in pins), path


def test_a_record_is_never_overwritten(vault: tuple[Path, Path]) -> None:
    data_dir, work = vault
    name = ceremony_file(work, "overwrite.toml", "new-root-generation")
    before = generations(data_dir, work)
    existing = work / "records" / "overwrite.json"
    existing.parent.mkdir(exist_ok=True)
    existing.write_text("an earlier record\n")
    refused = vaultctl(data_dir, work, "ceremony", "new-root-generation", name)
    assert refused.returncode == 4 and "exists already" in refused.stderr
    assert existing.read_text() == "an earlier record\n"
    assert generations(data_dir, work) == before  # nothing created


def test_a_ceremony_file_with_an_unknown_setting_is_refused(vault: tuple[Path, Path]) -> None:
    data_dir, work = vault
    name = ceremony_file(work, "typo.toml", "new-root-generation", 'generaton = "3"')
    refused = vaultctl(data_dir, work, "ceremony", "new-root-generation", name)
    assert refused.returncode == 4
    assert "generaton: Extra inputs are not permitted" in refused.stderr


_DESTROY_ROOT = """
import json, sys
import pkcs11
from pkcs11 import Attribute, ObjectClass
from vault.config import Settings
from vault.hsm.environment import use_softhsm_config
settings = Settings()
use_softhsm_config(settings)
token = pkcs11.lib(str(settings.hsm.module)).get_token(token_label=settings.hsm.token_label)
session = token.open(rw=True, user_pin=settings.user_pin())
(label,) = json.load(sys.stdin)
for root in session.get_objects({Attribute.CLASS: ObjectClass.SECRET_KEY, Attribute.LABEL: label}):
    root.destroy()
print(json.dumps("destroyed"))
"""


def test_a_generation_left_half_made_is_completed(vault: tuple[Path, Path]) -> None:
    """As if new-root-generation had been interrupted after all but one root."""
    data_dir, work = vault
    name = ceremony_file(work, "half-1.toml", "new-root-generation")
    made = ok(vaultctl(data_dir, work, "ceremony", "new-root-generation", name, "--json"))
    generation = made["generation"]
    run_python(data_dir, _DESTROY_ROOT, [f"vault:root:{generation}:aes-wrap"])
    assert generations(data_dir, work)[generation]["current"] is False

    name = ceremony_file(work, "half-2.toml", "new-root-generation")
    completed = ok(vaultctl(data_dir, work, "ceremony", "new-root-generation", name, "--json"))
    assert completed["generation"] == generation
    assert f"vault:root:{generation}:aes-wrap" in completed["roots"]
    assert len(completed["roots"]) == 9
    assert generations(data_dir, work)[generation]["current"] is True
