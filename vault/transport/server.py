"""One gRPC server: the vault's services, health and reflection on the configured address.

vault.transport.supervisor runs several of these, one per worker process, on one port.
With TLS material (vault.transport.tls) the server binds any address; without it, it serves
plaintext and refuses every address but loopback and unix: sockets.
"""

from __future__ import annotations

import errno
import ipaddress
import logging
import socket
import time
from concurrent import futures
from dataclasses import dataclass
from typing import Any, Final

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from vault.config import Settings
from vault.gen.vault.v1 import (
    audit_service_pb2,
    audit_service_pb2_grpc,
    backup_service_pb2,
    backup_service_pb2_grpc,
    bucket_service_pb2,
    bucket_service_pb2_grpc,
    crypto_service_pb2,
    crypto_service_pb2_grpc,
    identity_service_pb2,
    identity_service_pb2_grpc,
    key_service_pb2,
    server_service_pb2,
    server_service_pb2_grpc,
)
from vault.transport.backup_servicer import BackupServicer
from vault.transport.batches import BatchLimits
from vault.transport.bucket_servicer import BucketServicer
from vault.transport.crypto_servicer import CryptoServicer
from vault.transport.errors import ErrorInterceptor
from vault.transport.health import HealthProbe, health_servicer
from vault.transport.identity_servicer import AuditServicer, IdentityServicer
from vault.transport.key_servicer import KeyServicer
from vault.transport.key_servicer import add_to_server as add_key_service
from vault.transport.listing import ListingResponses
from vault.transport.observe import ObservingInterceptor
from vault.transport.security import SecurityInterceptor
from vault.transport.served import ServedServices
from vault.transport.status_servicer import ServerFacts, StatusServicer
from vault.transport.tls import ServerTls
from vault.transport.wrapping import InterceptorChain, WrappingInterceptor

log = logging.getLogger(__name__)

KEY_SERVICE: Final = key_service_pb2.DESCRIPTOR.services_by_name["KeyService"].full_name
CRYPTO_SERVICE: Final = crypto_service_pb2.DESCRIPTOR.services_by_name["CryptoService"].full_name
IDENTITY_SERVICE: Final = identity_service_pb2.DESCRIPTOR.services_by_name[
    "IdentityService"
].full_name
AUDIT_SERVICE: Final = audit_service_pb2.DESCRIPTOR.services_by_name["AuditService"].full_name
SERVER_SERVICE: Final = server_service_pb2.DESCRIPTOR.services_by_name["ServerService"].full_name
BUCKET_SERVICE: Final = bucket_service_pb2.DESCRIPTOR.services_by_name["BucketService"].full_name
BACKUP_SERVICE: Final = backup_service_pb2.DESCRIPTOR.services_by_name["BackupService"].full_name


class ListenAddressError(ValueError):
    """server.listen cannot be served (not loopback without TLS, malformed, port 0...)."""


class PortInUse(ListenAddressError):
    """Another process (a vault on another data directory, or any program) has the port."""


def ensure_port_free(address: ListenAddress) -> None:
    """Raise PortInUse if something listens on address already.

    The workers bind with SO_REUSEPORT, which lets them join a port another process bound
    with it too (any other vault, any gRPC server): the kernel would then hand our clients
    to it. So first bind once without SO_REUSEPORT, which fails on a port anyone listens on.
    SO_REUSEADDR keeps connections of a stopped server (TIME_WAIT) from counting.
    """
    if address.unix:
        return
    try:
        candidates = socket.getaddrinfo(address.host, address.port, type=socket.SOCK_STREAM)
    except OSError:
        return  # gRPC reports an address it cannot resolve when it binds
    for family, kind, proto, _, sockaddr in candidates:
        with socket.socket(family, kind, proto) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind(sockaddr)
            except OSError as error:
                if error.errno == errno.EADDRINUSE:
                    raise PortInUse(
                        f"{address} is already in use (another vault or program); "
                        "set server.listen or stop it"
                    ) from None
                # Any other failure (no IPv6 here...) is gRPC's to report when it binds.


TLS_HINT: Final = (
    "set server.tls_cert_file and server.tls_key_file, or start with `vaultctl serve` and "
    "server.dev_tls = true (the default), which creates a development certificate in "
    "<data_dir>/tls"
)


@dataclass(frozen=True, slots=True)
class ListenAddress:
    """A parsed server.listen: host:port, [v6]:port, unix:path or unix-abstract:name."""

    text: str
    host: str = ""
    port: int = 0
    unix: bool = False

    @classmethod
    def parse(cls, listen: str, *, tls: bool = False) -> ListenAddress:
        """Parse listen; without tls, only a loopback address or a unix: socket is allowed."""
        if listen.startswith(("unix:", "unix-abstract:")):
            return cls(listen, unix=True)
        host, _, port_text = listen.rpartition(":")
        if host.startswith("[") and host.endswith("]"):
            host = host[1:-1]
        if not host or not port_text.isdigit() or int(port_text) > 65535:
            raise ListenAddressError(
                f"server.listen={listen!r}: expected host:port, [ipv6]:port or unix:path"
            )
        if not tls and not _is_loopback(host):
            raise ListenAddressError(
                f"server.listen={listen!r} is not a loopback address and no TLS certificate "
                "is configured: the vault serves plaintext gRPC only on 127.0.0.0/8, [::1], "
                f"localhost or a unix: socket; for any other address {TLS_HINT}"
            )
        return cls(listen, host, int(port_text))

    def with_port(self, port: int) -> ListenAddress:
        if self.unix:
            raise ListenAddressError("a port cannot be given for a unix: socket address")
        return ListenAddress(f"{self._host_text()}:{port}", self.host, port)

    def _host_text(self) -> str:
        return f"[{self.host}]" if ":" in self.host else self.host

    def __str__(self) -> str:
        return self.text if self.unix else f"{self._host_text()}:{self.port}"


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # any other host name may resolve to anything


