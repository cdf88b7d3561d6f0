"""The floor: what a Python gRPC server costs with no vault code at all, on this machine, in
the same run as the vault.

Four bare servers, each served like the vault: N processes bind one port with SO_REUSEPORT
(as vault.transport.supervisor's workers do) and the kernel spreads the load generators'
connections over them. They are driven by the same load generators (bench/load.py), with the
same request bytes as the vault's RSA-2048 Sign, and measured in the same way:

- grpc-floor-sync: grpcio's thread-pool server with the vault's request threads per process;
  the handler returns the request bytes (no protobuf work, no interceptor);
- grpc-floor-aio: the same with a grpc.aio server;
- grpc-rsa-sync, grpc-rsa-aio: the same two servers whose handler makes one real RSA-2048 PSS
  signature per call on the same SoftHSM token, with bench/raw.py's token opening and key
  path (the key wrapped once, then unwrapped into each request thread's session, as a vault
  worker's handle cache holds it) and the raw side's PKCS#11 call. Nothing else is in the
  request's path, so the better of the two ratios to raw is a ceiling for the vault's (which
  serves with the sync server) on this machine.

The aio signer hands each signature to a pool of as many threads as the sync server has:
python-pkcs11 releases the GIL while the token signs, so the event loop goes on with gRPC's
work meanwhile. Signing in the event loop itself serialises the two and served fewer requests
on this 2-core machine (0.62 of raw against 0.66-0.67 with 1 worker in trial runs), and the
ceiling is meant to be the best such a server does.

The token-bound processes open the token one at a time (the lock floor_main is given):
SoftHSM rewrites its token file on login, and a process listing slots meanwhile can miss the
token, which is why the vault's supervisor starts its workers one after the other too.
"""

from __future__ import annotations

import asyncio
import os
import signal
import threading
from collections.abc import Awaitable, Callable
from concurrent import futures
from contextlib import AbstractContextManager, suppress
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any, Final

import grpc
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from pkcs11 import Attribute

from bench.ops import OPS, RSA_SIGN, SIGN_MESSAGE, vault_request
from bench.raw import open_token, raw_call, root_key, unwrapped_key, wrapped_key

FLOOR_SYNC: Final = "grpc-floor-sync"
FLOOR_AIO: Final = "grpc-floor-aio"
RSA_SYNC: Final = "grpc-rsa-sync"
RSA_AIO: Final = "grpc-rsa-aio"
# What the echo rows measure, in the op column of the tables and results.json.
ECHO_OP: Final = "grpc_echo"
_SERVICE: Final = "bench.Floor"
_HOST: Final = "127.0.0.1"
_ECHO: Final = "Echo"
_SIGN: Final = "Sign"


@dataclass(frozen=True, slots=True)
class Variant:
    path: str  # in the path column and results.json
    aio: bool
    token_bound: bool

    @property
    def op(self) -> str:
        """The operation this server's load generators send."""
        return RSA_SIGN if self.token_bound else ECHO_OP

    @property
    def method_name(self) -> str:
        return _SIGN if self.token_bound else _ECHO

    @property
    def method(self) -> str:
        return f"/{_SERVICE}/{self.method_name}"

    def requests(self) -> dict[str, tuple[str, bytes]]:
        """bench.load's requests: the vault's Sign request bytes, so both carry the same
        payload (the echo returns it; the signer ignores it and signs the raw side's
        message)."""
        return {self.op: (self.method, vault_request(OPS[RSA_SIGN]))}


VARIANTS: Final = {
    variant.path: variant
    for variant in (
        Variant(FLOOR_SYNC, aio=False, token_bound=False),
        Variant(FLOOR_AIO, aio=True, token_bound=False),
        Variant(RSA_SYNC, aio=False, token_bound=True),
        Variant(RSA_AIO, aio=True, token_bound=True),
    )
}
ECHO_PATHS: Final = (FLOOR_SYNC, FLOOR_AIO)
TOKEN_PATHS: Final = (RSA_SYNC, RSA_AIO)


class _Signer:
    """One process's RSA-2048 key on the token, usable from any thread: each thread signs in
    its own session (PKCS#11 allows one operation per session at a time) with its own
    unwrapped copy of the key, as vault workers do."""

    def __init__(self, data_dir: str) -> None:
        self._algorithm = OPS[RSA_SIGN].algorithm
        self._library = open_token(data_dir)
        session = self._library.context().session
        self._blob = wrapped_key(session, root_key(session, self._algorithm), self._algorithm)
        self._local = threading.local()

    def public_numbers(self) -> tuple[int, int]:
        """(modulus, public exponent), which an RSA private key object also carries."""
        key = self._key_here()[1]
        return (
            int.from_bytes(key[Attribute.MODULUS], "big"),
            int.from_bytes(key[Attribute.PUBLIC_EXPONENT], "big"),
        )

    def _key_here(self) -> tuple[Callable[[], Any], Any]:
        here: tuple[Callable[[], Any], Any] | None = getattr(self._local, "here", None)
        if here is None:
            session = self._library.context().session
            key = unwrapped_key(root_key(session, self._algorithm), self._algorithm, self._blob)
            here = (raw_call(RSA_SIGN, session, key), key)
            self._local.here = here
        return here

    def sign(self) -> bytes:
        return bytes(self._key_here()[0]())


