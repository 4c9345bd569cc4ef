"""Small HTTPS/HTTP probes of the components, with the standard library only (no client-library start-up cost)."""

from __future__ import annotations

import json
import ssl
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from . import components
from .pki import Pki

APISERVER = f"https://127.0.0.1:{components.APISERVER_PORT}"


def admin_context(pki: Pki) -> ssl.SSLContext:
    """Verifies the apiserver against our CA and presents the admin (system:masters) client cert."""
    context = ssl.create_default_context(cafile=str(pki.ca_crt))
    context.load_cert_chain(str(pki.crt("admin")), str(pki.key("admin")))
    return context


def _insecure() -> ssl.SSLContext:
    # Controller-manager and scheduler serve /healthz with self-signed certs they make themselves.
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


def get(url: str, context: ssl.SSLContext | None = None, timeout: float = 2.0) -> tuple[int, str] | None:
    """(status, body), or None if nothing answered."""
    try:
        with urllib.request.urlopen(url, context=context, timeout=timeout) as response:
            return response.status, response.read().decode(errors="replace")
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode(errors="replace")
    except (OSError, ssl.SSLError):
        return None


def healthy(name: str, pki: Pki) -> bool:
    """Whether the component answers its health endpoint with 200 (the kubelet: not probed here)."""
    if name == "etcd":
        answer = get(f"http://127.0.0.1:{components.ETCD_CLIENT_PORT}/health")
        return answer is not None and answer[0] == 200 and '"true"' in answer[1]
    if name == "kube-apiserver":
        answer = get(f"{APISERVER}/readyz", admin_context(pki))
    elif name == "kube-controller-manager":
        answer = get(f"https://127.0.0.1:{components.CONTROLLER_MANAGER_PORT}/healthz", _insecure())
    elif name == "kube-scheduler":
        answer = get(f"https://127.0.0.1:{components.SCHEDULER_PORT}/healthz", _insecure())
    else:
        return True
    return answer is not None and answer[0] == 200


def nodes(pki: Pki) -> list[dict[str, Any]]:
    """The Node objects, or [] when the apiserver does not answer."""
    answer = get(f"{APISERVER}/api/v1/nodes", admin_context(pki), timeout=5.0)
    if answer is None or answer[0] != 200:
        return []
    return json.loads(answer[1]).get("items", [])


def node_ready(node: dict[str, Any]) -> bool:
    conditions = node.get("status", {}).get("conditions", [])
    return any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)


def log_tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"
