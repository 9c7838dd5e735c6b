"""The media address of a gateway worker: where its ICE host candidates are, and what they say.

aioice gathers a host candidate on every interface of the host and has no option to announce
another address (a 1:1 NAT). Each worker therefore

* gathers its peer connections' host candidates on one address only (``media_bind_ip``,
  the pod IP): ``gathering_on`` sets it for the answer being negotiated, and
  ``install`` (called by ``media.patch_aiortc``) makes aioice's address lookup honour it;
  the callers' peer connections in the same process (tests, benches) are not affected;
* writes the address it advertises (``media_advertise_ip``, e.g. the node's public IP) into
  the candidates and connection lines of its SDP answers (``advertise``): packets a phone
  sends there reach the bound socket through the NAT.
"""

from __future__ import annotations

import contextlib
import ipaddress
import re
import socket
from collections.abc import Iterator
from contextvars import ContextVar

import aioice.ice

__all__ = ["advertise", "check_bindable", "gathering_on", "install", "uninstall"]

_original_host_addresses = aioice.ice.get_host_addresses
#: The address host candidates are gathered on while an answer is negotiated (None: all).
_BIND: ContextVar[str | None] = ContextVar("voicemesh_media_bind_ip", default=None)
_CANDIDATE = re.compile(r"^(a=candidate:\S+ \d+ \S+ \d+ )(\S+)( \d+ typ \S+)(.*)$")
_CONNECTION = re.compile(r"^c=IN (IP4|IP6) (\S+)$")


def _host_addresses(use_ipv4: bool, use_ipv6: bool) -> list[str]:
    bound = _BIND.get()
    if bound is None:
        return _original_host_addresses(use_ipv4, use_ipv6)
    return [bound]


def install() -> None:
    """Let ``gathering_on`` choose aioice's host addresses (aioice looks the function up by
    its global name when it gathers); without it, aioice gathers as it always does."""
    aioice.ice.__dict__["get_host_addresses"] = _host_addresses


def uninstall() -> None:
    aioice.ice.__dict__["get_host_addresses"] = _original_host_addresses


@contextlib.contextmanager
def gathering_on(address: str | None) -> Iterator[None]:
    """Within this block (the task negotiating one answer), gather on ``address`` only."""
    token = _BIND.set(address or None)
    try:
        yield
    finally:
        _BIND.reset(token)


def check_bindable(address: str) -> None:
    """Raise ``ValueError`` unless this host can bind a UDP socket to ``address``."""
    family = socket.AF_INET6 if ipaddress.ip_address(address).version == 6 else socket.AF_INET
    try:
        with socket.socket(family, socket.SOCK_DGRAM) as sock:
            sock.bind((address, 0))
    except OSError as exc:
        raise ValueError(
            f"the media address {address} is not an address of this host ({exc.strerror}); "
            "behind a NAT set VOICEMESH_MEDIA_BIND_IP to the local address"
        ) from None


def advertise(sdp: str, bound: str, advertised: str) -> str:
    """``sdp`` with the address ``bound`` replaced by ``advertised`` in its host candidates,
    the related addresses of its other candidates and its ``c=`` lines."""
    if not bound or not advertised or bound == advertised:
        return sdp
    family = "IP6" if ipaddress.ip_address(advertised).version == 6 else "IP4"
    out = []
    for line in sdp.splitlines(keepends=True):
        text = line.rstrip("\r\n")
        ending = line[len(text) :]
        if (candidate := _CANDIDATE.match(text)) and candidate.group(2) == bound:
            head, _, port_type, rest = candidate.groups()
            text = f"{head}{advertised}{port_type}{rest}"
        elif candidate:
            text = text.replace(f" raddr {bound} ", f" raddr {advertised} ")
        elif (connection := _CONNECTION.match(text)) and connection.group(2) == bound:
            text = f"c=IN {family} {advertised}"
        out.append(text + ending)
    return "".join(out)
