"""Signaling for a call held by another gateway worker, forwarded to it inside the cluster.

Clients only ever see the public origin (``gateway_public_url``); the Service in front of
the workers may hand any request to any of them. A worker that receives an offer while it
is full, or a reconnect or hang-up for a call another worker holds, sends the same request
to that worker's internal URL (``worker_url``, from the Redis registry) and returns its
answer as it is. The forwarded request carries ``FORWARDED_BY``: a worker never forwards
such a request again, so a request crosses at most one hop. The header grants nothing (the
call token or the session URL is still the credential); it only stops further forwarding.
"""

from __future__ import annotations

import logging

import httpx
from fastapi import HTTPException, Request, Response

__all__ = ["FORWARDED_BY", "Forwarder", "forwarded"]

log = logging.getLogger(__name__)

FORWARDED_BY = "X-Voicemesh-Forwarded-By"
#: What of the client's request the owner needs: its credential, body type and trace.
_REQUEST_HEADERS = ("authorization", "content-type", "traceparent", "tracestate")
#: What of the owner's answer the client needs (WHIP: Location, the ICE servers' Link).
_RESPONSE_HEADERS = ("content-type", "location", "link", "retry-after", "www-authenticate")


def forwarded(request: Request) -> bool:
    """Whether another worker forwarded ``request`` here (it must not travel further)."""
    return FORWARDED_BY in request.headers


class Forwarder:
    """One HTTP client to the other workers, opened and closed with the gateway."""

    def __init__(self, worker_id: str, *, timeout_s: float, retry_after_s: int) -> None:
        self._worker_id = worker_id
        self._timeout = httpx.Timeout(timeout_s, connect=min(timeout_s, 3.0))
        self._retry_after = str(retry_after_s)
        self._client: httpx.AsyncClient | None = None

    def open(self) -> None:
        self._client = httpx.AsyncClient(timeout=self._timeout, follow_redirects=False)

    async def close(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            await client.aclose()

    async def forward(
        self, request: Request, worker_id: str, worker_url: str, body: bytes
    ) -> Response:
        """Send ``request`` (with ``body``, already read) to the worker at ``worker_url``."""
        if self._client is None:
            raise RuntimeError("the forwarding client is not open")
        url = worker_url.rstrip("/") + request.url.path
        if request.url.query:
            url += "?" + request.url.query
        headers = {name: value for name in _REQUEST_HEADERS if (value := request.headers.get(name))}
        headers[FORWARDED_BY] = self._worker_id
        try:
            answer = await self._client.request(request.method, url, content=body, headers=headers)
        except httpx.HTTPError as exc:
            # The URL holds the session capability: log the worker, never the URL.
            log.warning(
                "could not forward a request to worker %s: %s", worker_id, type(exc).__name__
            )
            raise HTTPException(
                503,
                "the gateway worker holding this call did not answer",
                headers={"Retry-After": self._retry_after},
            ) from None
        response = Response(answer.content, status_code=answer.status_code)
        for name in _RESPONSE_HEADERS:
            for value in answer.headers.get_list(name):
                response.headers.append(name, value)
        return response
