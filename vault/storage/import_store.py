"""ImportJobStore over SQLAlchemy Core, in the same database as the keys. Portable SQL only,
like sql_store.py."""

from __future__ import annotations

import threading
from datetime import datetime
from typing import TYPE_CHECKING, Any

from sqlalchemy import Engine, RowMapping, and_, insert, or_, select, update

from vault.domain.errors import AlreadyExists, NotFound
from vault.domain.imports import ImportJob, ImportJobName, ImportMethod
from vault.domain.models import KeyState
from vault.domain.names import KeyName
from vault.storage.tables import import_jobs, keys
from vault.storage.transactions import aware, aware_or_none, guarded_transaction, new_serial_lock


class SqlImportJobStore:
    """The vault's ImportJobStore. One instance per process, shared by all request threads."""

    def __init__(self, engine: Engine, *, serial: threading.Lock | None = None) -> None:
        self._engine = engine
        # See SqlMetadataStore: stores sharing an in-memory database share its lock.
        self._serial = serial if serial is not None else new_serial_lock(engine)

    def __repr__(self) -> str:
        return f"SqlImportJobStore({self._engine.url.render_as_string(hide_password=True)!r})"

    def create_import_job(self, job: ImportJob) -> ImportJob:
        def duplicate() -> AlreadyExists:
            return AlreadyExists("import job already exists", metadata={"name": str(job.name)})

        with guarded_transaction(
            self._engine, self._serial, write=True, on_duplicate=duplicate
        ) as c:
            c.execute(insert(import_jobs).values(**_row(job)))
        return job

    def get_import_job(self, name: ImportJobName) -> ImportJob | None:
        query = select(import_jobs).where(
            import_jobs.c.account == name.account,
            import_jobs.c.key_id == name.key,
            import_jobs.c.job_id == name.job,
        )
        with guarded_transaction(self._engine, self._serial, write=False) as c:
            row = c.execute(query).mappings().one_or_none()
        return None if row is None else _to_job(row)

    def list_import_jobs(self, key: KeyName) -> list[ImportJob]:
        query = (
            select(import_jobs)
            .where(import_jobs.c.account == key.account, import_jobs.c.key_id == key.key)
            .order_by(import_jobs.c.create_time.desc(), import_jobs.c.job_id)
        )
        with guarded_transaction(self._engine, self._serial, write=False) as c:
            rows = c.execute(query).mappings().all()
        return [_to_job(row) for row in rows]

    def import_jobs_due(self, now: datetime) -> list[ImportJob]:
        """Jobs whose private key is still in the token though the job expired or its key
        was destroyed."""
        joined = import_jobs.join(
            keys,
            and_(keys.c.account == import_jobs.c.account, keys.c.key_id == import_jobs.c.key_id),
        )
        query = (
            select(import_jobs)
            .select_from(joined)
            .where(
                import_jobs.c.destroy_time.is_(None),
                or_(import_jobs.c.expire_time <= now, keys.c.state == KeyState.DESTROYED.value),
            )
        )
        with guarded_transaction(self._engine, self._serial, write=False) as c:
            rows = c.execute(query).mappings().all()
        return [_to_job(row) for row in rows]

    def mark_import_job_destroyed(self, name: ImportJobName, now: datetime) -> None:
        statement = (
            update(import_jobs)
            .where(
                import_jobs.c.account == name.account,
                import_jobs.c.key_id == name.key,
                import_jobs.c.job_id == name.job,
                import_jobs.c.destroy_time.is_(None),
            )
            .values(destroy_time=now)
        )
        with guarded_transaction(self._engine, self._serial, write=True) as c:
            if c.execute(statement).rowcount == 0 and self._missing(c, name):
                raise NotFound("import job not found", metadata={"name": str(name)})

    def import_job_labels(self) -> set[str]:
        with guarded_transaction(self._engine, self._serial, write=False) as c:
            query = select(import_jobs.c.token_label).where(import_jobs.c.destroy_time.is_(None))
            return set(c.execute(query).scalars())

    @staticmethod
    def _missing(c: Any, name: ImportJobName) -> bool:
        query = select(import_jobs.c.job_id).where(
            import_jobs.c.account == name.account,
            import_jobs.c.key_id == name.key,
            import_jobs.c.job_id == name.job,
        )
        return c.execute(query).first() is None


def _row(job: ImportJob) -> dict[str, Any]:
    return {
        "account": job.name.account,
        "key_id": job.name.key,
        "job_id": job.name.job,
        "method": str(job.method),
        "token_label": job.token_label,
        "public_key_der": job.public_key_der,
        "create_time": job.create_time,
        "expire_time": job.expire_time,
        "destroy_time": job.destroy_time,
    }


def _to_job(row: RowMapping) -> ImportJob:
    return ImportJob(
        name=ImportJobName(row["account"], row["key_id"], row["job_id"]),
        method=ImportMethod(row["method"]),
        create_time=aware(row["create_time"]),
        expire_time=aware(row["expire_time"]),
        token_label=row["token_label"],
        public_key_der=bytes(row["public_key_der"]),
        destroy_time=aware_or_none(row["destroy_time"]),
    )


if TYPE_CHECKING:
    from vault.domain.ports import ImportJobStore

    # Makes mypy prove that the class satisfies the port it implements.
    _port: type[ImportJobStore] = SqlImportJobStore
