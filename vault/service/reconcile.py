"""Start-up reconciliation of the metadata store with the token.

The token is the source of truth for material, the store for state. A crash between the two
leaves either a PENDING version (intent recorded, object maybe created) or a token object no
live version names (destroyed in the store, not yet in the token). Both are safe to remove;
anything else is reported, never silently repaired.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

from vault.domain.errors import Conflict
from vault.domain.ports import KeyStore, MetadataStore, ReconcileReport

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class StartupReport:
    reconcile: ReconcileReport
    system_keys_created: list[str]
    admin_access_key_id: str | None
    admin_credentials_file: Path | None
    admin_secret_key: str | None = field(repr=False)


def reconcile(store: MetadataStore, keystore: KeyStore) -> ReconcileReport:
    discarded: list[str] = []
    for version in store.pending_versions():
        # Store first: if the creating process finished meanwhile, Conflict keeps its object.
        try:
            store.discard_pending(version)
        except Conflict:
            continue
        if version.token_label is not None:
            keystore.destroy_label(version.token_label)
        discarded.append(str(version.name))
        log.warning("discarded half-created key version %s", version.name)

    in_store = store.token_labels_in_use()
    in_token = keystore.token_labels()
    orphaned = sorted(in_token - in_store)
    for label in orphaned:
        keystore.destroy_label(label)
        log.warning("destroyed token object %s that no live key version names", label)
    missing = sorted(in_store - in_token)
    for label in missing:
        log.error("key material %s is in the store but not in the token", label)

    roots_missing = sorted(store.root_generations_in_use() - keystore.root_generations_present())
    for generation in roots_missing:
        log.error("root key generation %d is referenced but absent from the token", generation)
    return ReconcileReport(discarded, missing, orphaned, roots_missing)
