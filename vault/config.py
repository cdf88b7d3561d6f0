"""Settings: a TOML file, overridden by environment variables (VAULT_ prefix, `__` between
sections: VAULT_SERVER__LISTEN, VAULT_HSM__TOKEN_LABEL). PINs are never settings values on a
command line: they come from files (mode 0600) or from the environment.

`vaultctl` (server and client commands alike) finds its settings file with find_config_file,
so a server and the callers started anywhere near it read the same file. Relative paths in a
settings file are relative to the file's directory, not to where a command runs."""

from __future__ import annotations

import json
import os
import types
from collections.abc import Mapping
from contextvars import ContextVar
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any, Union, get_args, get_origin

from pydantic import BaseModel, Field, PrivateAttr, SecretStr, model_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

# The settings file, when --config does not name one. Without either: the nearest vault.toml
# upwards from the current directory, else user_config_file() (find_config_file).
CONFIG_ENV = "VAULT_CONFIG"
# The settings file of a directory tree (a checkout, a deployment): found in the current
# directory or the nearest parent that has one.
LOCAL_CONFIG_NAME = "vault.toml"
DEFAULT_DATA_DIR = Path(".vault-data")
# Under data_dir: the development CA and server certificate `vaultctl serve` generates.
DEV_TLS_DIR = "tls"


class ServerSettings(BaseModel):
    listen: str = Field("127.0.0.1:50051", description="host:port the gRPC server binds")
    workers: int = Field(2, ge=1, le=64, description="server processes sharing the port")
    # More threads than cores only queue for the GIL: 4 per process served 1.6 times the
    # cheap requests of 8 on a 2-core machine (make bench), and as many signatures.
    threads: int = Field(4, ge=1, le=256, description="request threads per process")
    max_message_bytes: int = Field(
        1 << 20,
        ge=65536,
        description="largest gRPC message accepted and sent, in bytes; a List page ends "
        "early to stay within it",
    )
    max_batch_items: int = Field(
        1000,
        ge=1,
        le=100_000,
        description="most items in one call of a batch method (BatchSign, BatchEncrypt, ...); "
        "a batch is also bounded by max_message_bytes, both ways",
    )
    listed_key_cache_size: int = Field(
        16_384,
        ge=0,
        description="listed keys whose serialised Key message each worker process keeps for "
        "ListKeys, under every field a listing shows (about 0.8 KiB each with short names, "
        "plus twice a key's description and labels; 0: none)",
    )
    tls_cert_file: Path | None = Field(
        None, description="PEM server certificate (leaf first, then intermediates)"
    )
    tls_key_file: Path | None = Field(
        None, description="PEM private key of tls_cert_file; mode 0600 or stricter"
    )
    client_ca_file: Path | None = Field(
        None,
        description="PEM CA certificates; when set, clients must present a certificate "
        "signed by one of them (mutual TLS)",
    )
    metrics_listen: str = Field(
        "",
        description="host:port of the Prometheus /metrics endpoint the supervisor serves over "
        "HTTP (empty: off; e.g. 127.0.0.1:9464)",
    )
    drain_seconds: float = Field(
        5.0,
        ge=0,
        le=300,
        description="on SIGTERM, how long calls in flight get to finish before they are cancelled",
    )
    dev_tls: bool = Field(
        True,
        description="without tls_cert_file: `vaultctl serve` keeps a development CA and "
        "server certificate in <data_dir>/tls and the server uses them; false: plaintext",
    )

    @model_validator(mode="after")
    def _cert_and_key_together(self) -> ServerSettings:
        if (self.tls_cert_file is None) != (self.tls_key_file is None):
            raise ValueError("server.tls_cert_file and server.tls_key_file go together")
        return self


@dataclass(frozen=True, slots=True)
class DevTlsPaths:
    """The files of the development CA and server certificate under <data_dir>/tls."""

    directory: Path

    @property
    def ca_cert(self) -> Path:
        return self.directory / "ca.pem"

    @property
    def ca_key(self) -> Path:
        return self.directory / "ca.key"

    @property
    def server_cert(self) -> Path:
        return self.directory / "server.pem"

    @property
    def server_key(self) -> Path:
        return self.directory / "server.key"


@dataclass(frozen=True, slots=True)
class TlsFiles:
    """Where a server's TLS material comes from. dev_ca: the development CA that issued
    cert_file, when the files are the generated development ones (None otherwise)."""

    cert_file: Path
    key_file: Path
    client_ca_file: Path | None = None
    dev_ca: Path | None = None


