"""Composition root: builds the use cases from settings. Call inside each server process,
after fork: PKCS#11 must be initialised in the process that uses it."""

from __future__ import annotations

from dataclasses import dataclass

from vault.config import Settings
from vault.service.crypto import CryptoOperations
from vault.service.keys import KeyManagement
from vault.service.ports import KeyStore, MetadataStore, ReconcileReport
from vault.service.reconcile import reconcile


@dataclass(frozen=True, slots=True)
class Services:
    store: MetadataStore
    keystore: KeyStore
    keys: KeyManagement
    crypto: CryptoOperations

    def close(self) -> None:
        close = getattr(self.store, "close", None)
        if close is not None:
            close()


def build_services(settings: Settings) -> Services:
    from vault.hsm.keystore import open_keystore
    from vault.storage import open_store

    assert settings.store.url is not None
    store = open_store(settings.store.url)
    keystore = open_keystore(settings)
    keys = KeyManagement(
        store, keystore, settings.keys, version_cache_seconds=settings.hsm.cache_ttl_seconds
    )
    crypto = CryptoOperations(keys, keystore, settings.keys)
    return Services(store, keystore, keys, crypto)


def reconcile_store_and_token(settings: Settings) -> ReconcileReport:
    services = build_services(settings)
    try:
        return reconcile(services.store, services.keystore)
    finally:
        services.close()
