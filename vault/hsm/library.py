"""The PKCS#11 module in this process: loading, locking, login, per-thread sessions, recovery.

Rules from DESIGN.md section 4 that shape this file:
- python-pkcs11 initialises without locking; reinitialize_with_os_locking fixes that before
  any session exists.
- Login belongs to the process: one login session, opened once and never closed (closing it
  logs every session out).
- Each thread gets its own session: python-pkcs11 serialises operations per session, and
  PKCS#11 allows one active operation per session.
- Initialise after fork, never before: a forked copy of an initialised module is unusable.

When the token goes away (SoftHSM: its token directory disappears; a real HSM: a reset or a
lost link), every session and handle of this process is void, and SoftHSM keeps answering
ObjectHandleInvalid and GeneralError even once the directory is back, until the module is
started again. So a failure that the token itself confirms (C_GetTokenInfo fails too) restarts
the module: every thread's session and every handle cached on it are dropped, and the vault
logs in again. If the token is still away, requests fail at once with TokenUnavailable while
one background thread per process retries with jittered exponential backoff; workers therefore
neither spin on a dead token nor come back in step.
"""

from __future__ import annotations

import contextlib
import logging
import os
import random
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, TypeVar

import pkcs11
from pkcs11 import Attribute, exceptions
from pkcs11.attributes import AttributeMapper
from tenacity import (
    Retrying,
    retry,
    retry_if_exception_type,
    retry_if_result,
    stop_after_attempt,
    wait_exponential,
    wait_random,
)

from vault.domain.errors import PinIncorrect, TokenOperationFailed, TokenUnavailable
from vault.hsm import native
from vault.throttled_log import ThrottledLog

log = logging.getLogger(__name__)
throttled = ThrottledLog(log)
T = TypeVar("T")

# Waits between attempts to start the module again while the token is away: 0.25 s doubling
# to at most 4 s, each plus up to 0.5 s of jitter, so a returning token is used again within
# about 5 s and the workers of a host do not all log in at the same instant.
RECOVERY_FIRST_WAIT_SECONDS: Final = 0.25
RECOVERY_MAX_WAIT_SECONDS: Final = 4.0
RECOVERY_JITTER_SECONDS: Final = 0.5

# The token or our login is gone: start the module again, log in, retry once.
TOKEN_FAILURES: tuple[type[Exception], ...] = (
    exceptions.DeviceError,
    exceptions.DeviceRemoved,
    exceptions.DeviceMemory,
    exceptions.TokenNotPresent,
    exceptions.TokenNotRecognised,
    exceptions.UserNotLoggedIn,
    exceptions.SessionCount,
)
# Tries of one operation while the token stays present but its handles keep going stale.
# SoftHSM re-reads the token directory whenever another process writes it, and while another
# process writes object after object, two tries in a row sometimes both met a stale handle;
# each try after the first waits a moment for the write to end.
STALE_HANDLE_TRIES: Final = 4
STALE_HANDLE_PAUSE_SECONDS: Final = (0.001, 0.01)
_jitter = random.SystemRandom()

# This thread's session or a handle cached on it is no longer valid (another process
# destroyed an object, a session closed), or SoftHSM reported CKR_GENERAL_ERROR, which it
# does when two processes write the token at once: open a fresh session and try again.
STALE_HANDLES: tuple[type[Exception], ...] = (
    exceptions.ObjectHandleInvalid,
    exceptions.KeyHandleInvalid,
    exceptions.WrappingKeyHandleInvalid,
    exceptions.UnwrappingKeyHandleInvalid,
    exceptions.SessionClosed,
    exceptions.SessionHandleInvalid,
    exceptions.GeneralError,
)


def _module_not_initialised(error: Exception) -> bool:
    """CKR_CRYPTOKI_NOT_INITIALIZED: python-pkcs11 0.10.1 has no class for it, only this
    plain PKCS11Error message."""
    return type(error) is exceptions.PKCS11Error and "not initialized" in str(error)


class _Gate:
    """Request threads pass shared; a restart of the module waits until none is inside it.
    C_Finalize under a thread that is still in C_Sign crashes SoftHSM (seen: SIGSEGV)."""

    def __init__(self) -> None:
        self._condition = threading.Condition()
        self._inside = 0
        self._closed = False

    @contextlib.contextmanager
    def shared(self) -> Iterator[None]:
        with self._condition:
            while self._closed:
                self._condition.wait()
            self._inside += 1
        try:
            yield
        finally:
            with self._condition:
                self._inside -= 1
                if not self._inside:
                    self._condition.notify_all()

    @contextlib.contextmanager
    def exclusive(self) -> Iterator[None]:
        with self._condition:
            while self._closed:
                self._condition.wait()
            self._closed = True
            while self._inside:
                self._condition.wait()
        try:
            yield
        finally:
            with self._condition:
                self._closed = False
                self._condition.notify_all()