class HsmSettings(BaseModel):
    module: Path = Field(
        Path("/usr/lib/softhsm/libsofthsm2.so"), description="PKCS#11 module to load"
    )
    token_label: str = Field("vault", description="label of the vault's token")
    user_pin: SecretStr | None = Field(
        None, description="user PIN; prefer user_pin_file or VAULT_HSM__USER_PIN"
    )
    user_pin_file: Path | None = Field(
        None, description="file holding the user PIN (default: <data_dir>/secrets/user.pin)"
    )
    so_pin: SecretStr | None = Field(
        None, description="SO PIN, for `vaultctl token init` only; prefer VAULT_HSM__SO_PIN"
    )
    so_pin_file: Path | None = Field(
        None,
        description="file holding the SO PIN, outside data_dir, for `vaultctl token init` "
        "only (default: a hidden prompt on a terminal, else a generated development PIN in "
        "$XDG_STATE_HOME/vault/)",
    )
    softhsm_conf: Path | None = Field(
        None, description="SoftHSM2 config (default: <data_dir>/softhsm2.conf); sets SOFTHSM2_CONF"
    )
    cache_size: int = Field(
        16_384,
        ge=1,
        description="unwrapped key objects each worker process keeps in the token, shared by "
        "its threads (plus one per key version calls in flight use); about 10.5 KiB of "
        "resident memory each for a P-256 key, 2.4 KiB for an AES key",
    )
    version_cache_size: int = Field(
        16_384,
        ge=1,
        description="enabled key versions (metadata and wrapped blob) each worker process "
        "keeps in memory, so a request on a cached key reads no version row (about 0.9 KiB "
        "each)",
    )
    cache_ttl_seconds: int = Field(
        300,
        ge=1,
        description="how long a cached handle lives (dropped on the next request once a "
        "version is destroyed, revoked or disabled)",
    )


class StoreSettings(BaseModel):
    # Out of repr: a PostgreSQL URL may carry the database password.
    url: str | None = Field(
        None,
        repr=False,
        description="SQLAlchemy URL (default: sqlite:///<data_dir>/vault.db); a "
        "postgresql:// URL (psycopg 3) may be shared by several vault hosts",
    )
    disk_reserve_bytes: int = Field(
        64 << 20,
        ge=0,
        description="space set aside in <data_dir>/run/disk-reserve; when the disk fills up it "
        "is freed for the audit records of reads while changes are refused (0: off)",
    )
    key_cache_size: int = Field(
        16_384,
        ge=1,
        description="keys each worker process keeps in memory while no key or version has "
        "changed anywhere, shared by its threads (SQLite store; about 0.7 KiB each)",
    )


class KeyPolicySettings(BaseModel):
    min_destroy_waiting_seconds: int = Field(
        86_400, ge=0, description="shortest waiting period ScheduleKeyDestruction accepts"
    )
    default_destroy_waiting_seconds: int = Field(
        30 * 86_400, ge=0, description="waiting period when the request gives none"
    )
    destroy_check_seconds: float = Field(
        30.0, gt=0, description="how often keys whose waiting period ended are destroyed"
    )
    max_plaintext_bytes: int = Field(65_536, ge=1, description="largest Encrypt plaintext")
    import_job_lifetime_seconds: int = Field(
        86_400,
        ge=1,
        le=30 * 86_400,
        description="how long an import job accepts material before its private key is destroyed",
    )

    @property
    def import_job_lifetime(self) -> timedelta:
        return timedelta(seconds=self.import_job_lifetime_seconds)

    @property
    def min_destroy_waiting(self) -> timedelta:
        return timedelta(seconds=self.min_destroy_waiting_seconds)

    @property
    def default_destroy_waiting(self) -> timedelta:
        return timedelta(seconds=self.default_destroy_waiting_seconds)


class AuthSettings(BaseModel):
    enabled: bool = Field(
        True,
        description="authenticate, authorise and audit every call; false is accepted only on "
        "a loopback or unix: address, for measuring what security costs (make bench)",
    )
    timestamp_window_seconds: int = Field(
        300, ge=1, le=3600, description="how far a signed request's timestamp may be from now"
    )
    failure_window_seconds: float = Field(
        60.0, gt=0, description="window over which failed authentications are counted"
    )
    max_failures_per_address: int = Field(
        30,
        ge=1,
        description="failed authentications from one address before its further failures are "
        "throttled (valid credentials are always admitted)",
    )
    max_failures_per_key: int = Field(
        10,
        ge=1,
        description="failed authentications naming one key id from one address before that "
        "address's further failures at it are throttled",
    )
    client_certificate_accounts: bool = Field(
        False,
        description="with mutual TLS (server.client_ca_file): a call without an authorization "
        "header, from a client certificate whose subject common name is an existing account "
        "id, acts for that account (full access to its keys, never the admin role)",
    )
    admin_credentials_file: Path | None = Field(
        None,
        description="where the first start stores the bootstrapped admin access key (mode "
        "0600; default: <data_dir>/admin-credentials.json); vaultctl reads it",
    )


