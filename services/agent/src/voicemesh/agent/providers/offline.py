"""The embedded default provider: pocketsphinx, the profile-driven dialog and eSpeak NG.

Needs no key and no network. The recogniser listens with the vertical's grammar (see
``bench/agent_stt_accuracy.py`` for why a grammar rather than the general model).
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable

from pocketsphinx import Decoder

from voicemesh.agent.dialog import OfflineConversation
from voicemesh.agent.profiles import Profile
from voicemesh.agent.providers.base import CallContext, Conversation
from voicemesh.agent.speech import DecoderPool, espeak, hypothesis

__all__ = ["EspeakSynthesizer", "OfflineProvider", "SphinxTranscriber"]


class SphinxTranscriber:
    """Decodes incrementally while the caller speaks, so little is left at end of turn."""

    def __init__(self, pool: DecoderPool, profile: Profile) -> None:
        self._pool = pool
        self._profile = profile
        self._key = _pool_key(profile)
        self._decoder: Decoder | None = None
        self._open = False

    async def open(self) -> None:
        self._decoder = await asyncio.to_thread(
            self._pool.acquire, self._key, _grammar(self._profile)
        )

    def start_utterance(self) -> None:
        assert self._decoder is not None, "open() first"
        if self._open:
            self._decoder.end_utt()
        self._decoder.start_utt()
        self._open = True

    def feed(self, pcm: bytes) -> None:
        if self._decoder is not None and self._open:
            self._decoder.process_raw(pcm, False, False)

    def partial(self) -> str | None:
        """The open utterance's best hypothesis so far (cheap: no lattice rescoring)."""
        if self._decoder is None or not self._open:
            return None
        return hypothesis(self._decoder)

    async def finish_utterance(self) -> str:
        decoder = self._decoder
        if decoder is None or not self._open:
            return ""
        self._open = False
        return await asyncio.to_thread(_final_hypothesis, decoder)

    async def close(self) -> None:
        if self._decoder is not None:
            if self._open:
                self._decoder.end_utt()
                self._open = False
            self._pool.release(self._key, self._decoder)
            self._decoder = None


def _pool_key(profile: Profile) -> str:
    return f"{profile.name}:{profile.stt_search}"


def _grammar(profile: Profile) -> str | None:
    return profile.grammar() if profile.stt_search == "grammar" else None


def _final_hypothesis(decoder: Decoder) -> str:
    """End the utterance and read its text: blocking, so off the event loop."""
    decoder.end_utt()
    return hypothesis(decoder)


class EspeakSynthesizer:
    def __init__(self, profile: Profile, sample_rate: int = 16000) -> None:
        self.sample_rate = sample_rate
        self._voice = profile.voice
        self._rate = profile.speech_rate

    async def synthesize(self, text: str) -> bytes:
        return await espeak().synthesize(text, self.sample_rate, voice=self._voice, rate=self._rate)


class OfflineProvider:
    name = "offline"

    def __init__(self, *, sample_rate: int = 16000) -> None:
        self._pool = DecoderPool()
        self._rate = sample_rate

    async def warm(self, profiles: Iterable[Profile]) -> None:
        """Load a decoder for each profile before calls come: loading one mid-call would
        stall every live call's audio for a third of a second."""
        for profile in profiles:
            await asyncio.to_thread(self._pool.warm, _pool_key(profile), _grammar(profile))

    def transcriber(self, context: CallContext) -> SphinxTranscriber:
        return SphinxTranscriber(self._pool, context.profile)

    def synthesizer(self, context: CallContext) -> EspeakSynthesizer:
        return EspeakSynthesizer(context.profile, self._rate)

    def conversation(self, context: CallContext) -> Conversation:
        return OfflineConversation(context)

    async def close(self) -> None:
        return None
