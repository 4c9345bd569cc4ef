"""The test bed's pod network: one Linux bridge, one network namespace per pod, veth pairs between them.

This replaces a CNI plugin. The host owns 10.88.0.1/16 on bridge `llmt0`; each pod gets 10.88.x.y in its own
namespace with a default route via the bridge address. Pods and the host talk over the bridge directly (same L2
segment), so no forwarding, NAT or iptables rule is needed and nothing can leave the machine.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import signal
import subprocess
import time
from pathlib import Path

BRIDGE = "llmt0"
HOST_IP = "10.88.0.1"
PREFIX_LEN = 16
NETNS_PREFIX = "llmt-"
NETNS_DIR = Path("/run/netns")

log = logging.getLogger("testbed.network")


class NetworkError(RuntimeError):
    """An `ip` command failed; the message carries the command and its stderr."""


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30)
    if check and proc.returncode != 0:
        raise NetworkError(f"ip {' '.join(args)} failed: {proc.stderr.strip()}")
    return proc


def _link_exists(name: str, netns: str | None = None) -> bool:
    args = ["-n", netns] if netns else []
    return _ip(*args, "link", "show", "dev", name, check=False).returncode == 0


def ensure_bridge() -> None:
    """Create bridge llmt0 with 10.88.0.1/16 and bring it up; a no-op when it already is (idempotent)."""
    if not _link_exists(BRIDGE):
        _ip("link", "add", BRIDGE, "type", "bridge")
    addrs = _ip("-o", "-4", "addr", "show", "dev", BRIDGE).stdout
    if f" {HOST_IP}/" not in addrs:
        _ip("addr", "add", f"{HOST_IP}/{PREFIX_LEN}", "dev", BRIDGE)
    _ip("link", "set", BRIDGE, "up")


def netns_name(pod_uid: str) -> str:
    """The network namespace of a pod, named after its uid so a restarted kubelet finds leftovers."""
    return NETNS_PREFIX + pod_uid


def _host_veth(pod_uid: str) -> str:
    # Interface names are limited to 15 characters.
    return "vl" + hashlib.sha1(pod_uid.encode()).hexdigest()[:12]


def create_pod_netns(pod_uid: str, ip: str) -> str:
    """Create the pod's namespace with eth0=ip/16 on the bridge, lo up and a default route; returns its name."""
    ns = netns_name(pod_uid)
    veth = _host_veth(pod_uid)
    delete_pod_netns(pod_uid)
    _ip("netns", "add", ns)
    try:
        _ip("link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", ns)
        _ip("link", "set", veth, "master", BRIDGE, "up")
        _ip("-n", ns, "addr", "add", f"{ip}/{PREFIX_LEN}", "dev", "eth0")
        _ip("-n", ns, "link", "set", "eth0", "up")
        _ip("-n", ns, "link", "set", "lo", "up")
        _ip("-n", ns, "route", "add", "default", "via", HOST_IP)
    except NetworkError:
        delete_pod_netns(pod_uid)
        raise
    return ns


def netns_pids(ns: str) -> list[int]:
    """Every process whose network namespace is `ns` (the whole tree of a pod, whatever it forked)."""
    proc = _ip("netns", "pids", ns, check=False)
    return [int(p) for p in proc.stdout.split() if p.isdigit()]


def kill_netns_processes(ns: str, wait_s: float = 5.0) -> None:
    """SIGKILL everything still running in a namespace and wait until it is gone."""
    deadline = time.monotonic() + wait_s
    while True:
        pids = [p for p in netns_pids(ns) if p != os.getpid()]
        if not pids or time.monotonic() > deadline:
            return
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.05)


def delete_pod_netns(pod_uid: str) -> None:
    """Kill what runs in the pod's namespace, then remove the namespace and its veth (idempotent)."""
    ns = netns_name(pod_uid)
    if (NETNS_DIR / ns).exists():
        kill_netns_processes(ns)
        _ip("netns", "del", ns, check=False)
    veth = _host_veth(pod_uid)
    if _link_exists(veth):
        _ip("link", "del", veth, check=False)


def list_pod_netns() -> list[str]:
    """Names of the test bed's pod namespaces that exist now."""
    if not NETNS_DIR.is_dir():
        return []
    return sorted(p.name for p in NETNS_DIR.iterdir() if p.name.startswith(NETNS_PREFIX))


def pod_ips() -> set[str]:
    """IPv4 addresses of every pod namespace on this machine (whoever created it)."""
    ips = set()
    for ns in list_pod_netns():
        out = _ip("-n", ns, "-4", "-o", "addr", "show", "dev", "eth0", check=False).stdout
        ips.update(word.split("/")[0] for word in out.split() if word.count(".") == 3 and "/" in word)
    return ips


def teardown() -> None:
    """Kill every pod process left, delete every pod namespace and the bridge; safe to call when none exist."""
    for ns in list_pod_netns():
        kill_netns_processes(ns)
        _ip("netns", "del", ns, check=False)
        log.info("deleted leftover pod network namespace %s", ns)
    if _link_exists(BRIDGE):
        _ip("link", "del", BRIDGE, check=False)
