"""Key ceremony use cases (README "Ceremonies"): each step on one token, and the signed record
of what it did. Files and prompts are the command line's; the token is a CeremonyToken port.

Moving the roots to a second token takes two processes, one per token (a PKCS#11 module is
started once per process): `clone_roots` on the source writes a signed root-transfer
document, `receive_roots` on the destination checks its signature against the source's
ceremony key and unwraps the roots.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from vault.domain.algorithms import Purpose
from vault.domain.ceremony import (
    RECORD_FORMAT,
    TRANSFER_FORMAT,
    CeremonyRefused,
    DocumentInvalid,
    RootInfo,
    TransportKey,
    public_key_fingerprint,
    roots_of_transfer,
    signed_document,
    signed_payload,
    transfer_body,
    verify_document,
)
from vault.domain.errors import AlreadyExists
from vault.domain.models import KeyState, RootGeneration
from vault.domain.names import KeyName
from vault.domain.ports import CeremonyToken, MetadataStore
from vault.service.keys import KeyManagement

log = logging.getLogger(__name__)

Clock = Callable[[], datetime]


def utc_now() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True, slots=True)
class CeremonyConfig:
    """What a record says about the configuration file that described the ceremony."""

    file_name: str
    sha256: str
    operators: tuple[str, ...] = ()
    description: str = ""


@dataclass(frozen=True, slots=True)
class ReceivedRoots:
    received: list[RootInfo]
    already_present: list[RootInfo]
    # Roots of this token that no blob used, replaced by the source's of the same label.
    replaced: list[str]
    source: dict[str, Any] = field(default_factory=dict)
    source_signer: str = ""
    transport_key_destroyed: bool = False


@dataclass(frozen=True, slots=True)
class GenerationUsage:
    generation: int
    in_token: bool
    legacy: bool
    current: bool
    retired: bool
    versions: int


def root_objects(roots: Iterable[RootInfo]) -> list[dict[str, Any]]:
    return [
        {
            "kind": "root",
            "label": root.label,
            "generation": root.generation,
            "family": root.family,
            "check_value": root.check_value,
        }
        for root in roots
    ]


def public_object(kind: str, key: TransportKey) -> dict[str, Any]:
    return {"kind": kind, "label": key.label, "sha256_fingerprint": key.fingerprint}


class Ceremonies:
    def __init__(
        self, token: CeremonyToken, store: MetadataStore | None, clock: Clock = utc_now
    ) -> None:
        self._token = token
        self._store = store
        self._clock = clock

    # -- records --------------------------------------------------------------------------------

    def record(
        self,
        ceremony: str,
        config: CeremonyConfig,
        objects: list[dict[str, Any]],
        result: Mapping[str, Any] | None = None,
    ) -> dict[str, Any]:
        """The signed record of a ceremony that just ran on this token."""
        body = {
            "ceremony": ceremony,
            "time": self._clock().isoformat(),
            "config": {"file": config.file_name, "sha256": config.sha256},
            "operators": list(config.operators),
            "description": config.description,
            "token": self._token.identity().as_dict(),
            "objects": objects,
            "result": dict(result or {}),
        }
        return self._signed(RECORD_FORMAT, body)

    def _signed(self, document_format: str, body: Mapping[str, Any]) -> dict[str, Any]:
        signer = self._token.ceremony_public_key()
        signature = self._token.sign(signed_payload(document_format, body))
        return signed_document(document_format, body, signature, signer)

    def signer_fingerprint(self) -> str:
        """The fingerprint of this token's ceremony key; NotFound if it has none (a
        verification never creates one)."""
        return public_key_fingerprint(self._token.ceremony_public_key(create=False))

    # -- transport keys -------------------------------------------------------------------------

    def create_transport_key(self, name: str, bits: int) -> TransportKey:
        return self._token.create_transport_key(name, bits)

    def trusted_key(self, name: str) -> TransportKey:
        return self._token.trusted_key(name)

    # -- moving the roots -----------------------------------------------------------------------

    def clone_roots(self, trusted_name: str) -> tuple[dict[str, Any], list[RootInfo]]:
        """Every root of every generation wrapped under the trusted key trusted_name, as a
        root-transfer document signed by this token's ceremony key; and the roots it holds.
        KeyNotWrappable when the SO of this token did not trust that key."""
        trusted = self._token.trusted_key(trusted_name)
        wrapped = self._token.wrap_roots(trusted_name)
        body = transfer_body(
            self._token.identity(), trusted.fingerprint, wrapped, self._clock().isoformat()
        )
        roots = [RootInfo(r.label, r.generation, r.family, r.check_value) for r in wrapped]
        return self._signed(TRANSFER_FORMAT, body), roots

    def receive_roots(
        self,
        transfer: Any,
        source_signer: str,
        transport_name: str,
        *,
        keep_transport_key: bool = False,
    ) -> ReceivedRoots:
        """Unwrap the roots of a root-transfer document made for this token's transport key
        transport_name and signed by the source token's ceremony key (fingerprint
        source_signer). A root already here with the same check value is kept. A root of the
        same label but another value is replaced only if no blob in this vault's store refers
        to its generation (a freshly provisioned token's own roots); otherwise nothing is
        changed. A root that fails to unwrap stops the ceremony; running it again resumes.

        Afterwards the transport key pair is destroyed unless keep_transport_key: its public
        half is no secret, so while its private half exists a PIN holder could unwrap a key
        of known value into a root-shaped object of this token."""
        verified = verify_document(transfer, TRANSFER_FORMAT, source_signer)
        body = verified.body
        transport = self._token.transport_key(transport_name)
        if body.get("transport_key_fingerprint") != transport.fingerprint:
            raise CeremonyRefused(
                f"the transfer was made for transport key {body.get('transport_key_fingerprint')}"
                f", not for this token's {transport.label} ({transport.fingerprint})"
            )
        incoming = roots_of_transfer(body)
        if not incoming:
            raise DocumentInvalid("the root-transfer file holds no roots")
        present = {root.label: root for root in self._token.roots()}
        in_use = self._store.versions_per_root_generation() if self._store else {}
        to_replace = []
        for root in incoming:
            mine = present.get(root.label)
            if mine is None or mine.check_value == root.check_value:
                continue
            if in_use.get(root.generation):
                raise CeremonyRefused(
                    f"this token's root {root.label} differs from the source's, and "
                    f"{in_use[root.generation]} key versions here are wrapped under root "
                    f"generation {root.generation}; nothing was changed"
                )
            to_replace.append(root.label)
        received, kept = [], []
        for root in incoming:
            mine = present.get(root.label)
            if mine is not None and mine.check_value == root.check_value:
                kept.append(mine)
                continue
            if mine is not None:
                self._token.destroy_root(root.label)
            received.append(self._token.unwrap_root(transport_name, root))
        self._record_generations({root.generation for root in incoming})
        if not keep_transport_key:
            self._token.destroy_transport_key(transport_name)
        return ReceivedRoots(
            received,
            kept,
            to_replace,
            source=dict(body.get("source_token") or {}),
            source_signer=verified.signer_fingerprint,
            transport_key_destroyed=not keep_transport_key,
        )

    def _record_generations(self, generations: set[int]) -> None:
        if self._store is None:
            return
        recorded = {root.generation for root in self._store.list_root_generations()}
        for generation in sorted(generations - recorded):
            # Another process may have recorded it meanwhile.
            with contextlib.suppress(AlreadyExists):
                self._store.add_root_generation(
                    RootGeneration(generation, _store_label(generation), self._clock())
                )

    # -- root generations -----------------------------------------------------------------------

    def root_generations(self) -> list[GenerationUsage]:
        """Per generation (in the token or the store): whether the token holds its roots,
        whether it is the one new versions go under, and how many versions it wraps."""
        in_token = self._token.root_generations()
        counts = self._store.versions_per_root_generation() if self._store else {}
        recorded = (
            {r.generation: r for r in self._store.list_root_generations()} if self._store else {}
        )
        current = self._token.current_generation()
        usage = []
        for generation in sorted(set(in_token) | set(counts) | set(recorded)):
            families = in_token.get(generation, frozenset())
            record = recorded.get(generation)
            usage.append(
                GenerationUsage(
                    generation=generation,
                    in_token=bool(families),
                    legacy=None in families,
                    current=generation == current,
                    retired=record is not None and record.retired,
                    versions=counts.get(generation, 0),
                )
            )
        return usage

    def new_root_generation(self) -> tuple[int, list[RootInfo]]:
        """A new generation of roots, one per family, above every generation the token or the
        store knows. New versions go under it once the vault restarts (each process picks
        the newest generation when it opens the token)."""
        recorded = (
            {root.generation for root in self._store.list_root_generations()}
            if self._store is not None
            else set()
        )
        generation = self._token.new_root_generation(max(recorded, default=0))
        self._record_generations({generation})
        return generation, [root for root in self._token.roots() if root.generation == generation]

    def rewrap(
        self,
        generation: int,
        keys: KeyManagement,
        current_generation: int,
        progress: Callable[[int], None] = lambda _done: None,
    ) -> RewrapReport:
        """Move the keys with versions under generation to the current generation, the only
        way SoftHSM allows: a blob cannot be wrapped again (what a root unwraps is
        non-extractable), so each ENABLED key whose primary version is under generation is
        rotated, and its new primary version is made under the current generation. Its old
        versions keep their blobs and keep decrypting and verifying; the report says which
        and what data still needs them. Keys not ENABLED are not rotated (a revoked or
        disabled key must not get a new version). progress(n) after each key."""
        if current_generation <= generation:
            raise CeremonyRefused(
                f"new key versions still go under root generation {generation}: create a newer "
                "one first (`vaultctl ceremony new-root-generation`)"
            )
        if self._store is None:
            raise CeremonyRefused("a rewrap needs the metadata store")
        by_key: dict[KeyName, list[int]] = {}
        for version in self._store.versions_under_root_generation(generation):
            by_key.setdefault(version.name.key_name, []).append(version.name.version)
        entries = []
        for index, (name, numbers) in enumerate(sorted(by_key.items(), key=lambda i: str(i[0]))):
            key = keys.load(name)
            new_version, note = None, ""
            if key.state is not KeyState.ENABLED:
                note = f"not rotated: the key is {key.state}"
            elif key.primary_version not in numbers:
                note = "already rotated: its primary version is under a newer generation"
            else:
                rotated = keys.rotate_key(name)
                new_version = rotated.primary_version
                note = "rotated"
            entries.append(
                RewrapEntry(
                    key=str(name),
                    purpose=str(key.purpose),
                    state=str(key.state),
                    new_version=new_version,
                    left_under_generation=numbers,
                    note=f"{note}; still needed for {STILL_NEEDED[key.purpose]}",
                )
            )
            progress(index + 1)
        return RewrapReport(generation, current_generation, entries)

    def keys_under(self, generation: int) -> int:
        """How many keys have versions under generation (for a progress bar's length)."""
        if self._store is None:
            return 0
        versions = self._store.versions_under_root_generation(generation)
        return len({(v.name.account, v.name.key) for v in versions})

    def retire_root_generation(self, generation: int) -> list[str]:
        """Destroy the roots of generation; refused while any version (not DESTROYED) is
        wrapped under it, or when it is the generation new versions go under."""
        in_token = self._token.root_generations()
        if generation not in in_token:
            raise CeremonyRefused(f"the token holds no roots of generation {generation}")
        if generation == self._token.current_generation():
            raise CeremonyRefused(
                f"root generation {generation} is the one new key versions go under; create "
                "a newer one first (`vaultctl ceremony new-root-generation`)"
            )
        counts = self._store.versions_per_root_generation() if self._store else {}
        if counts.get(generation):
            raise CeremonyRefused(
                f"{counts[generation]} key versions still refer to root generation "
                f"{generation}; `vaultctl ceremony rewrap --generation {generation}` moves "
                "their keys to a newer generation, then destroy the old versions' keys",
                metadata={"versions": str(counts[generation])},
            )
        labels = [root.label for root in self._token.roots() if root.generation == generation]
        for label in labels:
            self._token.destroy_root(label)
        if self._store is not None:
            self._store.retire_root_generation(generation)
        return labels


# What still needs the versions a rewrap leaves under the old generation, by purpose: the
# vault cannot move this data, only its owners can (README, Ceremonies).
STILL_NEEDED = {
    Purpose.ENCRYPT_DECRYPT: "ciphertexts and data keys made by these versions: ReEncrypt them",
    Purpose.BUCKET_MASTER: "bucket keys made by these versions: ask for new bucket keys and "
    "re-encrypt the objects under them",
    Purpose.WRAP_UNWRAP: "keys wrapped by these versions: unwrap and wrap them again",
    Purpose.ASYMMETRIC_DECRYPT: "ciphertexts made to these versions' public keys: decrypt and "
    "encrypt them to the new version's",
    Purpose.SIGN_VERIFY: "signatures by these versions verify with their public keys, which "
    "need no root: keep the public keys, re-sign what must be checked by the vault",
    Purpose.MAC: "MACs made by these versions: compute them again",
}


@dataclass(frozen=True, slots=True)
class RewrapEntry:
    key: str
    purpose: str
    state: str
    # The version new operations use from now on, under the newer generation; None when the
    # key was not rotated (see note).
    new_version: int | None
    left_under_generation: list[int]
    note: str


@dataclass(frozen=True, slots=True)
class RewrapReport:
    generation: int
    target_generation: int
    entries: list[RewrapEntry]

    @property
    def versions_left(self) -> int:
        return sum(len(entry.left_under_generation) for entry in self.entries)


def _store_label(generation: int) -> str:
    # The store's name for a generation of per-family roots (vault.hsm.provision does the
    # same): the roots' common label prefix.
    return f"vault:root:{generation}:*"
