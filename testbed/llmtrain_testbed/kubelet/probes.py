"""exec / httpGet / tcpSocket probes and their thresholds, as the kubelet runs them.

exec probes run inside the container's namespaces (launcher join mode); httpGet and tcpSocket go to the pod IP
over the bridge, so they test what a real kubelet would.
"""

from __future__ import annotations

import http.client
import socket
import ssl
import time
from dataclasses import dataclass
from pathlib import Path

from .runner import exec_in_container


@dataclass
class ProbeTarget:
    """Where a probe goes: the pod IP, the container's main pid and env, its named ports."""

    pod_ip: str
    pid: int
    env: dict[str, str]
    ports: dict[str, int]
    run_dir: Path


def _port(value: int | str, target: ProbeTarget) -> int:
    if isinstance(value, int) or str(value).isdigit():
        return int(value)
    if value not in target.ports:
        raise ValueError(f"named port {value!r} is not declared by the container")
    return target.ports[value]


def probe_once(probe: dict, target: ProbeTarget) -> tuple[bool, str]:
    """Run the probe once; (success, message)."""
    timeout = float(probe.get("timeoutSeconds", 1))
    try:
        if "exec" in probe:
            code, output = exec_in_container(target.pid, probe["exec"]["command"], target.env, target.run_dir, timeout)
            return code == 0, f"exit {code}: {output.strip()[-200:]}"
        if "httpGet" in probe:
            get = probe["httpGet"]
            host = get.get("host") or target.pod_ip
            port = _port(get["port"], target)
            if get.get("scheme", "HTTP").upper() == "HTTPS":
                conn: http.client.HTTPConnection = http.client.HTTPSConnection(
                    host, port, timeout=timeout, context=ssl._create_unverified_context()
                )
            else:
                conn = http.client.HTTPConnection(host, port, timeout=timeout)
            headers = {h["name"]: h["value"] for h in get.get("httpHeaders") or []}
            try:
                conn.request("GET", get.get("path", "/"), headers=headers)
                status = conn.getresponse().status
            finally:
                conn.close()
            return 200 <= status < 400, f"HTTP {status}"
        if "tcpSocket" in probe:
            tcp = probe["tcpSocket"]
            with socket.create_connection((tcp.get("host") or target.pod_ip, _port(tcp["port"], target)), timeout):
                return True, "connected"
        return False, f"probe handler {sorted(probe)} is not supported by the process kubelet"
    except (OSError, ValueError, http.client.HTTPException) as exc:
        return False, str(exc)


@dataclass
class ProbeTracker:
    """Counts consecutive results against success/failure thresholds; `result` is None until the first verdict."""

    probe: dict
    started: float
    initial: bool | None
    next_at: float = 0.0
    successes: int = 0
    failures: int = 0
    result: bool | None = None
    message: str = ""

    def __post_init__(self) -> None:
        self.result = self.initial
        self.next_at = self.started + float(self.probe.get("initialDelaySeconds", 0))

    def due(self, now: float) -> bool:
        return now >= self.next_at

    def observe(self, ok: bool, message: str, now: float) -> bool | None:
        """Record one outcome; returns the (possibly changed) verdict."""
        self.next_at = now + float(self.probe.get("periodSeconds", 10))
        self.message = message
        if ok:
            self.successes, self.failures = self.successes + 1, 0
            if self.successes >= int(self.probe.get("successThreshold", 1)):
                self.result = True
        else:
            self.failures, self.successes = self.failures + 1, 0
            if self.failures >= int(self.probe.get("failureThreshold", 3)):
                self.result = False
        return self.result


def new_tracker(probe: dict | None, initial: bool | None) -> ProbeTracker | None:
    return None if not probe else ProbeTracker(probe, time.monotonic(), initial)