def attribute_mapper() -> AttributeMapper:
    """python-pkcs11's mapper plus the array attributes it has no handler for."""
    mapper = AttributeMapper()
    mapper.register_handler(
        Attribute.UNWRAP_TEMPLATE, native.pack_nested_template, native.unpack_opaque
    )
    mapper.register_handler(
        Attribute.WRAP_TEMPLATE, native.pack_nested_template, native.unpack_opaque
    )
    mapper.register_handler(
        Attribute.ALLOWED_MECHANISMS, native.pack_mechanism_list, native.unpack_mechanism_list
    )
    return mapper


@dataclass
class ThreadContext:
    """One thread's session and what it has cached on it (root keys, token-resident keys,
    unwrapped keys, system keys). Handles die with the session, and every context dies with
    its epoch: a restart of the module starts a new one. Contexts of an old epoch are dropped
    unused, never closed or destroyed: after C_Initialize the same handle numbers may name
    other sessions and objects."""

    epoch: int
    session: Any
    objects: dict[str, Any] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)


class TokenLibrary:
    def __init__(self, module: Path, token_label: str, pin_source: Callable[[], str]) -> None:
        self._module = str(module)
        self._token_label = token_label
        self._pin_source = pin_source
        self._gate = _Gate()
        self._local = threading.local()
        self._epoch = 0
        self._pid = os.getpid()
        self._lib: Any = None
        self._token: Any = None
        self._login_session: Any = None
        # Set while the token is away (monotonic time it went); requests then fail at once.
        self._down_since: float | None = None
        self._recoverer: threading.Thread | None = None
        self._start()

    def _start(self) -> None:
        try:
            self._lib = pkcs11.lib(self._module)
            native.reinitialize_with_os_locking(self._module)
            self._token = self._find_token()
            self._login_session = self._open_login_session()
        except exceptions.NoSuchToken:
            raise TokenUnavailable(
                f"no token labelled {self._token_label!r}: run `vaultctl token init`"
            ) from None
        except exceptions.PinIncorrect:
            raise PinIncorrect("PIN incorrect: the token refused the user PIN") from None
        except (exceptions.PKCS11Error, native.NativeError) as error:
            raise TokenUnavailable(
                f"cannot start the PKCS#11 module: {type(error).__name__}"
            ) from None

    # SoftHSM re-reads the token directory when slots are listed; while another process
    # is writing an object file it can briefly miss the token (seen at 1 start in 12 with
    # four processes starting together). A short, jittered retry rides that out.
    @retry(
        retry=retry_if_exception_type(exceptions.NoSuchToken),
        stop=stop_after_attempt(5),
        wait=wait_random(0.05, 0.3),
        reraise=True,
    )
    def _find_token(self) -> Any:
        return self._lib.get_token(token_label=self._token_label)

    def _open_login_session(self) -> Any:
        pin = self._pin_source()
        try:
            return self._token.open(rw=True, user_pin=pin, attribute_mapper=attribute_mapper())
        except exceptions.UserAlreadyLoggedIn:
            return self._token.open(rw=True, attribute_mapper=attribute_mapper())
        finally:
            del pin

    @property
    def token(self) -> Any:
        return self._token

    @property
    def login_session(self) -> Any:
        return self._login_session

    def mechanisms(self) -> set[Any]:
        return set(self._token.slot.get_mechanisms())

    def context(self) -> ThreadContext:
        """This thread's session, opened on first use and again after a recovery."""
        if os.getpid() != self._pid:
            raise TokenUnavailable("PKCS#11 was initialised before fork; start it per process")
        context: ThreadContext | None = getattr(self._local, "context", None)
        if context is None or context.epoch != self._epoch:
            session = self._token.open(rw=True, attribute_mapper=attribute_mapper())
            context = ThreadContext(self._epoch, session)
            self._local.context = context
        return context

    def drop_context(self) -> None:
        context: ThreadContext | None = getattr(self._local, "context", None)
        self._local.context = None
        # A session of an earlier epoch died with the module; its handle number may by now
        # name another thread's session, which closing it would take away.
        if context is not None and context.epoch == self._epoch:
            # Closing a non-login session is safe: python-pkcs11 logs out only when the
            # session itself logged in. Its session objects go with it.
            with contextlib.suppress(exceptions.PKCS11Error):
                context.session.close()

    def check(self) -> bool:
        """Whether the token answers (C_GetTokenInfo, which SoftHSM fails as soon as its
        token directory is gone). A failure starts recovery; the health probe calls this."""
        if self._down_since is not None:
            return False
        with self._gate.shared():
            epoch = self._epoch
            present = self._token_present()
        return present or self.recover(epoch)

    def _token_present(self) -> bool:
        try:
            self._token.slot.get_token()
        except exceptions.PKCS11Error:
            return False
        return True

    def recover(self, failed_epoch: int) -> bool:
        """Start the module again and log in, unless another thread already did; True when
        the token is usable afterwards. If it is not, a background thread keeps trying with
        backoff and this returns False at once. Waits until no request thread is inside the
        module; never call it from inside run()."""
        with self._gate.exclusive():
            if failed_epoch != self._epoch or self._down_since is not None:
                return self._down_since is None
            if self._restart():
                return True
            self._down_since = time.monotonic()
            log.error("the token is unavailable; trying to reach it again in the background")
            self._recoverer = threading.Thread(
                target=self._recover_in_background, name="vault-token-recovery", daemon=True
            )
            self._recoverer.start()
            return False

    def _restart(self) -> bool:
        """C_Finalize, C_Initialize and a new login; call with the gate held exclusively."""
        throttled.warning("reinit", "token failure: re-initialising the PKCS#11 module")
        # Every session and handle of the old epoch is void from here, whatever happens.
        self._epoch += 1
        try:
            native.reinitialize_with_os_locking(self._module)
            self._token = self._lib.get_token(token_label=self._token_label)
            self._login_session = self._open_login_session()
        except (exceptions.PKCS11Error, native.NativeError) as error:
            throttled.warning("restart", "the token did not come back: %s", type(error).__name__)
            return False
        return True

    def _recover_in_background(self) -> None:
        def attempt() -> bool:
            with self._gate.exclusive():
                if not self._restart():
                    return False
                assert self._down_since is not None
                log.warning(
                    "the token is back after %.1f s; serving again",
                    time.monotonic() - self._down_since,
                )
                self._down_since = None
                return True

        Retrying(
            retry=retry_if_result(lambda recovered: not recovered),
            # The jitter is added after the cap, so workers that lost the token together
            # keep drifting apart instead of retrying in step every 4 s.
            wait=wait_exponential(
                multiplier=RECOVERY_FIRST_WAIT_SECONDS, max=RECOVERY_MAX_WAIT_SECONDS
            )
            + wait_random(0, RECOVERY_JITTER_SECONDS),
        )(attempt)

    def _unavailable(self) -> TokenUnavailable:
        return TokenUnavailable("the token is unavailable; the vault is reconnecting to it")

    def run(self, operation: Callable[[ThreadContext], T]) -> T:
        """Run operation on this thread's session. After a stale handle, a fresh session and
        another try, up to STALE_HANDLE_TRIES in all; after a token failure (or a stale
        handle the token confirms by failing C_GetTokenInfo), a restart of the module and
        one more try. While the token is away, fail at once."""
        failure: Exception | None = None
        restarted = False
        for tried in range(1, STALE_HANDLE_TRIES + 1):
            if self._down_since is not None:
                raise self._unavailable()
            restart_epoch: int | None = None
            with self._gate.shared():
                if self._down_since is not None:
                    raise self._unavailable()
                epoch = self._epoch
                try:
                    # Opening the session is inside: it fails too when the token is gone.
                    return self._mapped(lambda: operation(self.context()))
                except STALE_HANDLES as error:
                    failure = error
                    self.drop_context()
                    if not self._token_present():
                        restart_epoch = epoch
                except TOKEN_FAILURES as error:
                    failure = error
                    restart_epoch = epoch
                    self._local.context = None
            if restart_epoch is None:
                if tried == STALE_HANDLE_TRIES:
                    break
                throttled.warning(
                    f"retry:{type(failure).__name__}",
                    "token operation failed (%s); retrying on a fresh session",
                    type(failure).__name__,
                )
                time.sleep(_jitter.uniform(*STALE_HANDLE_PAUSE_SECONDS))
                continue
            if restarted:
                break
            restarted = True
            throttled.warning(
                f"retry:{type(failure).__name__}",
                "token operation failed (%s); restarting the module and retrying once",
                type(failure).__name__,
            )
            if not self.recover(restart_epoch):
                raise self._unavailable()
        raise TokenUnavailable(f"the token failed {tried} times in a row: {type(failure).__name__}")

    @staticmethod
    def _mapped(operation: Callable[[], T]) -> T:
        """No python-pkcs11 exception leaves this layer: what run() does not retry becomes
        a domain error naming only the PKCS#11 error class."""
        try:
            return operation()
        except (*STALE_HANDLES, *TOKEN_FAILURES):
            raise
        except exceptions.PKCS11Error as error:
            if _module_not_initialised(error):
                raise exceptions.DeviceRemoved() from None  # a token failure: restart
            throttled.error(
                f"refused:{type(error).__name__}",
                "token refused an operation: %s",
                type(error).__name__,
            )
            raise TokenOperationFailed(
                f"the token refused the operation ({type(error).__name__})"
            ) from None
