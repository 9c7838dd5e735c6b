"""What of a caller's SDP offer the gateway receives: one voice, nothing else.

A browser that offers its camera gets a call all the same, audio only: every audio or video
section after the first audio one is made ``inactive`` before aiortc sees the offer, so
aiortc answers it ``inactive``, creates no remote track for it and never decodes a frame of
it (a received video track nobody reads grew the gateway by ~9 MB/s). The caller's data
channel is kept.
"""

from __future__ import annotations

import re

from aiortc.sdp import SessionDescription

__all__ = ["MAX_MEDIA_SECTIONS", "OfferRejected", "screen_offer", "validate_offer"]

#: More sections than a voice, a camera and a data channel need is no caller's offer; each
#: section costs a transceiver (and its own ICE and DTLS transport when not bundled).
MAX_MEDIA_SECTIONS = 4
_DIRECTION = re.compile(r"a=(sendrecv|sendonly|recvonly|inactive)")


class OfferRejected(ValueError):
    """An SDP offer the gateway cannot answer; the message is safe to return as a 400."""


def validate_offer(sdp: str) -> None:
    """Reject what is not an SDP offer with audio before aiortc sees it."""
    if not sdp.lstrip().startswith("v=0"):
        raise OfferRejected("body is not an SDP description (no 'v=0' line)")
    try:
        parsed = SessionDescription.parse(sdp)
    except Exception as exc:
        raise OfferRejected(f"malformed SDP: {type(exc).__name__}: {exc}"[:300]) from exc
    kinds = [m.kind for m in parsed.media]
    if "audio" not in kinds:
        raise OfferRejected(f"the offer has no audio section (media: {kinds or 'none'})")
    audio = next(m for m in parsed.media if m.kind == "audio")
    if not audio.rtp.codecs:
        raise OfferRejected("the audio section offers no codecs")
    if audio.dtls is None or not audio.dtls.fingerprints:
        raise OfferRejected("the audio section has no DTLS fingerprint")
    if audio.ice is None or not audio.ice.usernameFragment:
        raise OfferRejected("the audio section has no ICE credentials")


def screen_offer(sdp: str) -> str:
    """The offer to negotiate: ``sdp`` with only its first audio section left active.

    Raises ``OfferRejected`` (a 400 with the reason) for what is not an offer with a voice.
    """
    validate_offer(sdp)
    media = SessionDescription.parse(sdp).media
    if len(media) > MAX_MEDIA_SECTIONS:
        raise OfferRejected(
            f"the offer has {len(media)} media sections; at most {MAX_MEDIA_SECTIONS} "
            "(one audio section is used)"
        )
    voice = next(i for i, m in enumerate(media) if m.kind == "audio")
    silenced = {i for i, m in enumerate(media) if m.kind in {"audio", "video"} and i != voice}
    if not silenced:
        return sdp
    return _make_inactive(sdp, silenced)


def _make_inactive(sdp: str, sections: set[int]) -> str:
    """``sdp`` with the media sections numbered in ``sections`` made ``a=inactive``."""
    out: list[str] = []
    index = -1
    silenced = marked = False
    for line in sdp.splitlines(keepends=True):
        text = line.rstrip("\r\n")
        if text.startswith("m="):
            if silenced and not marked:
                out.append("a=inactive\r\n")
            index += 1
            silenced, marked = index in sections, False
        elif silenced and _DIRECTION.fullmatch(text):
            continue  # the section's own direction: replaced by the one below
        elif silenced and not marked and text.startswith("a="):
            out.append("a=inactive\r\n")  # after the section's m=/c=/b= lines
            marked = True
        out.append(line)
    if silenced and not marked:
        out.append("a=inactive\r\n")
    return "".join(out)
