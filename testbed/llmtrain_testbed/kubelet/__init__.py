"""The process kubelet: fake GPU nodes whose pods run as real processes in per-pod network namespaces.

Run as `python -m llmtrain_testbed.kubelet --kubeconfig ... --state-dir ...` (see __main__.py and testbed/README.md).
"""

from __future__ import annotations

from pathlib import Path


def cleanup(state_dir: Path) -> None:
    """After the kubelet stopped (or died) and before etcd's data is dropped: kill leftover pod processes, remove
    sandboxes and emptyDir mounts, drop PVC directories and IP allocations (their API objects die with etcd), and
    keep the last cluster's pod logs in `pods.previous/` for post-mortems. `llmtrain_testbed down` calls this.
    """
    import shutil

    from .. import network
    from .volumes import unmount_under

    for ns in network.list_pod_netns():
        network.delete_pod_netns(ns[len(network.NETNS_PREFIX) :])
    pods = state_dir / "pods"
    if pods.is_dir():
        unmount_under(pods)
        for scratch in [*pods.glob("*/volumes"), *pods.glob("*/tmp"), *pods.glob("*/*/run-*")]:
            shutil.rmtree(scratch, ignore_errors=True)
        shutil.rmtree(state_dir / "pods.previous", ignore_errors=True)
        pods.rename(state_dir / "pods.previous")
    for name in ("pvc", "ipam"):
        shutil.rmtree(state_dir / name, ignore_errors=True)
