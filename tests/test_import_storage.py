"""SqlImportJobStore's listing on SQLite and on PostgreSQL: a key's jobs newest first, ties by
job id, in pages that resume after any job, and page tokens it did not make refused."""

from __future__ import annotations

import base64
from datetime import timedelta

import pytest

from tests.test_storage import T0, create, make_key
from vault.domain.errors import InvalidArgument
from vault.domain.imports import ImportJob, ImportJobName, ImportMethod
from vault.domain.names import KeyName
from vault.storage import Stores


def job(key: KeyName, job_id: str, minutes: int) -> ImportJob:
    created = T0 + timedelta(minutes=minutes)
    return ImportJob(
        name=ImportJobName(key.account, key.key, job_id),
        method=ImportMethod.RSA_OAEP_3072_SHA1_AES_256,
        create_time=created,
        expire_time=created + timedelta(days=1),
        token_label=f"vault:import:{key.key}-{job_id}",
        public_key_der=b"\x30public",
    )


def test_jobs_are_listed_newest_first_in_pages(stores: Stores) -> None:
    key, other = make_key("k1"), make_key("k2")
    for made in (key, other):
        create(stores.metadata, made)
    # Two pairs share a create time: their ids order them.
    for job_id, minutes in (("ja", 0), ("jc", 1), ("jb", 1), ("je", 2), ("jd", 2), ("jf", 3)):
        stores.imports.create_import_job(job(key.name, job_id, minutes))
    stores.imports.create_import_job(job(other.name, "jz", 9))
    everything = stores.imports.list_import_jobs(key.name, 0, "")
    expected = ["jf", "jd", "je", "jb", "jc", "ja"]
    assert [j.name.job for j in everything.items] == expected
    assert everything.items[0] == job(key.name, "jf", 3)
    assert everything.next_page_token == ""
    pages: list[list[str]] = []
    token = ""
    while True:
        page = stores.imports.list_import_jobs(key.name, 4, token)
        pages.append([j.name.job for j in page.items])
        token = page.next_page_token
        if not token:
            break
    assert pages == [expected[:4], expected[4:]]
    assert everything.token_after is not None
    for index in range(len(expected)):
        resumed = stores.imports.list_import_jobs(key.name, 0, everything.token_after(index))
        assert [j.name.job for j in resumed.items] == expected[index + 1 :]
    assert stores.imports.list_import_jobs(KeyName("acme", "nokey"), 0, "").items == []


@pytest.mark.parametrize(
    "value", ["ja", "12:", ":ja", "12:J", "-5:ja", "1" * 20 + ":ja", "9" * 19 + ":ja"]
)
def test_tokens_it_did_not_make_are_refused(stores: Stores, value: str) -> None:
    key = make_key("k1")
    create(stores.metadata, key)
    token = base64.urlsafe_b64encode(value.encode()).decode().rstrip("=")
    with pytest.raises(InvalidArgument):
        stores.imports.list_import_jobs(key.name, 0, token)
