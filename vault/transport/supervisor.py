"""Serving with several processes on one port, and keeping them running.

The GIL starves PKCS#11 calls, so the vault serves from several worker processes that bind
the same port with SO_REUSEPORT and let the kernel spread connections (gRPC Python's
multiprocessing example). PKCS#11 must be initialised in the process that uses it, after
fork, so the supervising parent never opens the token or the store itself: start-up
reconciliation runs in a child, and each worker has the composition root (vault.app) build its
own services.
"""

from __future__ import annotations

import logging
import multiprocessing
import multiprocessing.connection
import os
import signal
import sys
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from multiprocessing.context import ForkContext, ForkProcess
from types import FrameType
from typing import Final

from vault import metrics
from vault.config import Settings
from vault.coordination.disk import DiskReserve, free_bytes
from vault.coordination.limits import LimitsFileSpaceError, SharedLimits
from vault.data_lock import DataDirectoryLock
from vault.domain.errors import DiskFull, PinIncorrect, VaultError
from vault.metrics_exporter import (
    MetricsExporter,
    MetricsListenError,
    SupervisorView,
    mark_worker_dead,
    prepare_directory,
)
from vault.service.imports import KeyImports
from vault.service.keys import KeyManagement
from vault.service.reconcile import StartupReport
from vault.so_pin import refuse_to_serve_beside
from vault.transport.errors import log_unexpected
from vault.transport.served import BuildServices, PrepareStartup
from vault.transport.server import (
    TLS_HINT,
    BuiltServer,
    ListenAddress,
    ListenAddressError,
    build,
    ensure_port_free,
)
from vault.transport.status_servicer import ServerFacts
from vault.transport.tls import ServerTls, TlsConfigError, load_server_tls

log = logging.getLogger(__name__)

# On SIGTERM, in-flight calls get server.drain_seconds to finish; the parent waits this much
# longer for the workers to flush and exit before it kills them.
_STOP_MARGIN_SECONDS: Final = 5.0
_START_TIMEOUT_SECONDS: Final = 120.0
# A worker that dies sooner than this after starting counts as crash-looping: back off.
_HEALTHY_UPTIME_SECONDS: Final = 10.0
_MAX_RESTART_DELAY_SECONDS: Final = 30.0
# How often the supervisor looks whether a spent disk reserve can be set aside again.
DISK_CHECK_SECONDS: Final = 2.0
# Exit codes of the reconciliation child.
_RECONCILE_CLEAN: Final = 0
_RECONCILE_DIFFERENCES: Final = 3
_RECONCILE_REFUSED: Final = 4  # an expected failure; its message follows on the pipe
SHARED_NONCE_SLOTS: Final = 1 << 21


# -- multi-process serving ------------------------------------------------------------------


def serve(
    settings: Settings,
    data_lock: DataDirectoryLock | None = None,
    *,
    prepare: PrepareStartup,
    build_services: BuildServices,
) -> None:
    """Reconcile, then serve with settings.server.workers processes until SIGTERM or SIGINT.

    prepare runs once, in a child, before the workers start; build_services runs in each
    worker after fork (vault.app provides both).

    Prints "vault serving on ADDRESS (N workers, TLS)" once every worker serves, and returns
    after a signal once they have stopped. Raises TlsConfigError for TLS settings or files
    that cannot be used, ListenAddressError for an address that cannot be served (PortInUse
    when another process listens there) and RuntimeError when start-up fails (details are
    logged), an SO PIN file sits in the data directory (SoPinCustodyError) or another vault
    runs on settings.data_dir (DataDirectoryInUse).

    data_lock is the data directory's lock if the caller took it already (see lock_for);
    it is released when serving ends either way.
    """
    try:
        _check_and_serve(settings, data_lock, prepare, build_services)
    finally:
        if data_lock is not None:
            data_lock.release()


def _check_and_serve(
    settings: Settings,
    data_lock: DataDirectoryLock | None,
    prepare: PrepareStartup,
    build_services: BuildServices,
) -> None:
    refuse_to_serve_beside(settings)  # the SO PIN: never beside a serving token
    tls = load_tls(settings)
    address = ListenAddress.parse(settings.server.listen, tls=tls is not None)
    if tls is not None:
        log.info(
            "%s with certificate %s%s",
            tls.describe(),
            tls.files.cert_file,
            f"; client certificates verified against {tls.files.client_ca_file}"
            if tls.mutual
            else "",
        )
    workers = settings.server.workers
    if address.unix and workers > 1:
        # gRPC unlinks an existing socket file before binding, so each worker would take
        # the path from the one before it.
        raise ListenAddressError(
            f"server.listen={address}: a unix: socket is served by one process; "
            "set server.workers = 1"
        )
    if not address.unix and address.port == 0:
        raise ListenAddressError(
            "server.listen needs an explicit port: with several processes sharing it, port 0 "
            "would give each its own"
        )
    lock = data_lock or lock_for(settings)
    try:
        ensure_port_free(address)
        _serve_locked(settings, address, tls, prepare, build_services)
    finally:
        lock.release()  # releasing twice is harmless


