"""Where SoftHSM finds its configuration: SOFTHSM2_CONF, pointed at the data directory."""

from __future__ import annotations

import os
from pathlib import Path

from vault.config import Settings

# The template lives in the source tree's softhsm/ folder next to the provisioning script;
# SoftHSM is a development and CI token, so the vault only renders it from a checkout.
TEMPLATE = Path(__file__).resolve().parents[2] / "softhsm" / "softhsm2.conf.in"


def token_directory(settings: Settings) -> Path:
    return settings.data_dir / "tokens"


def render_softhsm_config(settings: Settings) -> Path:
    """Write the SoftHSM config from the project template unless one exists already."""
    conf = settings.hsm.softhsm_conf
    assert conf is not None
    if not conf.exists():
        template = TEMPLATE.read_text("utf-8")
        tokens = token_directory(settings)
        tokens.mkdir(parents=True, exist_ok=True, mode=0o700)
        conf.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        conf.write_text(template.replace("@TOKEN_DIR@", str(tokens)), encoding="utf-8")
        conf.chmod(0o600)
    return conf


def use_softhsm_config(settings: Settings) -> None:
    """Point SoftHSM at our config before the module loads; an explicit SOFTHSM2_CONF wins."""
    conf = settings.hsm.softhsm_conf
    if "SOFTHSM2_CONF" not in os.environ and conf is not None and conf.exists():
        os.environ["SOFTHSM2_CONF"] = str(conf)
