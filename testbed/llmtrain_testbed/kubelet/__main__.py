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
    parser = argparse.ArgumentParser(prog="python -m llmtrain_testbed.kubelet", description=__doc__)
    parser.add_argument("--kubeconfig", required=True, help="kubeconfig with rights to nodes, leases, pods, tokens")
    parser.add_argument("--state-dir", required=True, type=Path, help="pod dirs, logs, PVC dirs, IP allocations")
    parser.add_argument("--nodes", type=int, default=2, help="how many fake nodes to register (llmtrain-node-<i>)")
    parser.add_argument("--gpus-per-node", type=int, default=8, help="nvidia.com/gpu capacity of each node")
    parser.add_argument("--gpu-product", default="NVIDIA-H200", help="nvidia.com/gpu.product label")
    parser.add_argument("--gpu-memory-mib", type=int, default=143771, help="nvidia.com/gpu.memory label (MiB)")
    parser.add_argument("--cpu", default="64", help="declared cpu capacity per node")
    parser.add_argument("--memory", default="512Gi", help="declared memory capacity per node")
    parser.add_argument("--address", default="10.88.0.1", help="node InternalIP (the bridge address)")
    parser.add_argument("--first-port", type=int, default=10250, help="node i serves the kubelet API on this + i")
    parser.add_argument("--node-prefix", default="llmtrain-node", help="nodes are named <prefix>-<i>")
    parser.add_argument(
        "--register-with-taints",
        default="",
        help="comma list key=value:Effect put on every node (e.g. for a second kubelet used only by tests)",
    )
    parser.add_argument("--serving-cert", help="kubelet serving certificate (PEM)")
    parser.add_argument("--serving-key", help="kubelet serving key (PEM)")
    parser.add_argument("--client-ca", help="CA that signs the clients allowed to read logs (the cluster CA)")
    parser.add_argument("--shutdown-grace", type=float, default=5.0, help="seconds pods get to exit on kubelet SIGTERM")
    parser.add_argument("--log-level", default="INFO")
    args = parser.parse_args(argv)
    if args.nodes < 1:
        parser.error("--nodes must be at least 1")
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s [%(threadName)s] %(message)s"
    )
    node = NodeConfig(
        cpu=args.cpu,
        memory=args.memory,
        gpus=args.gpus_per_node,
        gpu_product=args.gpu_product,
        gpu_memory_mib=args.gpu_memory_mib,
        address=args.address,
        first_port=args.first_port,
        name_prefix=args.node_prefix,
        taints=[parse_taint(t) for t in args.register_with_taints.split(",") if t],
    )
    return KubeletOptions(
        kubeconfig=args.kubeconfig,
        state_dir=args.state_dir,
        nodes=args.nodes,
        node=node,
        serving_cert=args.serving_cert,
        serving_key=args.serving_key,
        client_ca=args.client_ca,
        shutdown_grace_s=args.shutdown_grace,
    )


def main(argv: list[str] | None = None) -> int:
    kubelet = Kubelet(parse_args(argv))
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: kubelet.stop())
    kubelet.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
