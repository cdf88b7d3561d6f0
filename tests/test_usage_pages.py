"""GetUsage in pages at the smallest server.max_message_bytes (65,536): a credential used on
every method every day of a year has some 25,000 counters, which GetUsage answered in one
message (RESOURCE_EXHAUSTED here, and over 1 MiB with long method names). Its pages now end
after the last counter that fits and resume right after it; the SDK and `vaultctl api-keys
usage` follow them. A real server on its own SoftHSM token and store."""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Final
from uuid import uuid4

import grpc
import pytest
from click.testing import CliRunner

from tests.support.api_calls import every_page
from tests.support.cli_env import CLEAN_CLI_ENV
from tests.support.harness import VaultServer
from tests.support.small_messages import SMALLEST
from vault.cli.main import cli as vaultctl
from vault.client import VaultClient
from vault.gen.vault.v1 import identity_service_pb2, identity_service_pb2_grpc, resources_pb2
from vault.storage import open_stores
from vault.storage.tables import USAGE_METHOD_LENGTH

METHODS: Final = 68
# Yesterday and the 363 days before it: within GetUsage's longest window (366 days back from
# today) even if the UTC day turns while the test runs.
DAYS: Final = 364


@dataclass(frozen=True, slots=True)
class Used:
    name: str  # the access key's resource name
    counters: list[tuple[str, str, int]]  # (day, method, count), by day then method


@pytest.fixture(scope="module")
def admin(small: VaultServer) -> Iterator[VaultClient]:
    with small.client() as client:
        yield client


@pytest.fixture(scope="module")
def used(small: VaultServer, admin: VaultClient) -> Used:
    """An access key with a counter for each of METHODS methods on each of DAYS days, written
    through the store in one transaction rather than by some 25,000 calls. Method names are
    as long as the column allows (about 90 bytes a counter), so that even a page of 1,000 is
    over 64 KiB and only cutting by size keeps a page within one message."""
    account = admin.create_account(f"a{uuid4().hex[:12]}").name
    key = admin.create_access_key(account).access_key
    today = datetime.now(UTC).date()
    days = [(today - timedelta(days=n)).isoformat() for n in range(DAYS, 0, -1)]
    # Letters and digits only, so the store's collation orders them as Python does.
    methods = [f"Method{m:02d}".ljust(USAGE_METHOD_LENGTH, "x") for m in range(METHODS)]
    counts = {
        (key.access_key_id, day, method): d * METHODS + m + 1
        for d, day in enumerate(days)
        for m, method in enumerate(methods)
    }
    stores = open_stores(f"sqlite:///{small.data_dir / 'vault.db'}")
    try:
        stores.audit.append_audit([], counts, {})
    finally:
        stores.close()
    return Used(key.name, [(day, method, n) for (_, day, method), n in sorted(counts.items())])


def of(counters: Iterable[resources_pb2.UsageCounter]) -> list[tuple[str, str, int]]:
    return [(c.day, c.method, c.count) for c in counters]


def test_usage_pages_fit_the_smallest_message_and_resume_exactly(
    small: VaultServer, used: Used
) -> None:
    assert len(used.counters) == METHODS * DAYS
    with small.channel() as channel:
        identity = identity_service_pb2_grpc.IdentityServiceStub(channel)

        def usage(page_size: int, page_token: str) -> identity_service_pb2.GetUsageResponse:
            request = identity_service_pb2.GetUsageRequest(
                name=used.name, days=366, page_size=page_size, page_token=page_token
            )
            return identity.GetUsage(request, timeout=30)

        # 0, as callers sent before pages, and the most a page may hold: both cut by size.
        for page_size in (0, 1000):
            cut = every_page(lambda token: usage(page_size, token))
            assert len(cut) > 1 and all(page.counters for page in cut)
            assert all(page.ByteSize() <= SMALLEST for page in cut)
            assert all(len(page.counters) < 1000 for page in cut)
            assert [c for page in cut for c in of(page.counters)] == used.counters
        # A page_size that fits is kept exactly, and each token resumes where the page ended.
        asked = every_page(lambda token: usage(600, token))
        assert {len(page.counters) for page in asked[:-1]} == {600}
        assert [c for page in asked for c in of(page.counters)] == used.counters
        # The window still bounds the pages: the last 7 days hold 6 of the days written.
        week = every_page(
            lambda token: identity.GetUsage(
                identity_service_pb2.GetUsageRequest(name=used.name, days=7, page_token=token),
                timeout=30,
            )
        )
        assert [c for page in week for c in of(page.counters)] == used.counters[-6 * METHODS :]
        for page_size, token in ((0, "bogus!"), (0, "MjAyNQ"), (-1, "")):
            with pytest.raises(grpc.RpcError) as caught:
                usage(page_size, token)
            assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_the_sdk_and_vaultctl_return_every_counter_in_order(
    small: VaultServer, admin: VaultClient, used: Used
) -> None:
    assert of(admin.get_usage(used.name, 366)) == used.counters
    credentials = small.data_dir / "admin-credentials.json"
    result = CliRunner().invoke(
        vaultctl,
        [
            *("--target", small.target, "--credentials-file", str(credentials), "--json"),
            *("api-keys", "usage", used.name, "--days", "366"),
        ],
        env=CLEAN_CLI_ENV,
        prog_name="vaultctl",
    )
    assert result.exit_code == 0, result.output
    listed = json.loads(result.stdout)
    assert [(c["day"], c["method"], c["count"]) for c in listed["counters"]] == used.counters
    assert listed["total"] == sum(count for _, _, count in used.counters)
