"""``voicemesh call`` against the launcher's mesh: a person's call from a terminal.

The command reads the stack's state files, calls the agent as the simulated phone, says its
line after the greeting, shows progress, hangs up, then prints the stored transcript and a
trace id that really finds the call's spans.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from voicemesh.testkit.fixtures import OtlpReceiver, wait_until

from .conftest import Mesh, call_progress, voicemesh_call

pytestmark = pytest.mark.slow


async def _call(mesh: Mesh, tenant: str, say: str, *options: str) -> str:
    """``voicemesh call`` on the launcher's stack, which must succeed: its output."""
    code, output, _ = await voicemesh_call(
        *options, "--data-dir", str(mesh.data_dir), "--tenant", tenant, "--say", say
    )
    assert code == 0, output
    return output


async def test_voicemesh_call_talks_to_the_agent_and_prints_transcript_and_trace(
    mesh: Mesh, otlp_receiver: OtlpReceiver
) -> None:
    output = await _call(mesh, "demo-salon", "i would like to book a manicure with sophie")
    progress = call_progress(output)
    assert progress[0].startswith("calling demo-salon (call ")
    assert any(p.startswith("connected (inbound, salon)") for p in progress), output
    said = [p for p in progress if " said: " in p]
    assert said[0].startswith("agent said: Hi, thanks for calling Bella Salon"), output
    # (what the offline recogniser heard: it may get a small word wrong, never the gist)
    assert any(p.startswith("caller said: i would like") and "sophie" in p for p in said), output
    assert said[-1].startswith("agent said: "), output  # the agent answered the line
    assert progress[-2:] == ["hanging up", progress[-1]] and progress[-1].startswith(
        "ended (hangup"
    ), output

    transcript = output.split("transcript (transcript service):\n", 1)[1]
    assert "agent: Hi, thanks for calling Bella Salon" in transcript, output
    assert "caller: i would like" in transcript, output

    match = re.search(r"^trace id: ([0-9a-f]{32})$", output, re.MULTILINE)
    assert match, output
    trace_id = match[1]

    def traced() -> set[str]:
        return {s.service for s in otlp_receiver.snapshot() if s.trace_id == trace_id}

    await wait_until(lambda: {"gateway", "agent", "transcript"} <= traced(), 15, what=trace_id)


async def test_voicemesh_call_push_rings_the_phone_which_answers(mesh: Mesh) -> None:
    output = await _call(mesh, "demo-insurance", "i need to report a claim", "--push")
    progress = call_progress(output)

    def at(prefix: str) -> int:
        return next(i for i, p in enumerate(progress) if p.startswith(prefix))

    # CallRinging and the push reach the phone concurrently: either may be shown first.
    assert at("phone registered") == 0, output
    assert max(at("ringing (1 device"), at("the phone rings")) < at("connected (outbound"), output
    assert "caller said: i need to report a claim" in progress, output
    assert "policy number" in progress[-3], output  # the agent's answer, then hang-up, end
    assert progress[-1].startswith("ended (hangup"), output
    assert re.search(r"^trace id: [0-9a-f]{32}$", output, re.MULTILINE), output


async def test_voicemesh_call_without_a_stack_says_what_is_missing(tmp_path: Path) -> None:
    code, out, err = await voicemesh_call(
        "--data-dir", str(tmp_path), separate_stderr=True, timeout=30
    )
    assert code == 2 and out == ""
    assert "no gateway URL, NATS URL, API key" in err
    assert "voicemesh up" in err
