"""What the OpenAI providers share: the call's instructions and its tools as functions.

A profile's tools (the ``service.name`` of every action and check it uses) are offered to
the model as functions named ``<service>_<name>`` whose parameters are the tool's own
argument model (``voicemesh.common.contracts.tools.TOOLS``) minus ``idempotency_key``, which the
agent supplies, and minus the arguments the service takes from the call (``call_bound``: a
text's recipient and free body), which the model is never offered and the service refuses
from it. A function call runs through the call's ``ToolClient`` over NATS, and the
model reads back ``{"ok": true, "result": ...}`` or ``{"ok": false, "error": {...}}``.
``end_call`` lets the model hang up after its farewell. Arguments and results are never
logged: they carry PHI in healthcare-class verticals.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from typing import Any
from zoneinfo import ZoneInfo

from voicemesh.agent.providers.base import CallContext
from voicemesh.agent.templates import TemplateError, render
from voicemesh.common.contracts.tools import TOOLS, ToolSpec

__all__ = ["END_CALL", "FunctionOutcome", "ToolBox"]

log = logging.getLogger(__name__)

END_CALL = "end_call"
#: How many model round trips one caller turn may take (tool call, result, answer ...).
MAX_TOOL_STEPS = 4


@dataclass(frozen=True)
class FunctionOutcome:
    """What one function call gave: the JSON the model reads, and whether to hang up."""

    output: str
    hangup: bool = False
    farewell: str | None = None


class ToolBox:
    """One call's functions: their schemas for the model and their execution over NATS."""

    def __init__(self, context: CallContext) -> None:
        self._ctx = context
        profile = context.profile
        names = {a.tool for i in profile.intents.values() for a in i.actions}
        names |= {c.action.tool for i in profile.intents.values() for c in i.checks}
        self._specs: dict[str, ToolSpec[Any, Any]] = {}
        for tool in sorted(names):
            service, name = tool.split(".", 1)
            spec = TOOLS.get((service, name))
            if spec is not None:
                self._specs[f"{service}_{name}"] = spec
        self.used: list[str] = []

    @property
    def names(self) -> list[str]:
        return [*self._specs, END_CALL]

    def functions(self) -> list[dict[str, Any]]:
        """Flat function definitions (``name``, ``description``, ``parameters``)."""
        functions = [
            {
                "name": name,
                "description": spec.description or f"{spec.service} {spec.name}",
                "parameters": _parameters(spec),
            }
            for name, spec in self._specs.items()
        ]
        functions.append(
            {
                "name": END_CALL,
                "description": "Hang up after saying goodbye, when the caller has nothing more.",
                "parameters": {
                    "type": "object",
                    "properties": {"farewell": {"type": "string", "description": "last words"}},
                    "required": ["farewell"],
                },
            }
        )
        return functions

    def chat_tools(self) -> list[dict[str, Any]]:
        return [{"type": "function", "function": f} for f in self.functions()]

    def realtime_tools(self) -> list[dict[str, Any]]:
        return [{"type": "function", **f} for f in self.functions()]

    def instructions(self) -> str:
        ctx = self._ctx
        zone = ZoneInfo(ctx.tenant.time_zone)
        now = ctx.now().astimezone(zone).isoformat(timespec="seconds")
        return (
            f"{ctx.profile.persona}\n"
            f"You are on a phone call for {ctx.profile.display_name}; everything you write is "
            "spoken aloud, so answer in one or two short sentences with no lists or markup.\n"
            f"The current local time is {now} ({ctx.tenant.time_zone}). Give tools times as "
            "ISO 8601 with this UTC offset. Confirm what a tool did in words. When the caller "
            f"has nothing more, call {END_CALL} with your farewell."
        )

    def greeting(self) -> str:
        ctx = self._ctx
        values = {"business": ctx.profile.display_name, "tenant": ctx.tenant.id}
        try:
            return render(ctx.profile.greeting, values)
        except TemplateError:
            return ctx.profile.greeting

    async def execute(self, name: str, arguments: str) -> FunctionOutcome:
        """Run one function call; every failure is an answer for the model, never a raise."""
        try:
            parsed = json.loads(arguments or "{}")
        except ValueError:
            parsed = None
        if not isinstance(parsed, dict):
            return _error("invalid", "the arguments are not a JSON object")
        if name == END_CALL:
            farewell = parsed.get("farewell")
            text = farewell if isinstance(farewell, str) and farewell.strip() else None
            return FunctionOutcome(json.dumps({"ok": True}), hangup=True, farewell=text)
        spec = self._specs.get(name)
        if spec is None:
            return _error("invalid", f"there is no function {name}")
        parsed.pop("idempotency_key", None)
        # The same arguments in the same call are the same request: a model that repeats
        # a booking (or a retried round trip) books once.
        digest = hashlib.sha256(json.dumps(parsed, sort_keys=True).encode()).hexdigest()[:16]
        key = f"{self._ctx.call_id}:{name}:{digest}"
        self.used.append(name)
        result = await self._ctx.tools.call(spec.service, spec.name, parsed, idempotency_key=key)
        if result.ok:
            log.info("function %s answered ok", name)
            return FunctionOutcome(json.dumps({"ok": True, "result": result.result}, default=str))
        error = result.error
        code = error.code.value if error else "internal"
        log.info("function %s answered %s", name, code)
        return _error(code, error.message if error else "the tool failed")


def _error(code: str, message: str) -> FunctionOutcome:
    return FunctionOutcome(json.dumps({"ok": False, "error": {"code": code, "message": message}}))


def _parameters(spec: ToolSpec[Any, Any]) -> dict[str, Any]:
    schema: dict[str, Any] = spec.arguments.model_json_schema()
    schema.pop("title", None)
    hidden = {"idempotency_key", *spec.call_bound}
    properties = {k: v for k, v in schema.get("properties", {}).items() if k not in hidden}
    schema["properties"] = properties
    schema["required"] = [r for r in schema.get("required", []) if r not in hidden]
    return schema
