"""Cluster DNS without a DNS server: every pod gets an /etc/hosts with the names CoreDNS would answer.

Rendering is pure. Writing happens in place (same inode, truncate + write) because the file is bind-mounted into
the pod's mount namespaces, and a bind mount pins the inode: a rename would leave the pod on the old file.
"""

from __future__ import annotations

import os
from pathlib import Path

CLUSTER_DOMAIN = "cluster.local"


def pod_hostname(pod: dict) -> str:
    """A pod's hostname: spec.hostname, else its name (at most 63 characters, like the kubelet)."""
    return (pod.get("spec", {}).get("hostname") or pod["metadata"]["name"])[:63].rstrip("-.")


def _is_ready(pod: dict) -> bool:
    conditions = pod.get("status", {}).get("conditions") or []
    return any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)


def _is_live(pod: dict) -> bool:
    return pod.get("status", {}).get("phase") not in ("Succeeded", "Failed") and not pod["metadata"].get(
        "deletionTimestamp"
    )


def _selects(service: dict, pod: dict) -> bool:
    selector = service.get("spec", {}).get("selector") or {}
    labels = pod["metadata"].get("labels") or {}
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


def _is_endpoint(service: dict, pod: dict) -> bool:
    """Whether the pod is an address of the service (ready, or any live pod with publishNotReadyAddresses)."""
    if service["metadata"].get("namespace") != pod["metadata"].get("namespace") or not _selects(service, pod):
        return False
    if not _is_live(pod) or not pod.get("status", {}).get("podIP"):
        return False
    return bool(service.get("spec", {}).get("publishNotReadyAddresses")) or _is_ready(pod)


def _is_headless(service: dict) -> bool:
    return service.get("spec", {}).get("clusterIP") == "None"


def render_hosts(pod: dict, pod_ip: str, pods: list[dict], services: list[dict], api_ip: str) -> str:
    """The pod's /etc/hosts: itself first, then peers by hostname.subdomain, then services; first name wins."""
    ns = pod["metadata"]["namespace"]
    entries: list[tuple[str, list[str]]] = [("127.0.0.1", ["localhost"]), ("::1", ["localhost", "ip6-localhost"])]
    own_name = pod_hostname(pod)
    subdomain = pod.get("spec", {}).get("subdomain")
    if subdomain:
        entries.append((pod_ip, [f"{own_name}.{subdomain}.{ns}.svc.{CLUSTER_DOMAIN}", own_name]))
    else:
        entries.append((pod_ip, [own_name]))

    headless = {(s["metadata"]["namespace"], s["metadata"]["name"]): s for s in services if _is_headless(s)}
    uid = pod["metadata"].get("uid")
    for peer in sorted(pods, key=lambda p: (p["metadata"].get("namespace", ""), p["metadata"]["name"])):
        peer_ns = peer["metadata"].get("namespace", "")
        peer_sub = peer.get("spec", {}).get("subdomain")
        svc = headless.get((peer_ns, peer_sub or ""))
        if not peer_sub or svc is None or not _is_endpoint(svc, peer):
            continue
        ip = pod_ip if peer["metadata"].get("uid") == uid else peer["status"]["podIP"]
        base = f"{pod_hostname(peer)}.{peer_sub}"
        names = [f"{base}.{peer_ns}.svc.{CLUSTER_DOMAIN}", f"{base}.{peer_ns}.svc", f"{base}.{peer_ns}"]
        if peer_ns == ns:
            names.append(base)
        entries.append((ip, names))

    api_names = [f"kubernetes.default.svc.{CLUSTER_DOMAIN}", "kubernetes.default.svc", "kubernetes.default"]
    entries.append((api_ip, api_names + (["kubernetes"] if ns == "default" else [])))
    for svc in sorted(services, key=lambda s: (s["metadata"]["namespace"], s["metadata"]["name"])):
        svc_ns, name = svc["metadata"]["namespace"], svc["metadata"]["name"]
        ips = sorted(
            (pod_ip if p["metadata"].get("uid") == uid else p["status"]["podIP"]) for p in pods if _is_endpoint(svc, p)
        )
        if not ips:
            continue
        names = [f"{name}.{svc_ns}.svc.{CLUSTER_DOMAIN}", f"{name}.{svc_ns}.svc", f"{name}.{svc_ns}"]
        if svc_ns == ns:
            names.append(name)
        entries.append((ips[0], names))

    seen: set[str] = set()
    lines = ["# Kubernetes-managed hosts file (llmtrain process kubelet)."]
    for ip, names in entries:
        fresh = [n for n in names if n not in seen]
        seen.update(fresh)
        if fresh:
            lines.append(f"{ip}\t{' '.join(fresh)}")
    return "\n".join(lines) + "\n"


def render_resolv_conf(namespace: str, nameserver: str) -> str:
    """Search domains like a cluster pod; nothing answers on the nameserver, so misses fail fast (not time out)."""
    search = f"{namespace}.svc.{CLUSTER_DOMAIN} svc.{CLUSTER_DOMAIN} {CLUSTER_DOMAIN}"
    return f"nameserver {nameserver}\nsearch {search}\noptions ndots:5 timeout:1 attempts:1\n"


def write_in_place(path: Path, text: str) -> bool:
    """Rewrite `path` keeping its inode; returns whether the content changed."""
    data = text.encode()
    try:
        with open(path, "rb") as f:
            if f.read() == data:
                return False
    except FileNotFoundError:
        pass
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        os.ftruncate(fd, 0)
        os.write(fd, data)
    finally:
        os.close(fd)
    return True
