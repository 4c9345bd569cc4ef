"""The process kubelet: fake GPU nodes whose pods run as real processes in per-pod network namespaces.

Run as `python -m testbed.kubelet --kubeconfig ... --state-dir ...` (see __main__.py and docs/testbed.md).
"""

from __future__ import annotations

from pathlib import Path


def cleanup(state_dir: Path) -> None:
    """After the kubelet stopped (or died): kill leftover pod processes, remove sandboxes and emptyDir tmpfs mounts.

    `testbed down` calls this; it is what the kubelet itself does on SIGTERM, for the case it could not.
    """
    from .. import network
    from .volumes import unmount_under

    for ns in network.list_pod_netns():
        network.delete_pod_netns(ns[len(network.NETNS_PREFIX) :])
    if (state_dir / "pods").is_dir():
        unmount_under(state_dir / "pods")