class AuditSettings(BaseModel):
    checkpoint_every_records: int = Field(
        1000, ge=1, description="sign a checkpoint of the audit chain after this many records"
    )
    checkpoint_every_seconds: float = Field(
        60.0, gt=0, description="...or after this long, whichever comes first"
    )


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="VAULT_", env_nested_delimiter="__", extra="forbid"
    )

    data_dir: Path = Field(DEFAULT_DATA_DIR, description="where the token, store and secrets live")
    log_level: str = Field("INFO", description="DEBUG, INFO, WARNING or ERROR")
    log_format: str = Field(
        "text",
        description="text (for a terminal) or json (one object per line, with the request id "
        "of the call each line was logged in)",
    )
    server: ServerSettings = ServerSettings()  # type: ignore[call-arg]
    hsm: HsmSettings = HsmSettings()  # type: ignore[call-arg]
    store: StoreSettings = StoreSettings()  # type: ignore[call-arg]
    keys: KeyPolicySettings = KeyPolicySettings()  # type: ignore[call-arg]
    auth: AuthSettings = AuthSettings()  # type: ignore[call-arg]
    audit: AuditSettings = AuditSettings()  # type: ignore[call-arg]

    @model_validator(mode="after")
    def _fill_data_dir_defaults(self) -> Settings:
        data_dir = self.data_dir.resolve()
        self.data_dir = data_dir
        if self.hsm.user_pin_file is None:
            self.hsm.user_pin_file = data_dir / "secrets" / "user.pin"
        if self.hsm.softhsm_conf is None:
            self.hsm.softhsm_conf = data_dir / "softhsm2.conf"
        if self.store.url is None:
            self.store.url = f"sqlite:///{data_dir / 'vault.db'}"
        if self.auth.admin_credentials_file is None:
            self.auth.admin_credentials_file = data_dir / "admin-credentials.json"
        return self

    @property
    def shared_state_file(self) -> Path:
        """The state all worker processes of a server share (rate limits, nonces...)."""
        return self.data_dir / "run" / "shared-limits"

    @property
    def metrics_directory(self) -> Path:
        """The workers' metric files (prometheus-client's multiprocess mode)."""
        return self.data_dir / "run" / "metrics"

    @property
    def backup_directory(self) -> Path:
        """Where RestoreBackup and VerifyBackup find the bundles they are given by name."""
        return self.data_dir / "backups"

    @property
    def disk_reserve_file(self) -> Path:
        """Space set aside for when the data directory's disk fills up."""
        return self.data_dir / "run" / "disk-reserve"

    # The settings file these settings were read from (None: environment and defaults only),
    # for messages that say where a value came from.
    _source_file: Path | None = PrivateAttr(None)

    @property
    def source_file(self) -> Path | None:
        return self._source_file

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        config_file = _config_file.get() or os.environ.get(CONFIG_ENV)
        if config_file:
            sources.append(_AnchoredTomlSource(settings_cls, toml_file=Path(config_file)))
        return tuple(sources)

    @property
    def dev_tls_paths(self) -> DevTlsPaths:
        return DevTlsPaths(self.data_dir / DEV_TLS_DIR)

    def server_tls(self) -> TlsFiles | None:
        """The TLS files the server uses, or None for plaintext.

        server.tls_cert_file/tls_key_file when set; otherwise, with server.dev_tls, the
        development certificate in <data_dir>/tls if it exists (`vaultctl serve` creates it;
        a data directory provisioned without the CLI has none and stays plaintext)."""
        server = self.server
        if server.tls_cert_file is not None and server.tls_key_file is not None:
            return TlsFiles(server.tls_cert_file, server.tls_key_file, server.client_ca_file)
        if server.dev_tls:
            dev = self.dev_tls_paths
            if dev.server_cert.exists() or dev.server_key.exists():
                return TlsFiles(
                    dev.server_cert, dev.server_key, server.client_ca_file, dev_ca=dev.ca_cert
                )
        return None

    def user_pin(self) -> str:
        return read_secret(self.hsm.user_pin, self.hsm.user_pin_file, "user PIN")

    def user_pin_origin(self) -> str:
        """Where the user PIN comes from, never the PIN: the file or the setting to fix."""
        if self.hsm.user_pin is not None:
            if "VAULT_HSM__USER_PIN" in os.environ:
                return "VAULT_HSM__USER_PIN"
            return f"hsm.user_pin in {self.source_file or 'the settings'}"
        return f"{self.hsm.user_pin_file} (hsm.user_pin_file)"


def read_secret(value: SecretStr | None, path: Path | None, what: str) -> str:
    if value is not None:
        return value.get_secret_value()
    if path is None or not path.exists():
        raise FileNotFoundError(f"no {what}: set it in the environment or create {path}")
    return path.read_text(encoding="utf-8").strip()


