"""``voicemesh call`` against the launcher's mesh: a person's call from a terminal.

The command reads the stack's state files, calls the agent as the simulated phone, says its
line after the greeting, shows progress, hangs up, then prints the stored transcript and a
trace id that really finds the call's spans.
"""

from __future__ import annotations

import asyncio
import re
import sys
from pathlib import Path

import pytest

from voicemesh.testkit.fixtures import OtlpReceiver, wait_until

from .conftest import Mesh

pytestmark = pytest.mark.slow


async def test_voicemesh_call_talks_to_the_agent_and_prints_transcript_and_trace(
    mesh: Mesh, otlp_receiver: OtlpReceiver
) -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "voicemesh.cli",
        "call",
        "--data-dir",
        str(mesh.data_dir),
        "--tenant",
        "demo-salon",
        "--say",
        "i would like to book a manicure with sophie",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    raw, _ = await asyncio.wait_for(proc.communicate(), 90)
    output = raw.decode()
    assert proc.returncode == 0, output

    progress = [line.split("] ", 1)[1] for line in output.splitlines() if line.startswith("[")]
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
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "voicemesh.cli",
        "call",
        "--push",
        "--data-dir",
        str(mesh.data_dir),
        "--tenant",
        "demo-insurance",
        "--say",
        "i need to report a claim",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    raw, _ = await asyncio.wait_for(proc.communicate(), 90)
    output = raw.decode()
    assert proc.returncode == 0, output
    progress = [line.split("] ", 1)[1] for line in output.splitlines() if line.startswith("[")]

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
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "voicemesh.cli",
        "call",
        "--data-dir",
        str(tmp_path),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 2 and out == b""
    assert "no gateway URL, NATS URL, API key" in err.decode()
    assert "voicemesh up" in err.decode()
