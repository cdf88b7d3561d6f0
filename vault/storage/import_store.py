"""ImportJobStore over SQLAlchemy Core, in the same database as the keys. Portable SQL only,
like metadata_store.py."""

from __future__ import annotations

import re
import threading
from datetime import datetime
from typing import TYPE_CHECKING, Any

from sqlalchemy import Engine, RowMapping, and_, insert, or_, select, update

from vault.domain.errors import AlreadyExists, NotFound
from vault.domain.imports import ImportJob, ImportJobName, ImportMethod
from vault.domain.models import KeyState, Page
from vault.domain.names import KeyName
from vault.storage.paging import (
    MAX_PAGE_SIZE,
    clamp_page_size,
    decode_page_token,
    keyset_page,
    malformed_page_token,
)
from vault.storage.tables import from_micros, import_jobs, keys, to_micros
from vault.storage.transactions import aware, aware_or_none, guarded_transaction, new_serial_lock

# A job's place in ListImportJobs' order: its create time (microseconds) and its id.
_JOB_TOKEN_RE = re.compile(r"(?P<micros>[0-9]{1,19}):(?P<job>[a-z][a-z0-9]{0,62})")


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

    def list_import_jobs(self, key: KeyName, page_size: int, page_token: str) -> Page[ImportJob]:
        # 0 asks for every job as ListImportJobs gave before it paged, up to a page's most.
        size = clamp_page_size(page_size or MAX_PAGE_SIZE)
        query = select(import_jobs).where(
            import_jobs.c.account == key.account, import_jobs.c.key_id == key.key
        )
        if page_token:
            created, job_id = _decode_job_token(page_token)
            # Newest first, ties by job id: the rows after (created, job_id) in that order.
            query = query.where(
                or_(
                    import_jobs.c.create_time < created,
                    and_(import_jobs.c.create_time == created, import_jobs.c.job_id > job_id),
                )
            )
        # One row beyond the page says whether another page follows, without a COUNT.
        query = query.order_by(import_jobs.c.create_time.desc(), import_jobs.c.job_id).limit(
            size + 1
        )
        with guarded_transaction(self._engine, self._serial, write=False) as c:
            rows = c.execute(query).mappings().all()
        items = [_to_job(row) for row in rows[:size]]
        return keyset_page(items, len(rows) > size, _job_ordering)

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


def _job_ordering(job: ImportJob) -> str:
    return f"{to_micros(job.create_time)}:{job.name.job}"


def _decode_job_token(token: str) -> tuple[datetime, str]:
    """The create time and job id a page token continues after."""
    match = _JOB_TOKEN_RE.fullmatch(decode_page_token(token))
    if match is None:
        raise malformed_page_token()
    try:
        created = from_micros(int(match["micros"]))
    except (OverflowError, ValueError):
        raise malformed_page_token() from None
    return created, match["job"]


if TYPE_CHECKING:
    from vault.domain.ports import ImportJobStore

    # Makes mypy prove that the class satisfies the port it implements.
    _port: type[ImportJobStore] = SqlImportJobStore