def _register(
    server: grpc.Server | grpc.aio.Server, variant: Variant, behaviour: Callable[..., Any]
) -> None:
    """As generated code registers a service (grpcio-tools): generic and registered
    handlers, so calls take the same lookup as the vault's. Bytes in, bytes out."""
    handlers: dict[str, grpc.RpcMethodHandler[bytes, bytes]] = {
        variant.method_name: grpc.unary_unary_rpc_method_handler(behaviour)
    }
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(_SERVICE, handlers),))
    server.add_registered_method_handlers(_SERVICE, handlers)


def _wait_for_stop(conn: Connection) -> None:
    """Block until the parent says stop (None) or goes away."""
    try:
        while conn.recv() is not None:
            pass
    except (EOFError, OSError):
        pass


def _bind(server: grpc.Server | grpc.aio.Server, port: int) -> None:
    bound = server.add_insecure_port(f"{_HOST}:{port}")
    if bound != port:
        raise OSError(f"cannot bind {_HOST}:{port} (got {bound})")


def _serve_sync(
    conn: Connection, variant: Variant, port: int, threads: int, signer: _Signer | None
) -> None:
    behaviour: Callable[[bytes, grpc.ServicerContext], bytes]
    if signer is None:

        def echo(request: bytes, context: grpc.ServicerContext) -> bytes:
            return request

        behaviour = echo
    else:
        sign_once = signer.sign

        def sign(request: bytes, context: grpc.ServicerContext) -> bytes:
            return sign_once()

        behaviour = sign
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=threads, thread_name_prefix="floor-rpc"),
        options=[("grpc.so_reuseport", 1)],
    )
    _register(server, variant, behaviour)
    _bind(server, port)
    server.start()
    try:
        _ready(conn, signer)
        _wait_for_stop(conn)
    finally:
        server.stop(0).wait()


async def _serve_aio(
    conn: Connection, variant: Variant, port: int, threads: int, signer: _Signer | None
) -> None:
    server = grpc.aio.server(options=[("grpc.so_reuseport", 1)])
    behaviour: Callable[[bytes, grpc.aio.ServicerContext[bytes, bytes]], Awaitable[bytes]]
    if signer is None:

        async def echo(request: bytes, context: grpc.aio.ServicerContext[bytes, bytes]) -> bytes:
            return request

        behaviour = echo
    else:
        sign_once = signer.sign
        pool = futures.ThreadPoolExecutor(max_workers=threads, thread_name_prefix="floor-sign")
        loop = asyncio.get_running_loop()

        async def sign(request: bytes, context: grpc.aio.ServicerContext[bytes, bytes]) -> bytes:
            return await loop.run_in_executor(pool, sign_once)

        behaviour = sign
    _register(server, variant, behaviour)
    _bind(server, port)
    await server.start()
    try:
        _ready(conn, signer)
        # A thread waits on the pipe so the event loop serves undisturbed.
        await asyncio.to_thread(_wait_for_stop, conn)
    finally:
        await server.stop(0)


def _ready(conn: Connection, signer: _Signer | None) -> None:
    conn.send(("ready", os.getpid(), None if signer is None else signer.public_numbers()))


def floor_main(
    conn: Connection,
    path: str,
    port: int,
    threads: int,
    data_dir: str,
    token_lock: AbstractContextManager[Any],
) -> None:
    """Process entry point: one server process of variant path on port (shared with the
    variant's other processes). Replies ("ready", pid, (modulus, exponent) of its signing
    key or None), serves until None, then exits. threads: the sync server's request threads
    (and the aio signer's); data_dir: the token's (token-bound variants); token_lock: held
    by one process at a time while it opens the token."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent stops us on Ctrl-C
    variant = VARIANTS[path]
    try:
        signer = None
        if variant.token_bound:
            # Opened here, after spawn: PKCS#11 does not survive a fork.
            with token_lock:
                signer = _Signer(data_dir)
            signer.sign()  # fails here, not while measuring, if something is wrong
        if variant.aio:
            asyncio.run(_serve_aio(conn, variant, port, threads, signer))
        else:
            _serve_sync(conn, variant, port, threads, signer)
    except Exception as error:
        # Before "ready" the parent waits for this; afterwards it may be gone already.
        with suppress(OSError):
            conn.send(("error", f"{type(error).__name__}: {error}"))


def check_answer(variant: Variant, answer: bytes, public_keys: list[tuple[int, int]]) -> None:
    """Check one answer of variant's servers: the echo returns the request; the signer's
    signature verifies (with `cryptography`) under one of its processes' public keys."""
    request = variant.requests()[variant.op][1]
    if not variant.token_bound:
        if answer != request:
            raise AssertionError(f"{variant.path} did not echo the request")
        return
    pss = padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=32)
    for modulus, exponent in public_keys:
        public = rsa.RSAPublicNumbers(exponent, modulus).public_key()
        try:
            public.verify(answer, SIGN_MESSAGE, pss, hashes.SHA256())
        except InvalidSignature:
            continue  # another process of the variant, with its own key, signed it
        return
    raise AssertionError(f"{variant.path}: the signature verifies under none of its keys")