def lock_for(settings: Settings) -> DataDirectoryLock:
    """The data directory's lock, held for a server on settings.server.listen."""
    return DataDirectoryLock.acquire(
        settings.data_dir, holder="vaultctl serve", listen=settings.server.listen
    )


def _serve_locked(
    settings: Settings,
    address: ListenAddress,
    tls: ServerTls | None,
    prepare: PrepareStartup,
    build_services: BuildServices,
) -> None:
    context = multiprocessing.get_context("fork")
    _reconcile_in_child(context, settings, prepare)
    if settings.auth.enabled:
        _prepare_shared_limits(settings)
    else:
        log.warning(
            "auth.enabled = false: calls are neither authenticated nor audited (loopback only)"
        )
    reserve = DiskReserve(settings.disk_reserve_file, settings.store.disk_reserve_bytes)
    _reserve_disk_space(reserve)
    _Supervisor(context, settings, address, tls, reserve, build_services).run()


def _start_exporter(settings: Settings, supervisor: _Supervisor) -> MetricsExporter | None:
    """The /metrics endpoint on server.metrics_listen, before any worker starts counting."""
    if not settings.server.metrics_listen:
        return None
    directory = settings.metrics_directory
    prepare_directory(directory)
    exporter = MetricsExporter(settings.server.metrics_listen, directory, supervisor.view())
    log.info("metrics on http://%s/metrics", settings.server.metrics_listen)
    return exporter


def _reserve_disk_space(reserve: DiskReserve) -> None:
    """Set the disk reserve aside at start, or start refusing changes if the disk is too full
    for it (reads are served; the supervisor makes the reserve once space is freed)."""
    try:
        if reserve.size <= 0 or reserve.restore(needed_free=reserve.size):
            return
    except OSError as error:
        # Reads are served without it; changes wait until the supervisor manages to make it.
        log.error("cannot set aside the disk reserve %s: %s", reserve.path, error)
        return
    if reserve.refusing_changes():
        log.warning(
            "the data directory's disk has %d bytes free, less than the %d-byte reserve "
            "(store.disk_reserve_bytes): refusing changes until space is freed",
            free_bytes(reserve.path.parent),
            reserve.size,
        )


def _prepare_shared_limits(settings: Settings) -> None:
    """Keep or make the workers' shared table before they start, so they all attach to one.

    A signed request's nonce is kept for the timestamp window (300 s by default): 2^21 slots
    hold over 4,000 signed requests/s, beyond what one host serves.
    """
    started = time.time()
    try:
        limits = SharedLimits.prepare(settings.shared_state_file, nonce_slots=SHARED_NONCE_SLOTS)
    except LimitsFileSpaceError as error:
        raise RuntimeError(error.strerror) from None
    try:
        horizon = limits.replay_horizon()
        if horizon < started:
            log.info("kept the replay table of the previous start: %s", limits.path)
        else:
            log.info(
                "new replay table %s: signed requests stamped before %s are refused",
                limits.path,
                datetime.fromtimestamp(horizon, UTC).isoformat(timespec="seconds"),
            )
            # Serve from the horizon on, so that no request signed after the start is refused.
            time.sleep(max(0.0, horizon - time.time()))
    finally:
        limits.close()


def load_tls(settings: Settings) -> ServerTls | None:
    """The server's TLS material (settings.server_tls()), checked; None for plaintext."""
    files = settings.server_tls()
    if files is None:
        if settings.server.client_ca_file is not None:
            raise TlsConfigError(f"server.client_ca_file needs TLS: {TLS_HINT}")
        return None
    return load_server_tls(files)


def _reconcile_in_child(context: ForkContext, settings: Settings, prepare: PrepareStartup) -> None:
    receive, send = context.Pipe(duplex=False)
    child = context.Process(
        target=_reconcile_main,
        args=(settings, prepare, send),
        name="vault-reconcile",
        daemon=True,
    )
    child.start()
    send.close()
    child.join()
    if child.exitcode == _RECONCILE_DIFFERENCES:
        log.warning(
            "store and token differ (see above); serving anyway: only the keys concerned fail"
        )
    elif child.exitcode == _RECONCILE_REFUSED:
        raise RuntimeError(
            f"{receive.recv() if receive.poll() else 'start-up failed'}; not serving"
        )
    elif child.exitcode != _RECONCILE_CLEAN:
        raise RuntimeError(
            f"start-up reconciliation failed (exit code {child.exitcode}); not serving"
        )


