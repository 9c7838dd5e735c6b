"""The simulator validates like APNs: bare aioapns requests with one thing wrong each."""

from __future__ import annotations

import ssl
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aioapns import APNs, NotificationRequest, PushType
from aioapns.connection import APNsProductionClientProtocol

from voicemesh.apnssim.behaviours import Behaviour, token_for
from voicemesh.apnssim.certs import make_provider_key, make_tls_material
from voicemesh.apnssim.server import ApnsSimulator, ProviderKey

BUNDLE = "com.example.app"


@pytest.fixture
async def sim(tmp_path: Path) -> AsyncIterator[tuple[ApnsSimulator, Path]]:
    tls = make_tls_material(tmp_path)
    async with ApnsSimulator(tls.cert_path, tls.key_path) as simulator:
        yield simulator, tls.ca_path


def _client(sim: ApnsSimulator, ca: Path, key_pem: str, key_id: str, team: str) -> APNs:
    client = APNs(
        key=key_pem,
        key_id=key_id,
        team_id=team,
        topic=f"{BUNDLE}.voip",
        ssl_context=ssl.create_default_context(cafile=str(ca)),
        max_connection_attempts=1,
    )
    client.pool.protocol_class = type(
        "Local",
        (APNsProductionClientProtocol,),
        {"APNS_SERVER": "localhost", "APNS_PORT": sim.port},
    )
    return client


async def test_requests_are_validated_with_apples_reasons(
    sim: tuple[ApnsSimulator, Path],
) -> None:
    simulator, ca = sim
    key, stranger = make_provider_key(), make_provider_key()
    simulator.add_key(ProviderKey(key.key_id, key.team_id, key.public_pem, frozenset({BUNDLE})))
    good = _client(simulator, ca, key.private_pem, key.key_id, key.team_id)
    unknown = _client(simulator, ca, stranger.private_pem, stranger.key_id, stranger.team_id)
    forged = _client(simulator, ca, stranger.private_pem, key.key_id, key.team_id)
    token = token_for(Behaviour.OK)
    gone_token = token_for(Behaviour.UNREGISTERED)

    def voip(**kw: object) -> NotificationRequest:
        base: dict[str, object] = {
            "device_token": token,
            "message": {"aps": {}, "uuid": "x"},
            "push_type": PushType.VOIP,
            "priority": 10,
            "time_to_live": 0,
        }
        base.update(kw)
        return NotificationRequest(**base)  # type: ignore[arg-type]

    cases = [
        (good, voip(), "200", None),
        (unknown, voip(), "403", "InvalidProviderToken"),
        (forged, voip(), "403", "InvalidProviderToken"),
        (good, voip(apns_topic=BUNDLE), "400", "InvalidPushType"),
        (good, voip(push_type=None), "400", "InvalidPushType"),
        (good, voip(apns_topic="com.other.app.voip"), "400", "TopicDisallowed"),
        (good, voip(priority=7), "400", "BadPriority"),
        (good, voip(message={"aps": {}, "pad": "x" * 5200}), "413", "PayloadTooLarge"),
        (good, voip(device_token="zz" * 32), "400", "BadDeviceToken"),
        (good, voip(collapse_key="c" * 65), "400", "BadCollapseId"),
        (good, voip(device_token=gone_token), "410", "Unregistered"),
        (good, voip(device_token=token_for(Behaviour.THROTTLED)), "429", "TooManyRequests"),
        (good, voip(device_token=token_for(Behaviour.UNAVAILABLE)), "503", "ServiceUnavailable"),
    ]
    try:
        for client, request, status, reason in cases:
            result = await client.send_notification(request)
            assert (result.status, result.description) == (status, reason), request.__dict__
        gone = simulator.pushes(gone_token)
        assert gone and gone[0].status == 410
        big = [p for p in simulator.received if p.status == 413]
        assert big and big[0].payload_bytes > 5120
        # A 5,120-byte VoIP payload is allowed; 4,096 is the limit for other push types.
        payload = {"aps": {}, "pad": "x" * (5120 - len('{"aps": {}, "pad": ""}'))}
        fits = await good.send_notification(voip(message=payload))
        assert fits.status == "200"
    finally:
        for client in (good, unknown, forged):
            client.pool.close()