# The file load_settings was given, for settings_customise_sources (a classmethod, so it
# cannot take arguments); a context variable leaves the process environment alone.
_config_file: ContextVar[str | None] = ContextVar("vault_config_file", default=None)


def load_settings(
    config_file: Path | None = None, *, discover: bool = False, **overrides: Any
) -> Settings:
    """Settings from config_file (or $VAULT_CONFIG), the environment, then overrides. With
    discover and neither given: from the file find_config_file finds, if any."""
    if config_file is None:
        given = os.environ.get(CONFIG_ENV)
        if given:
            config_file = Path(given)
        elif discover:
            config_file = find_config_file()
    token = _config_file.set(str(config_file) if config_file is not None else None)
    try:
        settings = Settings(**overrides)
    finally:
        _config_file.reset(token)
    settings._source_file = config_file.absolute() if config_file is not None else None
    return settings


def user_config_file(environ: Mapping[str, str] = os.environ) -> Path:
    """The user's settings file: $XDG_CONFIG_HOME/vault/config.toml, by default under
    ~/.config (the XDG base directory rules: a relative XDG_CONFIG_HOME is ignored)."""
    base = environ.get("XDG_CONFIG_HOME", "")
    root = Path(base) if base and Path(base).is_absolute() else Path.home() / ".config"
    return root / "vault" / "config.toml"


def find_config_file(
    start: Path | None = None, environ: Mapping[str, str] = os.environ
) -> Path | None:
    """The settings file a command uses when neither --config nor $VAULT_CONFIG names one:
    the nearest vault.toml in start (the current directory) or its parents, else the user's
    config.toml; None when there is neither."""
    directory = (start or Path.cwd()).absolute()
    for candidate in (directory, *directory.parents):
        local = candidate / LOCAL_CONFIG_NAME
        if local.is_file():
            return local
    user = user_config_file(environ)
    return user if user.is_file() else None


def record_local_server(settings: Settings, environ: Mapping[str, str] = os.environ) -> Path | None:
    """Write the user's settings file naming this server (its data directory and address),
    so vaultctl finds it from directories outside the server's tree; only when the user has
    no such file: an existing one is the user's, never replaced. Returns the file written."""
    path = user_config_file(environ)
    if path.exists():
        return None
    lines = [
        "# Written by `vaultctl serve`, because this file did not exist: the vault this user",
        "# runs, for vaultctl in any directory without a vault.toml. Edit or delete it freely;",
        "# vaultctl serve never replaces it.",
        f"data_dir = {_toml_string(str(settings.data_dir))}",
    ]
    credentials = settings.auth.admin_credentials_file
    if credentials is not None and credentials != settings.data_dir / "admin-credentials.json":
        lines += ["", "[auth]", f"admin_credentials_file = {_toml_string(str(credentials))}"]
    lines += ["", "[server]", f"listen = {_toml_string(settings.server.listen)}"]
    if not settings.server.dev_tls:
        lines.append("dev_tls = false")
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    temporary.write_text("\n".join(lines) + "\n", encoding="utf-8")
    try:
        # A link, not a rename: if another server wrote the file meanwhile, it stays.
        os.link(temporary, path)
    except FileExistsError:
        return None
    finally:
        temporary.unlink()
    return path


def _toml_string(value: str) -> str:
    # A TOML basic string: JSON's escapes are a subset of TOML's.
    return json.dumps(value)


class _AnchoredTomlSource(TomlConfigSettingsSource):
    """A TOML settings file whose relative paths are relative to the file's directory, so
    the file means the same thing whichever directory a command runs in."""

    def __init__(self, settings_cls: type[BaseSettings], toml_file: Path) -> None:
        self._model = settings_cls  # the base class reads the file before it keeps this
        super().__init__(settings_cls, toml_file=toml_file)

    def _read_file(self, file_path: Any) -> dict[str, Any]:
        data = super()._read_file(file_path)
        if isinstance(file_path, Path):
            _anchor_paths(self._model, data, file_path.absolute().parent)
        return data


def _anchor_paths(model: type[BaseModel], data: dict[str, Any], base: Path) -> None:
    for name, info in model.model_fields.items():
        value = data.get(name)
        if value is None:
            continue
        kinds = _kinds(info.annotation)
        if Path in kinds and isinstance(value, str) and value:
            data[name] = str(base / Path(value).expanduser())  # an absolute value stays
        elif isinstance(value, dict):
            for kind in kinds:
                if isinstance(kind, type) and issubclass(kind, BaseModel):
                    _anchor_paths(kind, value, base)


def _kinds(annotation: Any) -> tuple[Any, ...]:
    """The types an annotation admits: (Path, NoneType) for Path | None."""
    if get_origin(annotation) in (Union, types.UnionType):
        return get_args(annotation)
    return (annotation,)