def _reconcile_main(
    settings: Settings,
    prepare: PrepareStartup,
    report_to: multiprocessing.connection.Connection,
) -> None:
    _reset_signals()
    try:
        startup = prepare(settings)
    except VaultError as error:
        # Expected (a wrong PIN, no token, the store unreachable): the message says what to
        # fix, and a traceback would only bury it.
        message = error.message
        if isinstance(error, PinIncorrect):
            message = f"{message} from {settings.user_pin_origin()}"
        log.error("start-up failed: %s", message)
        report_to.send(message)
        sys.exit(_RECONCILE_REFUSED)
    except Exception:
        log.exception("start-up reconciliation of store and token failed")
        sys.exit(1)
    _announce_bootstrap(startup)
    report = startup.reconcile
    if report.discarded_pending:
        log.warning("discarded %d half-created key versions", len(report.discarded_pending))
    if report.orphaned_in_token:
        log.warning("removed %d orphaned token objects", len(report.orphaned_in_token))
    if report.missing_in_token or report.missing_roots:
        log.error(
            "store and token differ: %d key versions and %d root generations are missing "
            "from the token",
            len(report.missing_in_token),
            len(report.missing_roots),
        )
    sys.exit(_RECONCILE_CLEAN if report.clean else _RECONCILE_DIFFERENCES)


def _announce_bootstrap(startup: StartupReport) -> None:
    if startup.admin_access_key_id is None:
        return
    # The secret goes to a terminal only: a redirected stdout is usually a log file.
    lines = [
        f"bootstrapped admin access key {startup.admin_access_key_id}",
        f"  stored for vaultctl in {startup.admin_credentials_file} (mode 0600)",
    ]
    if sys.stdout.isatty() and startup.admin_secret_key is not None:
        lines.append(f"  secret key (shown once): {startup.admin_secret_key}")
    print("\n".join(lines), flush=True)


@dataclass(slots=True)
class _Slot:
    index: int
    process: ForkProcess | None = None
    ready: multiprocessing.connection.Connection | None = None
    started_at: float = 0.0
    failures: int = 0
    restart_at: float | None = None


