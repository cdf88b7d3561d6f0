"""HealthProbe on its own: what it publishes for passing, failing, raising and hanging checks,
and that nothing it does after stop() overrides shutdown's status."""

from __future__ import annotations

import threading

from grpc_health.v1 import health, health_pb2

from vault.transport.health import HealthProbe

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
SERVICES = ("vault.v1.KeyService", "vault.v1.CryptoService")


def statuses(servicer: health.HealthServicer) -> set[int]:
    return {
        servicer.Check(health_pb2.HealthCheckRequest(service=service), None).status
        for service in ("", *SERVICES)
    }


def test_every_service_follows_the_checks() -> None:
    servicer = health.HealthServicer()
    token_ok = [True]

    def store() -> bool:
        raise RuntimeError("store down")

    probe = HealthProbe(servicer, SERVICES, {"token": lambda: token_ok[0]}, timeout=0.2)
    assert probe.probe_once()
    assert statuses(servicer) == {SERVING}
    token_ok[0] = False
    assert not probe.probe_once()
    assert statuses(servicer) == {NOT_SERVING}
    token_ok[0] = True
    assert probe.probe_once()
    assert statuses(servicer) == {SERVING}
    raising = HealthProbe(servicer, SERVICES, {"store": store}, timeout=0.2)
    assert not raising.probe_once()
    assert statuses(servicer) == {NOT_SERVING}


def test_a_hanging_check_counts_as_failed_until_it_answers() -> None:
    servicer = health.HealthServicer()
    release = threading.Event()
    calls = []

    def store() -> bool:
        calls.append(1)
        release.wait(10)
        return True

    probe = HealthProbe(servicer, SERVICES, {"store": store, "token": lambda: True}, timeout=0.1)
    try:
        assert not probe.probe_once()
        assert not probe.probe_once()
        assert statuses(servicer) == {NOT_SERVING}
        assert len(calls) == 1, "a hanging check was asked again before it answered"
        release.set()
        assert probe.probe_once()  # the answer it finally gave
        assert statuses(servicer) == {SERVING}
    finally:
        release.set()
        probe.stop()


def test_nothing_is_published_after_stop() -> None:
    servicer = health.HealthServicer()
    probe = HealthProbe(servicer, SERVICES, {"token": lambda: True}, timeout=0.1)
    assert probe.probe_once()
    probe.stop()
    for service in ("", *SERVICES):
        servicer.set(service, NOT_SERVING)  # as shutdown does
    assert not probe.probe_once()
    assert statuses(servicer) == {NOT_SERVING}


def test_a_round_cut_short_by_stop_ends_quietly() -> None:
    """stop() cancels checks still queued; the round in progress must not raise on them (it
    did, as 'Exception in thread vault-health-probe' in the log of a draining server). The
    check's worker is kept busy so that the check is still queued when stop() comes."""
    probe = HealthProbe(health.HealthServicer(), SERVICES, {"token": lambda: True}, timeout=1)
    busy, release = threading.Event(), threading.Event()

    def occupy() -> None:
        busy.set()
        release.wait(10)

    probe._pools["token"].submit(occupy)
    busy.wait(10)
    outcome: list[object] = []

    def round_in_progress() -> None:
        try:
            outcome.append(probe.probe_once())
        except BaseException as error:  # any escape is the failure
            outcome.append(error)

    thread = threading.Thread(target=round_in_progress)
    thread.start()
    while not probe._pending:  # the round has queued its check
        threading.Event().wait(0.01)
    probe.stop()
    release.set()
    thread.join(10)
    assert outcome == [False]
