"""The vault side's load: a process with several threads, each with its own gRPC channel
(its own TCP connection, so the kernel's SO_REUSEPORT choice spreads them over the workers),
sending pre-serialized requests in a closed loop and timing each one.

Requests go out as bytes and answers come back as bytes: the client does no protobuf work
while measuring, so it takes as little CPU as it can from the server on this shared machine.
The answers' content is checked once per server before measuring (bench.ops).

Against a server on the authenticated path, every call goes through the client SDK's
signing interceptor (vault.client.authenticated_channel) with the admin access key: each
call is signed afresh over the bytes sent, since the server accepts a nonce once, so the
signing is part of the client CPU reported. The process reads the key from the credentials
file it is given: the secret is on no command line, in no pipe to the parent, in no output.
"""

from __future__ import annotations

import signal
import threading
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import grpc

from bench.measure import Loop, combine, timed_loop
from vault.client import Credentials, authenticated_channel, load_credentials_file

_CALL_TIMEOUT_SECONDS = 30.0
_CONNECT_TIMEOUT_SECONDS = 15.0


def bytes_call(channel: grpc.Channel, method: str) -> grpc.UnaryUnaryMultiCallable[bytes, bytes]:
    """method on channel with no serializers: bytes in, bytes out."""
    call: grpc.UnaryUnaryMultiCallable[bytes, bytes] = channel.unary_unary(method)
    return call


def _channels(target: str, count: int, credentials: Credentials | None) -> list[grpc.Channel]:
    channels = []
    for _ in range(count):
        # A local subchannel pool: without it, channels of one process to one target share
        # one connection, and so one server worker.
        channel = grpc.insecure_channel(target, options=[("grpc.use_local_subchannel_pool", 1)])
        grpc.channel_ready_future(channel).result(timeout=_CONNECT_TIMEOUT_SECONDS)
        if credentials is not None:
            channel = authenticated_channel(channel, credentials)
        channels.append(channel)
    return channels


def load_main(
    conn: Connection,
    target: str,
    threads: int,
    requests: dict[str, tuple[str, bytes]],
    credentials_file: str | None,
) -> None:
    """Process entry point. Commands: ("connect",) -> "connected" (new connections each
    time); ("run", op, warm_until, seconds) -> Sample; None -> exit.
    requests: op name -> (method path, serialized request); credentials_file: the access key
    that signs every call, or None to send the calls unsigned."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent stops us on Ctrl-C
    channels: list[grpc.Channel] = []
    try:
        credentials = (
            None if credentials_file is None else load_credentials_file(Path(credentials_file))
        )
    except Exception as error:
        conn.send(("error", f"{type(error).__name__}: {error}"))
        return
    try:
        while True:
            command = conn.recv()
            if command is None:
                return
            try:
                if command[0] == "connect":
                    for channel in channels:
                        channel.close()
                    channels = _channels(target, threads, credentials)
                    conn.send("connected")
                else:
                    _, name, warm_until, seconds = command
                    conn.send(_run(channels, requests[name], warm_until, seconds))
            except Exception as error:
                conn.send(("error", f"{type(error).__name__}: {error}"))
    finally:
        for channel in channels:
            channel.close()


def _run(
    channels: list[grpc.Channel], request: tuple[str, bytes], warm_until: float, seconds: float
) -> Any:
    method, payload = request
    loops: list[Loop] = [Loop() for _ in channels]

    def drive(index: int, channel: grpc.Channel) -> None:
        call = bytes_call(channel, method)

        def once() -> Any:
            return call(payload, timeout=_CALL_TIMEOUT_SECONDS)

        loops[index] = timed_loop(once, warm_until, seconds, errors=grpc.RpcError)

    workers = [
        threading.Thread(target=drive, args=(index, channel), daemon=True)
        for index, channel in enumerate(channels)
    ]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    return combine(loops)