class _Supervisor:
    """The parent process: starts the workers, restarts any that die, stops them on a signal."""

    def __init__(
        self,
        context: ForkContext,
        settings: Settings,
        address: ListenAddress,
        tls: ServerTls | None,
        reserve: DiskReserve,
        build_services: BuildServices,
    ) -> None:
        self._context = context
        self._build_services = build_services
        self._settings = settings
        self._address = address
        self._tls = tls
        self._reserve = reserve
        self._next_disk_check = 0.0
        self._reserve_error = ""
        self._slots = [_Slot(index) for index in range(settings.server.workers)]
        self._stop_signal: int | None = None
        self._started_at = time.time()
        self._restarts = 0
        self._exporter: MetricsExporter | None = None

    def view(self) -> SupervisorView:
        """What /metrics reports of the workers (read from the exporter's thread)."""
        return SupervisorView(
            workers_alive=self._workers_alive,
            worker_restarts=lambda: self._restarts,
            started_at=self._started_at,
        )

    def _workers_alive(self) -> int:
        alive = 0
        for slot in self._slots:
            process = slot.process
            try:
                alive += process is not None and process.is_alive()
            except ValueError:
                continue  # closed by the main thread just now: it died
        return alive

    def run(self) -> None:
        previous = {
            signum: signal.signal(signum, self._on_signal)
            for signum in (signal.SIGTERM, signal.SIGINT)
        }
        try:
            self._exporter = _start_exporter(self._settings, self)
        except MetricsListenError as error:
            for signum, handler in previous.items():
                signal.signal(signum, handler)
            raise ListenAddressError(str(error)) from None
        try:
            # One at a time: processes opening the token at the same moment can miss it
            # (SoftHSM reads its token directory while another process writes it).
            for slot in self._slots:
                self._start(slot)
                if not self._await_ready(slot):
                    if self._stop_signal is not None:
                        return
                    raise RuntimeError(f"worker {slot.index} failed to start; not serving")
            count = len(self._slots)
            mode = "plaintext" if self._tls is None else self._tls.describe()
            print(
                f"vault serving on {self._address} "
                f"({count} worker{'s' if count > 1 else ''}, {mode})",
                flush=True,
            )
            while self._stop_signal is None:
                self._supervise()
            log.info("received signal %d, stopping workers", self._stop_signal)
        finally:
            self._stop_all()
            if self._exporter is not None:
                self._exporter.close()
            for signum, handler in previous.items():
                signal.signal(signum, handler)

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        self._stop_signal = signum

    def _start(self, slot: _Slot) -> None:
        receiver, sender = self._context.Pipe(duplex=False)
        process = self._context.Process(
            target=_worker_main,
            args=(
                self._settings,
                slot.index,
                self._address,
                self._tls,
                sender,
                os.getpid(),
                self._started_at,
                self._build_services,
            ),
            name=f"vault-worker-{slot.index}",
        )
        process.start()
        sender.close()  # the child holds its own copy; ours would keep the pipe open
        slot.process, slot.ready, slot.started_at = process, receiver, time.monotonic()
        slot.restart_at = None

    def _await_ready(self, slot: _Slot) -> bool:
        """Wait until slot's worker serves; False if it failed or a signal came first."""
        deadline = time.monotonic() + _START_TIMEOUT_SECONDS
        while not self._check_ready(slot):
            assert slot.process is not None
            if self._stop_signal is not None:
                return False
            if not slot.process.is_alive():
                log.error(
                    "worker %d exited with code %s during start-up",
                    slot.index,
                    slot.process.exitcode,
                )
                return False
            if time.monotonic() > deadline:
                log.error(
                    "worker %d did not start within %.0f s", slot.index, _START_TIMEOUT_SECONDS
                )
                return False
            self._wait(0.2)
        return True

    def _check_ready(self, slot: _Slot) -> bool:
        if slot.ready is None:
            return True
        try:
            if not slot.ready.poll():
                return False
            slot.ready.recv()
        except (EOFError, OSError):
            return False  # the worker died before saying so; its exit code tells why
        slot.ready.close()
        slot.ready = None
        return True

    def _supervise(self) -> None:
        now = time.monotonic()
        if now >= self._next_disk_check:
            self._next_disk_check = now + DISK_CHECK_SECONDS
            self._restore_reserve()
        for slot in self._slots:
            if self._stop_signal is not None:
                return  # a group-wide signal stops workers too: their exits are expected
            if slot.restart_at is not None:
                if now >= slot.restart_at:
                    log.info("restarting worker %d", slot.index)
                    self._start(slot)
                continue
            assert slot.process is not None
            if slot.ready is not None and self._check_ready(slot):
                log.info("worker %d (pid %s) is serving again", slot.index, slot.process.pid)
            if slot.process.is_alive():
                continue
            uptime = now - slot.started_at
            slot.failures = slot.failures + 1 if uptime < _HEALTHY_UPTIME_SECONDS else 0
            delay = min(_MAX_RESTART_DELAY_SECONDS, 0.5 * 2**slot.failures)
            log.error(
                "worker %d (pid %s) died unexpectedly with exit code %s; restarting in %.1f s",
                slot.index,
                slot.process.pid,
                slot.process.exitcode,
                delay,
            )
            self._forget(slot.process)
            slot.process.close()
            slot.process = None
            self._restarts += 1
            if slot.ready is not None:
                slot.ready.close()
                slot.ready = None
            slot.restart_at = now + delay
        self._wait(0.5)

    def _restore_reserve(self) -> None:
        """Once the disk has twice the reserve free, set it aside again and accept changes:
        the reserve, and as much again for the writes to come."""
        try:
            if self._reserve.restore(needed_free=2 * self._reserve.size):
                log.warning(
                    "the data directory's disk has space again: %d-byte reserve restored, "
                    "accepting changes",
                    self._reserve.size,
                )
            self._reserve_error = ""
        except OSError as error:
            if str(error) != self._reserve_error:  # once, not every few seconds
                log.error("cannot restore the disk reserve %s: %s", self._reserve.path, error)
            self._reserve_error = str(error)

    def _wait(self, timeout: float) -> None:
        """Sleep until a worker exits or reports ready, or timeout; signals only set a flag."""
        waitables: list[int | multiprocessing.connection.Connection] = []
        for slot in self._slots:
            if slot.process is not None:
                waitables.append(slot.process.sentinel)
            if slot.ready is not None:
                waitables.append(slot.ready)
        if waitables:
            multiprocessing.connection.wait(waitables, timeout)
        else:
            time.sleep(timeout)

    def _forget(self, process: ForkProcess) -> None:
        if self._exporter is not None and process.pid is not None:
            mark_worker_dead(process.pid)

    def _stop_all(self) -> None:
        running = [slot.process for slot in self._slots if slot.process is not None]
        for process in running:
            if process.is_alive():
                process.terminate()
        deadline = time.monotonic() + self._settings.server.drain_seconds + _STOP_MARGIN_SECONDS
        for process in running:
            process.join(max(0.0, deadline - time.monotonic()))
            if process.is_alive():
                log.warning("worker pid %s did not stop in time; killing it", process.pid)
                process.kill()
                process.join()
            elif process.exitcode != 0:
                log.error("worker pid %s exited with code %s", process.pid, process.exitcode)
            self._forget(process)
        for slot in self._slots:
            if slot.ready is not None:
                slot.ready.close()
                slot.ready = None


