"""The simulator's plain-HTTP side: what it received, and how tokens and keys behave.

Tests and the simulated phone read ``GET /v1/pushes?token=...`` (the phone "receives" its
VoIP pushes this way); ``PUT /v1/tokens/{token}`` and ``POST /v1/keys`` change behaviour.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, HTTPException
from pydantic import BaseModel, ConfigDict, Field

from voicemesh.apnssim.behaviours import Behaviour
from voicemesh.apnssim.server import ApnsSimulator, ProviderKey

__all__ = ["KeyIn", "TokenIn", "admin_app"]


class TokenIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    behaviour: Behaviour | None = None
    topic: str | None = Field(default=None, max_length=255)
    unregistered_at_ms: int | None = Field(default=None, ge=0)


class KeyIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    key_id: str = Field(pattern=r"^[A-Z0-9]{10}$")
    team_id: str = Field(pattern=r"^[A-Z0-9]{10}$")
    public_key: str = Field(min_length=64)
    topics: list[str] | None = None


def admin_app(simulator: ApnsSimulator, *, ca_file: str = "") -> FastAPI:
    app = FastAPI(title="voicemesh APNs simulator", version="1.0.0")

    @app.get("/healthz")
    async def healthz() -> dict[str, Any]:
        return {"ok": simulator.port > 0, "port": simulator.port}

    @app.get("/v1/info")
    async def info() -> dict[str, Any]:
        return {
            "host": simulator.host,
            "port": simulator.port,
            "ca_file": ca_file,
            "keys": sorted(simulator.keys),
            "connections_opened": simulator.connections_opened,
            "received": len(simulator.received),
        }

    @app.get("/v1/pushes")
    async def pushes(token: str | None = None, since: int = 0) -> dict[str, Any]:
        return {"pushes": [p.as_dict() for p in simulator.pushes(token, since)]}

    @app.delete("/v1/pushes", status_code=204)
    async def clear() -> None:
        simulator.clear()

    @app.put("/v1/tokens/{token}", status_code=204)
    async def set_token(token: str, body: TokenIn) -> None:
        if not all(c in "0123456789abcdefABCDEF" for c in token) or len(token) < 64:
            raise HTTPException(422, "device tokens are at least 64 hex digits")
        simulator.set_token(
            token,
            behaviour=body.behaviour,
            topic=body.topic,
            unregistered_at_ms=body.unregistered_at_ms,
        )

    @app.post("/v1/keys", status_code=204)
    async def add_key(body: KeyIn) -> None:
        topics = frozenset(body.topics) if body.topics is not None else None
        simulator.add_key(ProviderKey(body.key_id, body.team_id, body.public_key, topics))

    return app
