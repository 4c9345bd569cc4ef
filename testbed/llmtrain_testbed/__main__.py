"""CLI: `PYTHONPATH=testbed python -m llmtrain_testbed up|down|status [--nodes N] [--gpus-per-node G]`."""

from __future__ import annotations

import argparse
import logging
import sys
import time

from . import cluster, paths


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m llmtrain_testbed", description="llmtrain's local Kubernetes test bed"
    )
    sub = parser.add_subparsers(dest="command", required=True)
    up = sub.add_parser("up", help="start (or keep) the control plane and the process kubelet")
    up.add_argument("--nodes", type=int, help="fake nodes the kubelet registers (default: as running, else 2)")
    up.add_argument("--gpus-per-node", type=int, help="nvidia.com/gpu capacity per node (default: as running, else 8)")
    up.add_argument("--timeout", type=float, default=90.0, help="seconds to wait for readiness (default 90)")
    up.add_argument(
        "--audit",
        action=argparse.BooleanOptionalAction,
        help="the API server's audit log of write requests, logs/audit.log (default: as running, else off)",
    )
    sub.add_parser("down", help="stop every test bed process and remove the pod network")
    sub.add_parser("status", help="component health and nodes")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="[testbed] %(message)s", stream=sys.stderr)

    try:
        if args.command == "up":
            began = time.monotonic()
            result = cluster.up(
                nodes=args.nodes, gpus_per_node=args.gpus_per_node, timeout=args.timeout, audit=args.audit
            )
            took = time.monotonic() - began
            verb = "already running" if result.already_running else f"up in {took:.1f}s"
            print(f"test bed {verb} (state: {result.state_dir})", file=sys.stderr)
            print(f"export KUBECONFIG={result.kubeconfig}")
        elif args.command == "down":
            result = cluster.down()
            print(f"test bed down (stopped: {', '.join(result.stopped) or 'nothing was running'})", file=sys.stderr)
        else:
            return _print_status(cluster.status())
    except (cluster.TestbedError, paths.MissingBinary) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    return 0


def _print_status(status: cluster.Status) -> int:
    for name, (running, healthy) in status.components.items():
        state = "healthy" if healthy else ("running, not healthy" if running else "not running")
        print(f"{name:<24} {state}")
    for node in status.nodes:
        print(f"node {node.name:<19} {'Ready' if node.ready else 'NotReady'}  nvidia.com/gpu={node.gpus}")
    print(f"kubeconfig: {status.kubeconfig}")
    return 0 if status.healthy else 1


if __name__ == "__main__":
    sys.exit(main())
