"""A real server whose gRPC messages are limited to the smallest size the settings allow: the
tests that prove every answer, page or stream stays within one message use it."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Final

from tests.support.harness import VaultServer, provision
from vault.transport.page_budget import SMALLEST_MAX_MESSAGE_BYTES

SMALLEST: Final = SMALLEST_MAX_MESSAGE_BYTES


@contextmanager
def small_message_server(data_dir: Path, **extra_env: str) -> Iterator[VaultServer]:
    """A provisioned server on data_dir with server.max_message_bytes at SMALLEST."""
    provision(data_dir)
    env = {"VAULT_SERVER__MAX_MESSAGE_BYTES": str(SMALLEST), **extra_env}
    with VaultServer(data_dir, extra_env=env) as server:
        yield server
