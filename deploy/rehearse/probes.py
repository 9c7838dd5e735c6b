"""A container's probes, as the kubelet runs them: exec in the container, HTTP GET and TCP
from the node (the kubelet's probes are not subject to NetworkPolicies)."""

from __future__ import annotations

import socket
import time
import urllib.request
from typing import TYPE_CHECKING

from deploy.rehearse.render import Obj

if TYPE_CHECKING:
    from deploy.rehearse.kubelet import Container


class Probe:
    """One probe's schedule and its consecutive results."""

    def __init__(self, container: Container, kind: str, spec: Obj) -> None:
        self.container, self.kind, self.spec = container, kind, spec
        self.period = float(spec.get("periodSeconds", 10))
        self.timeout = float(spec.get("timeoutSeconds", 1))
        self.threshold = int(spec.get("failureThreshold", 3))
        self.success_threshold = int(spec.get("successThreshold", 1))
        self.reset()

    def reset(self) -> None:
        self.next = time.monotonic() + float(self.spec.get("initialDelaySeconds", 0))
        self.failures = self.successes = 0

    def due(self) -> bool | None:
        """The result of the probe if it was due, else None."""
        if time.monotonic() < self.next:
            return None
        self.next = time.monotonic() + self.period
        ok = self._check()
        self.failures = 0 if ok else self.failures + 1
        self.successes = self.successes + 1 if ok else 0
        return ok

    def _check(self) -> bool:
        container, spec = self.container, self.spec
        pod = container.pod
        if "exec" in spec:
            code, _ = container.exec(list(spec["exec"]["command"]), self.timeout)
            return code == 0
        action = spec.get("httpGet") or spec.get("tcpSocket") or {}
        port = pod.port(action.get("port"))
        if "httpGet" in spec:
            url = f"http://{pod.ip}:{port}{action.get('path', '/')}"
            try:
                with urllib.request.urlopen(url, timeout=self.timeout) as response:
                    return 200 <= int(response.status) < 400
            except OSError:
                return False
        with socket.socket() as sock:
            sock.settimeout(self.timeout)
            return sock.connect_ex((pod.ip, port)) == 0
