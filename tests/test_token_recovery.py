"""Recovery after the token fails under the vault: the module is started again, the vault
logs in again, and the request that met the failure is retried once and succeeds."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

from tests.harness import ROOT, vault_environment

_SCRIPT = textwrap.dedent(
    """
    import ctypes, logging, sys
    from vault.config import Settings
    from vault.domain.algorithms import Algorithm
    from vault.hsm.keystore import open_keystore
    from tests.tokens import generated_version

    logging.basicConfig(level=logging.WARNING, stream=sys.stdout, format="%(message)s")
    settings = Settings()
    keystore = open_keystore(settings)
    version = generated_version(keystore, Algorithm.AES_256_GCM)
    nonce = bytes(12)
    sealed = keystore.encrypt_gcm(version, Algorithm.AES_256_GCM, nonce, b"before", b"")

    # The module loses its state under the vault, as after a device reset: every session
    # and the login are gone.
    module = ctypes.CDLL(str(settings.hsm.module))
    assert module.C_Finalize(None) == 0

    opened = keystore.decrypt_gcm(version, Algorithm.AES_256_GCM, nonce, sealed, b"")
    again = keystore.encrypt_gcm(version, Algorithm.AES_256_GCM, nonce, b"after", b"")
    print("RESULT", opened.decode(), len(again))
    """
)


def test_the_vault_restarts_the_module_and_logs_in_again(data_dir: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-c", _SCRIPT],
        env=vault_environment(data_dir),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "re-initialising the PKCS#11 module" in result.stdout
    assert "RESULT before 21" in result.stdout
