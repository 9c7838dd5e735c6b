"""``media.patch_aiortc`` replaces aiortc internals; this fails the day they change.

The patch swaps module globals that aiortc looks up at call time (the receiver's
``JitterBuffer``, ``rtp.compute_audio_level_dbov``, the codecs' ``OpusEncoder`` and
``OpusDecoder``, aioice's ``get_host_addresses``) and subclasses the Opus codecs'
constructors. It was written against the
exact aiortc pinned in ``pyproject.toml``; a different version, or a changed source of any
function the patch relies on, must be read again before the pin moves.
"""

from __future__ import annotations

from pathlib import Path

from voicemesh.gateway.advertise import _original_host_addresses
from voicemesh.gateway.media import _original_level
from voicemesh.testkit.pins import changed_sources, pinned_exactly, source_digest

PINNED = "1.16.0"

#: sha256 (first 16 hex digits) of the source of everything the patch depends on, as read
#: for aiortc 1.16.0. To update: read the new source, adapt media.py, then the digest.
PATCHED_INTERNALS = {
    # Builds the audio buffer as JitterBuffer(capacity=16, prefetch=4) by its global name.
    "aiortc.rtcrtpreceiver:RTCRtpReceiver.__init__": "3e3b7b5cefbaac6f",
    "aiortc.jitterbuffer:JitterBuffer.__init__": "32eb81fd50407bef",
    # What _audio_level_dbov reproduces (aiortc.rtp's, kept by media.py before any patch),
    # and the caller that reaches it through `rtp.`.
    "voicemesh.gateway.media:_original_level": "d65138ae99e84548",
    "aiortc.rtcrtpsender:RTCRtpSender._next_encoded_frame": "89dd9fa4fb33741c",
    # Look the Opus classes up by global name; MonoOpus* override their codec contexts.
    "aiortc.codecs:get_encoder": "adcbc1a6dc73e3bf",
    "aiortc.codecs:get_decoder": "34ebfdf7296a1a32",
    "aiortc.codecs.opus:OpusEncoder": "1041fbee9bf1a3fa",
    "aiortc.codecs.opus:OpusDecoder": "40cd30859e54f638",
    # advertise.gathering_on: aioice looks get_host_addresses up by its global name while
    # gathering, which aiortc runs inside setLocalDescription (the answering task's context).
    # Read through advertise's saved original: the module global is the patch while a
    # gateway in this process is gathering.
    "voicemesh.gateway.advertise:_original_host_addresses": "d4a54f9a68c39ff1",
    "aioice.ice:Connection.gather_candidates": "d33db28d4d1e49ff",
    "aiortc.rtcicetransport:RTCIceGatherer.gather": "147d15cd640f570e",
    "aiortc.rtcpeerconnection:RTCPeerConnection._RTCPeerConnection__gather": "8b6a11b5afe39a10",
}


def test_aiortc_is_pinned_exactly_and_installed_at_the_pin() -> None:
    pyproject = Path(__file__).parents[1] / "pyproject.toml"
    assert pinned_exactly(pyproject, "aiortc") == PINNED


def test_the_internals_the_patch_replaces_are_unchanged() -> None:
    assert _original_level.__module__ == "aiortc.rtp"
    assert _original_host_addresses.__module__ == "aioice.ice"
    changed = changed_sources(PATCHED_INTERNALS)
    assert not changed, f"aiortc internals changed under media.patch_aiortc: {changed}"


def test_the_digest_notices_a_changed_function() -> None:
    # The check can fail: a function whose source differs gets another digest.
    assert source_digest("voicemesh.gateway.media:_original_level") != source_digest(
        "voicemesh.gateway.media:_audio_level_dbov"
    )