def _reset_signals() -> None:
    # A forked child inherits the supervisor's handlers; SIGINT from a terminal reaches the
    # whole process group, and the supervisor alone decides how to stop.
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _die_with_parent(parent_pid: int) -> None:
    """Have the kernel send SIGTERM to this worker if the supervisor dies (even by SIGKILL),
    so no orphan keeps serving on the port."""
    if sys.platform != "linux":
        return
    import ctypes

    pr_set_pdeathsig = 1
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(pr_set_pdeathsig, signal.SIGTERM, 0, 0, 0)
    if os.getppid() != parent_pid:  # the parent died before prctl took effect
        os.kill(os.getpid(), signal.SIGTERM)


def _worker_main(
    settings: Settings,
    index: int,
    address: ListenAddress,
    tls: ServerTls | None,
    ready: multiprocessing.connection.Connection,
    parent_pid: int,
    started_at: float,
    build_services: BuildServices,
) -> None:
    _reset_signals()
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda signum, frame: stop.set())
    _die_with_parent(parent_pid)
    if settings.server.metrics_listen:
        metrics.enable()
    try:
        counters = (
            SharedLimits.attach(settings.shared_state_file) if settings.auth.enabled else None
        )
        services = build_services(settings, counters)
    except Exception:
        log.exception("worker %d could not open the store and token", index)
        sys.exit(1)
    try:
        built = build(
            services,
            settings,
            address.port or None,
            reuse_port=True,
            tls=tls,
            status=ServerFacts(started_at=started_at, worker_index=index),
        )
    except Exception:
        log.exception("worker %d could not start its server", index)
        services.close()
        sys.exit(1)
    try:
        built.server.start()
        built.probe.start()
        if index == 0:
            reserve = DiskReserve(settings.disk_reserve_file, settings.store.disk_reserve_bytes)
            threading.Thread(
                target=_destroy_due_keys_forever,
                args=(
                    services.keys,
                    settings.keys.destroy_check_seconds,
                    stop,
                    reserve,
                    services.imports,
                ),
                name="vault-destroy-due-keys",
                daemon=True,
            ).start()
        ready.send(os.getpid())
        ready.close()
        log.info("worker %d (pid %d) serving on %s", index, os.getpid(), address)
        while not stop.wait(1.0):
            pass
        drain(built, settings.server.drain_seconds)
        log.info("worker %d (pid %d) stopped", index, os.getpid())
    finally:
        services.close()


def drain(built: BuiltServer, grace: float) -> None:
    """Stop serving: health says NOT_SERVING at once (load balancers stop sending), the
    listening socket closes and new calls are refused, calls in flight get grace seconds to
    finish (then they are cancelled). Their audit records are committed before their answers
    leave (vault.transport.security), so once they are done the audit log holds them all."""
    built.probe.stop()
    built.health.enter_graceful_shutdown()
    built.server.stop(grace).wait()


def _destroy_due_keys_forever(
    keys: KeyManagement,
    interval: float,
    stop: threading.Event,
    reserve: DiskReserve,
    imports: KeyImports | None = None,
) -> None:
    """Destroy keys whose waiting period ended, and the private keys of expired import jobs,
    until stop; one worker does this. Not while the disk is full: destroying is a change
    like any other."""
    while True:
        # The next round retries; a failing store or token must not end the loop.
        try:
            if not reserve.refusing_changes():
                destroyed = keys.destroy_due_keys()
                if destroyed:
                    log.info("destroyed %d keys whose waiting period ended", len(destroyed))
                if imports is not None:
                    imports.destroy_expired_jobs()
        except DiskFull:
            reserve.release()
        except VaultError as error:
            log.error("destroying due keys failed: %s: %s", error.reason, error.message)
        except Exception as error:
            log_unexpected(error, "destroy_due_keys")
        if stop.wait(interval):
            return
