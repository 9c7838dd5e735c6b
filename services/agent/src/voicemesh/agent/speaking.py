"""The agent's voice: a reply synthesized (or streamed), played through the call's IO and
captioned; and the call's transcript, which both sides of the conversation write to.

A provider's voice that fails falls back to the embedded one, never silence. A streamed
line is captioned live (partial segments) while it plays and written once it has been said.
Transcript text never goes into logs.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncGenerator, AsyncIterator
from dataclasses import dataclass, field

from voicemesh.agent.io import CallIO
from voicemesh.agent.providers.base import Reply, Synthesizer
from voicemesh.agent.speech import resample
from voicemesh.common.contracts.events import Speaker, TranscriptSegment

__all__ = ["CAPTION_EVERY_S", "ReplyPlayer", "Spoken", "Transcript", "TurnTiming", "heard_part"]

log = logging.getLogger(__name__)

#: How often a streamed line's live caption is brought up to date.
CAPTION_EVERY_S = 0.25


@dataclass
class TurnTiming:
    """Where the time of one turn went (milliseconds), for spans and benchmarks."""

    end_of_turn_wait_ms: float = 0.0
    stt_ms: float = 0.0
    dialog_ms: float = 0.0
    tts_ms: float = 0.0
    first_frame_at: float = 0.0
    speech_ended_at: float = 0.0


@dataclass(eq=False)
class Transcript:
    """The call's transcript segments: ids per speaker, times from the call's start."""

    io: CallIO
    tenant: str
    call_id: str
    source: str
    _started_at: float = field(default_factory=time.monotonic, init=False)
    _counts: dict[Speaker, int] = field(
        default_factory=lambda: {Speaker.CALLER: 0, Speaker.AGENT: 0}, init=False
    )

    def now(self) -> float:
        """Seconds since the call started."""
        return time.monotonic() - self._started_at

    def next_id(self, speaker: Speaker) -> str:
        n = self._counts[speaker]
        self._counts[speaker] = n + 1
        return f"{self.call_id}:{speaker.value}:{n}"

    async def write(
        self,
        speaker: Speaker,
        text: str,
        start_s: float,
        *,
        segment_id: str | None = None,
        final: bool = True,
    ) -> None:
        """One segment, from ``start_s`` to now; a failure to send it is logged, not raised."""
        segment = TranscriptSegment(
            tenant=self.tenant,
            call_id=self.call_id,
            source=self.source,
            segment_id=segment_id or self.next_id(speaker),
            speaker=speaker,
            text=text,
            start_s=max(0.0, start_s),
            end_s=max(start_s, self.now()),
            final=final,
        )
        try:
            await self.io.emit(segment)
        except Exception as exc:
            log.warning("could not publish a transcript segment: %s", type(exc).__name__)


@dataclass
class Spoken:
    """How the playing of one reply ended."""

    interrupted: bool = False
    failure: BaseException | None = None  # the provider's voice broke off
    played_ms: int = 0  # for an interrupted reply: what the caller heard of it …
    heard: str = ""  # … and about which words that was


@dataclass
class _Progress:
    """How far the voice of one reply has come."""

    received: int = 0  # bytes of voice received
    lines: list[str] = field(default_factory=list)  # sentences whose voice was received
    first_chunk_at: float = 0.0

    def voiced(self, reply: Reply) -> str:
        """The text whose voice has come so far: the sentences voiced, or a speech model's
        transcript so far."""
        return " ".join(self.lines) if reply.sentences is not None else reply.text


@dataclass(eq=False)
class ReplyPlayer:
    """Voices replies through the call's IO, one at a time."""

    io: CallIO
    transcript: Transcript
    synthesizer: Synthesizer
    fallback: Synthesizer
    timeout_s: float
    #: True while a reply's voice is playing (the caller may barge in)
    speaking: bool = field(default=False, init=False)

    async def play(self, reply: Reply, timing: TurnTiming) -> Spoken:
        started = time.monotonic()
        progress = _Progress()
        streamed = reply.speech is not None or reply.sentences is not None
        voice: AsyncIterator[bytes]
        said_at = self.transcript.now()
        if reply.speech is not None:
            # Played as the provider speaks; its line is known once it has.
            voice, rate = reply.speech, reply.speech_rate
        elif reply.sentences is not None:
            voice, rate = self._voices(reply.sentences, progress), self.synthesizer.sample_rate
        else:
            pcm, rate = await self.synthesize(reply.text)
            timing.tts_ms = (time.monotonic() - started) * 1000
            await self.transcript.write(Speaker.AGENT, reply.text, self.transcript.now())
            voice = _whole(pcm)
        line = self.transcript.next_id(Speaker.AGENT) if streamed else ""
        captions = (
            asyncio.create_task(self._caption(reply, progress, line, said_at)) if line else None
        )
        spoken = Spoken()
        self.speaking = True
        try:
            finished = await self.io.play(_counted(voice, progress), rate)
        except Exception as exc:
            spoken.failure = exc
        else:
            timing.first_frame_at = finished.first_frame_at
            if finished.interrupted:
                # Barged in on: what the caller heard of it, for the conversation's history.
                total_s = progress.received / 2 / rate
                played_s = min(finished.position_s, total_s)
                fraction = played_s / total_s if total_s else 1.0
                spoken.interrupted = True
                spoken.played_ms = round(played_s * 1000)
                spoken.heard = heard_part(progress.voiced(reply), fraction)
        finally:
            self.speaking = False
            if captions is not None:
                captions.cancel()
                await asyncio.gather(captions, return_exceptions=True)
        if streamed:
            if progress.first_chunk_at:
                timing.tts_ms = (progress.first_chunk_at - started) * 1000
            if reply.text:
                await self.transcript.write(Speaker.AGENT, reply.text, said_at, segment_id=line)
        return spoken

    async def synthesize(self, text: str) -> tuple[bytes, int]:
        try:
            pcm = await asyncio.wait_for(self.synthesizer.synthesize(text), timeout=self.timeout_s)
            return pcm, self.synthesizer.sample_rate
        except Exception as exc:
            # The provider's voice failed: say it with the embedded voice, never silence.
            log.warning("speech synthesis failed (%s); using the offline voice", type(exc).__name__)
            return await self.fallback.synthesize(text), self.fallback.sample_rate

    async def _caption(self, reply: Reply, progress: _Progress, line: str, said_at: float) -> None:
        """Live captions for a streamed line: while it plays, a partial segment whenever its
        text has grown (the voiced sentences, or the speech model's transcript so far)."""
        shown = ""
        while True:
            await asyncio.sleep(CAPTION_EVERY_S)
            text = progress.voiced(reply)
            if text and text != shown:
                shown = text
                await self.transcript.write(
                    Speaker.AGENT, text, said_at, segment_id=line, final=False
                )

    async def _voices(
        self, sentences: AsyncGenerator[str, None], progress: _Progress
    ) -> AsyncGenerator[bytes, None]:
        """Each sentence's voice as the provider writes it: the next sentence is synthesized
        while this one plays, so there is no pause between them."""
        rate = self.synthesizer.sample_rate
        voiced: asyncio.Queue[tuple[str, bytes] | None] = asyncio.Queue()

        async def synthesize_all() -> None:
            try:
                async for sentence in sentences:
                    pcm, pcm_rate = await self.synthesize(sentence)
                    if pcm_rate != rate:  # the offline voice stood in
                        pcm = resample(pcm, pcm_rate, rate)
                    voiced.put_nowait((sentence, pcm))
            finally:
                voiced.put_nowait(None)

        writer = asyncio.create_task(synthesize_all())
        try:
            while (item := await voiced.get()) is not None:
                progress.lines.append(item[0])
                yield item[1]
            await writer  # the provider's failure, if it broke off
        finally:
            writer.cancel()
            await asyncio.gather(writer, return_exceptions=True)
            await sentences.aclose()


async def _counted(voice: AsyncIterator[bytes], progress: _Progress) -> AsyncIterator[bytes]:
    """``voice``, noting when it began and how much of it came; closing it closes ``voice``
    (which stops the provider)."""
    try:
        async for chunk in voice:
            if not progress.first_chunk_at:
                progress.first_chunk_at = time.monotonic()
            progress.received += len(chunk)
            yield chunk
    finally:
        if isinstance(voice, AsyncGenerator):
            await voice.aclose()


async def _whole(pcm: bytes) -> AsyncIterator[bytes]:
    yield pcm


def heard_part(text: str, fraction: float) -> str:
    """The words of ``text`` a caller heard when playback stopped ``fraction`` of the way
    through (speech runs at a roughly even pace of words)."""
    words = text.split()
    return " ".join(words[: max(0, min(len(words), round(len(words) * fraction)))])
