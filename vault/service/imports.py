"""Key import use cases: import jobs (a wrapping key pair in the token per job) and importing
wrapped key material as a new key version (vault.domain.imports)."""

from __future__ import annotations

import logging
import secrets
import uuid
from collections.abc import Callable
from datetime import datetime, timedelta

from vault.domain.algorithms import Algorithm
from vault.domain.errors import InvalidArgument, NotFound, UnsupportedAlgorithm, WrongState
from vault.domain.imports import (
    DEFAULT_IMPORT_METHOD,
    IMPORT_KEY_LABEL_PREFIX,
    ImportJob,
    ImportJobName,
    ImportJobState,
    ImportMethod,
)
from vault.domain.models import Key, KeyState, KeyVersion, Page
from vault.domain.names import KeyName
from vault.domain.ports import ImportJobStore, KeyStore
from vault.service.keys import KeyManagement, utc_now

log = logging.getLogger(__name__)

Clock = Callable[[], datetime]
# RSA-OAEP(ephemeral key) plus AES-KWP of the largest material (a PKCS#8 RSA-4096 key is
# about 2.4 KB): anything far longer is not an import.
MAX_WRAPPED_BYTES = 16_384
MAX_PUBLIC_KEY_BYTES = 4096


class KeyImports:
    def __init__(
        self,
        keys: KeyManagement,
        store: ImportJobStore,
        keystore: KeyStore,
        job_lifetime: timedelta,
        clock: Clock = utc_now,
    ) -> None:
        self._keys = keys
        self._store = store
        self._keystore = keystore
        self._lifetime = job_lifetime
        self._clock = clock

    def create_import_job(self, parent: str, method: ImportMethod | None) -> ImportJob:
        key = self._keys.get_key(parent)
        self._check_importable(key, "CreateImportJob")
        job_id = f"j{secrets.token_hex(8)}"
        now = self._clock()
        chosen = method or DEFAULT_IMPORT_METHOD
        label = f"{IMPORT_KEY_LABEL_PREFIX}{uuid.uuid4().hex}"
        public_der = self._keystore.create_import_key(chosen, label)
        job = ImportJob(
            name=ImportJobName(key.name.account, key.name.key, job_id),
            method=chosen,
            create_time=now,
            expire_time=now + self._lifetime,
            token_label=label,
            public_key_der=public_der,
        )
        try:
            return self._store.create_import_job(job)
        except Exception:
            # No row names the object: it must not stay in the token.
            self._keystore.destroy_label(label)
            raise

    def get_import_job(self, name: str) -> ImportJob:
        job_name = ImportJobName.parse(name)
        job = self._store.get_import_job(job_name)
        if job is None:
            raise NotFound("import job not found", metadata={"name": str(job_name)})
        return job

    def list_import_jobs(self, parent: str, page_size: int, page_token: str) -> Page[ImportJob]:
        """A page of parent's jobs, newest first; page_size 0: up to 1,000."""
        if page_size < 0:
            raise InvalidArgument("page_size must not be negative", metadata={"field": "page_size"})
        key = self._keys.get_key(parent)
        return self._store.list_import_jobs(key.name, page_size, page_token)

    def now(self) -> datetime:
        return self._clock()

    def import_key_version(
        self,
        parent: str,
        import_job: str,
        algorithm: Algorithm | None,
        wrapped_key: bytes,
        public_key_der: bytes | None,
        *,
        keep_primary: bool = False,
    ) -> KeyVersion:
        key_name = KeyName.parse(parent)
        job_name = ImportJobName.parse(import_job)
        if job_name.key_name != key_name:
            raise InvalidArgument(
                "the import job belongs to another key", metadata={"field": "import_job"}
            )
        key = self._keys.load(key_name)
        self._check_importable(key, "ImportKeyVersion")
        if algorithm is not None and algorithm is not key.algorithm:
            raise UnsupportedAlgorithm(
                f"the key's algorithm is {key.algorithm}, not {algorithm}",
                metadata={"algorithm": str(algorithm)},
            )
        if not wrapped_key:
            raise InvalidArgument("wrapped_key is required", metadata={"field": "wrapped_key"})
        if len(wrapped_key) > MAX_WRAPPED_BYTES:
            raise InvalidArgument(
                f"wrapped_key is limited to {MAX_WRAPPED_BYTES} bytes",
                metadata={"field": "wrapped_key"},
            )
        if public_key_der is not None and len(public_key_der) > MAX_PUBLIC_KEY_BYTES:
            raise InvalidArgument(
                f"public_key_der is limited to {MAX_PUBLIC_KEY_BYTES} bytes",
                metadata={"field": "public_key_der"},
            )
        job = self.get_import_job(import_job)
        if job.state(self._clock()) is not ImportJobState.ACTIVE:
            # Its private key goes now, not only at the expiry job's next run.
            self._expire(job)
            raise WrongState(
                "the import job has expired", metadata={"state": "EXPIRED", "name": str(job.name)}
            )
        material = self._keystore.import_material(
            job.token_label, job.method, key.algorithm, wrapped_key, public_key_der
        )
        version = self._keys.add_imported_version(key, material, make_primary=not keep_primary)
        log.info("imported key version %s", version.name)
        return version

    def destroy_expired_jobs(self) -> list[ImportJob]:
        """Destroy the private key of every job past its expiry or of a destroyed key (the
        periodic job)."""
        expired = self._store.import_jobs_due(self._clock())
        for job in expired:
            self._expire(job)
        return expired

    def remove_orphaned_import_keys(self) -> list[str]:
        """Destroy import-job private keys that no live job names: a crash between making
        the key pair and recording the job, or between destroying an expired job's key and
        recording that, leaves one. Run at start-up, before any worker
        serves (a job being created at that moment would look orphaned too)."""
        orphans = sorted(self._keystore.import_key_labels() - self._store.import_job_labels())
        for label in orphans:
            self._keystore.destroy_label(label)
            log.warning("destroyed import key %s, which no import job names", label)
        return orphans

    def _expire(self, job: ImportJob) -> None:
        if job.destroy_time is not None:
            return
        self._keystore.destroy_label(job.token_label)
        self._store.mark_import_job_destroyed(job.name, self._clock())
        log.info("import job %s expired; its private key was destroyed", job.name)

    def _check_importable(self, key: Key, operation: str) -> None:
        if key.state is not KeyState.ENABLED:
            raise key.state_forbids(operation)
        if key.token_resident:
            raise UnsupportedAlgorithm(
                "token-resident keys take no imported material",
                metadata={"name": str(key.name)},
            )
        if key.algorithm.spec.requires_token_resident:
            raise UnsupportedAlgorithm(
                f"{key.algorithm} keys cannot be imported",
                metadata={"algorithm": str(key.algorithm)},
            )
