"""`python -m llmtrain_testbed.kubelet`: run the process kubelet until SIGTERM (then stop every pod process, exit)."""

from __future__ import annotations

import argparse
import logging
import signal
import sys
from pathlib import Path

from .agent import Kubelet, KubeletOptions
from .nodes import NodeConfig


def parse_taint(text: str) -> dict:
    """`key=value:Effect` (value optional) as a Node taint; SystemExit names the bad text."""
    head, sep, effect = text.rpartition(":")
    key, _, value = head.partition("=")
    if not sep or not key or effect not in ("NoSchedule", "PreferNoSchedule", "NoExecute"):
        raise SystemExit(f"--register-with-taints: {text!r} is not key=value:NoSchedule|PreferNoSchedule|NoExecute")
    return {"key": key, "value": value, "effect": effect} if value else {"key": key, "effect": effect}


def parse_args(argv: list[str] | None = None) -> KubeletOptions:
    p = argparse.ArgumentParser(prog="python -m llmtrain_testbed.kubelet", description=__doc__)
    p.add_argument("--kubeconfig", required=True, help="kubeconfig with rights to nodes, leases, pods, tokens")
    p.add_argument("--state-dir", required=True, type=Path, help="pod dirs, logs, PVC dirs, IP allocations")
    p.add_argument("--nodes", type=int, default=2, help="how many fake nodes to register (llmtrain-node-<i>)")
    p.add_argument("--gpus-per-node", type=int, default=8, help="nvidia.com/gpu capacity of each node")
    p.add_argument("--gpu-product", default="NVIDIA-H200", help="nvidia.com/gpu.product label")
    p.add_argument("--gpu-memory-mib", type=int, default=143771, help="nvidia.com/gpu.memory label (MiB)")
    p.add_argument("--cpu", default="64", help="declared cpu capacity per node")
    p.add_argument("--memory", default="512Gi", help="declared memory capacity per node")
    p.add_argument("--address", default="10.88.0.1", help="node InternalIP (the bridge address)")
    p.add_argument("--first-port", type=int, default=10250, help="node i serves the kubelet API on this + i")
    p.add_argument("--node-prefix", default="llmtrain-node", help="nodes are named <prefix>-<i>")
    p.add_argument(
        "--register-with-taints",
        default="",
        help="comma list key=value:Effect put on every node (e.g. for a second kubelet used only by tests)",
    )
    p.add_argument("--serving-cert", help="kubelet serving certificate (PEM)")
    p.add_argument("--serving-key", help="kubelet serving key (PEM)")
    p.add_argument("--client-ca", help="CA that signs the clients allowed to read logs (the cluster CA)")
    p.add_argument("--shutdown-grace", type=float, default=5.0, help="seconds pods get to exit on kubelet SIGTERM")
    p.add_argument("--log-level", default="INFO")
    a = p.parse_args(argv)
    if a.nodes < 1:
        p.error("--nodes must be at least 1")
    logging.basicConfig(
        level=a.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s [%(threadName)s] %(message)s"
    )
    node = NodeConfig(
        cpu=a.cpu,
        memory=a.memory,
        gpus=a.gpus_per_node,
        gpu_product=a.gpu_product,
        gpu_memory_mib=a.gpu_memory_mib,
        address=a.address,
        first_port=a.first_port,
        name_prefix=a.node_prefix,
        taints=[parse_taint(t) for t in a.register_with_taints.split(",") if t],
    )
    return KubeletOptions(
        kubeconfig=a.kubeconfig,
        state_dir=a.state_dir,
        nodes=a.nodes,
        node=node,
        serving_cert=a.serving_cert,
        serving_key=a.serving_key,
        client_ca=a.client_ca,
        shutdown_grace_s=a.shutdown_grace,
    )


def main(argv: list[str] | None = None) -> int:
    kubelet = Kubelet(parse_args(argv))
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: kubelet.stop())
    kubelet.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