@dataclass(slots=True)
class BuiltServer:
    server: grpc.Server
    port: int
    health: Any  # grpc_health ships no type information
    # Keeps health's status current once started (the workers start it after the server).
    probe: HealthProbe


def build_server(
    services: ServedServices,
    settings: Settings,
    port_override: int | None = None,
    *,
    reuse_port: bool = False,
    tls: ServerTls | None = None,
) -> tuple[grpc.Server, int]:
    """A ready-to-start server for services on settings.server.listen (or port_override).

    Returns the server, not started, and the port it bound (1 for a unix: socket). With
    reuse_port false, binding a port another process holds fails instead of sharing it.
    With tls (vault.transport.tls.load_server_tls) the port serves TLS only.
    """
    built = build(services, settings, port_override, reuse_port=reuse_port, tls=tls)
    return built.server, built.port


def build(
    services: ServedServices,
    settings: Settings,
    port_override: int | None,
    *,
    reuse_port: bool,
    tls: ServerTls | None = None,
    status: ServerFacts | None = None,
) -> BuiltServer:
    """status: what the supervisor tells this worker, for ServerService (default: the
    server started now, as worker 0)."""
    address = ListenAddress.parse(settings.server.listen, tls=tls is not None)
    if port_override is not None:
        address = address.with_port(port_override)
    if not settings.auth.enabled and not (address.unix or _is_loopback(address.host)):
        raise ListenAddressError(
            f"server.listen={address}: auth.enabled = false is accepted only on a loopback "
            "address or a unix: socket"
        )
    security = services.security
    interceptors: list[WrappingInterceptor] = [ObservingInterceptor(), ErrorInterceptor()]
    if security is not None:
        if security.authenticator is None:
            raise RuntimeError("authentication needs the workers' shared counters")
        interceptors.append(
            SecurityInterceptor(
                security.authenticator,
                security.audit,
                certificate_accounts=settings.auth.client_certificate_accounts,
                disk_reserve=security.disk_reserve,
                max_batch_items=settings.server.max_batch_items,
            )
        )
    max_bytes = settings.server.max_message_bytes
    batch_limits = BatchLimits(settings.server.max_batch_items, max_bytes)
    server = grpc.server(
        futures.ThreadPoolExecutor(
            max_workers=settings.server.threads, thread_name_prefix="vault-rpc"
        ),
        interceptors=[InterceptorChain(interceptors)],
        options=[
            ("grpc.max_receive_message_length", max_bytes),
            ("grpc.max_send_message_length", max_bytes),
            # gRPC enables SO_REUSEPORT by default on Linux; off unless the workers share
            # the port on purpose, so a stale server on the same port is an error.
            ("grpc.so_reuseport", 1 if reuse_port else 0),
        ],
    )
    add_key_service(
        KeyServicer(
            services.keys,
            services.feeds,
            services.imports,
            ListingResponses(settings.server.listed_key_cache_size, max_bytes),
        ),
        server,
    )
    crypto_service_pb2_grpc.add_CryptoServiceServicer_to_server(
        CryptoServicer(services.crypto, batch_limits), server
    )
    bucket_service_pb2_grpc.add_BucketServiceServicer_to_server(
        BucketServicer(services.buckets, batch_limits), server
    )
    served = [KEY_SERVICE, CRYPTO_SERVICE, BUCKET_SERVICE]
    if security is not None:
        identity_service_pb2_grpc.add_IdentityServiceServicer_to_server(
            IdentityServicer(security.identity, max_bytes), server
        )
        audit_service_pb2_grpc.add_AuditServiceServicer_to_server(
            AuditServicer(security.audit, max_bytes), server
        )
        served += [IDENTITY_SERVICE, AUDIT_SERVICE]
        if services.backups is not None:
            # Admin-only, so served only where there is an admin role (auth.enabled).
            backup_service_pb2_grpc.add_BackupServiceServicer_to_server(
                BackupServicer(services.backups, max_bytes), server
            )
            served.append(BACKUP_SERVICE)
    served.append(SERVER_SERVICE)
    health_status, health_registered = health_servicer()
    for service in ("", *served):
        health_status.set(service, health_pb2.HealthCheckResponse.SERVING)
    health_pb2_grpc.add_HealthServicer_to_server(health_registered, server)
    reflection.enable_server_reflection(
        (*served, health.SERVICE_NAME, reflection.SERVICE_NAME), server
    )
    try:
        if tls is None:
            port = server.add_insecure_port(str(address))
        else:
            port = server.add_secure_port(str(address), tls.credentials())
    except RuntimeError as error:
        raise OSError(f"cannot bind {address}: {error}") from None
    if port == 0:
        raise OSError(f"cannot bind {address}")
    probe = HealthProbe(health_status, served, services.health_checks)
    server_service_pb2_grpc.add_ServerServiceServicer_to_server(
        StatusServicer(
            settings,
            status or ServerFacts(started_at=time.time()),
            probe,
            security.audit if security is not None else None,
            tls=tls is not None,
        ),
        server,
    )
    return BuiltServer(server, port, health_status, probe)
