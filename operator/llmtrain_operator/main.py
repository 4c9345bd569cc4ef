"""`llmtrain-operator` / `python -m llmtrain_operator`: parse flags (or env), start metrics, run kopf standalone."""

from __future__ import annotations

import argparse
import logging
import os
import socket
import sys
import uuid

import kopf
from prometheus_client import start_http_server

from .constants import DEFAULT_TRAINER_IMAGE, DEV_COMMAND_ENV
from .controller import Controller
from .handlers import register
from .leader import LeaderElector
from .reconcile import OperatorSettings

log = logging.getLogger("llmtrain_operator")


def _env_int(name: str, default: int) -> int:
    raw = os.environ.get(name)
    if not raw:
        return default
    try:
        return int(raw)
    except ValueError:
        raise SystemExit(f"{name}={raw!r}: expected an integer") from None


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    env_ns = [n.strip() for n in os.environ.get("LLMTRAIN_NAMESPACES", "").split(",") if n.strip()]
    p = argparse.ArgumentParser(prog="llmtrain-operator", description="Runs LLMTrainingJobs as torchrun gangs.")
    p.add_argument(
        "--namespace",
        action="append",
        dest="namespaces",
        metavar="NS",
        help="namespace to watch (repeatable; none = cluster-wide; env LLMTRAIN_NAMESPACES=a,b)",
    )
    p.add_argument(
        "--trainer-image",
        default=os.environ.get("LLMTRAIN_TRAINER_IMAGE", DEFAULT_TRAINER_IMAGE),
        help="image for jobs that set no spec.image (env LLMTRAIN_TRAINER_IMAGE)",
    )
    p.add_argument(
        "--metrics-port",
        type=int,
        default=_env_int("LLMTRAIN_METRICS_PORT", 8080),
        help="port of /metrics, 0 disables (env LLMTRAIN_METRICS_PORT)",
    )
    p.add_argument(
        "--health-port",
        type=int,
        default=_env_int("LLMTRAIN_HEALTH_PORT", 8081),
        help="port of /healthz for the liveness probe, 0 disables (env LLMTRAIN_HEALTH_PORT)",
    )
    p.add_argument(
        "--resync-seconds",
        type=float,
        default=float(os.environ.get("LLMTRAIN_RESYNC_SECONDS", "10")),
        help="how often every job is re-reconciled and its progress read",
    )
    p.add_argument(
        "--status-interval-seconds",
        type=float,
        default=float(os.environ.get("LLMTRAIN_STATUS_INTERVAL_SECONDS", "60")),
        help="a job's status write budget, seconds per write: routine changes (pod counts, training progress) "
        "wait for it, transitions are written at once and spend from it (env LLMTRAIN_STATUS_INTERVAL_SECONDS)",
    )
    p.add_argument(
        "--leader-elect",
        action="store_true",
        default=os.environ.get("LLMTRAIN_LEADER_ELECT", "").lower() in ("1", "true"),
        help="run as one of several replicas: only the holder of a coordination.k8s.io Lease acts "
        "(env LLMTRAIN_LEADER_ELECT=true)",
    )
    p.add_argument(
        "--leader-election-namespace",
        default=os.environ.get("POD_NAMESPACE", ""),
        help="namespace of the Lease: the operator's own (env POD_NAMESPACE)",
    )
    p.add_argument(
        "--leader-election-name",
        default=os.environ.get("LLMTRAIN_LEADER_ELECTION_NAME", "llmtrain-operator"),
        help="name of the Lease (env LLMTRAIN_LEADER_ELECTION_NAME)",
    )
    p.add_argument("--verbose", action="store_true", help="debug logging")
    args = p.parse_args(argv)
    args.namespaces = args.namespaces or env_ns
    if args.resync_seconds <= 0:
        p.error("--resync-seconds must be positive")
    if args.status_interval_seconds < 0:
        p.error("--status-interval-seconds must not be negative")
    if args.leader_elect and not args.leader_election_namespace:
        p.error("--leader-elect needs --leader-election-namespace (or env POD_NAMESPACE)")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    if not args.verbose:  # kopf logs every handler call at INFO: thousands of lines for a 64-node gang
        logging.getLogger("kopf.objects").setLevel(logging.WARNING)
    settings = OperatorSettings(
        default_image=args.trainer_image,
        allow_dev_command=os.environ.get(DEV_COMMAND_ENV) == "1",
    )
    if settings.allow_dev_command:
        log.warning("%s=1: jobs may replace torchrun with a dev command (tests only)", DEV_COMMAND_ENV)
    if args.metrics_port:
        start_http_server(args.metrics_port)
    elector = None
    if args.leader_elect:
        identity = f"{socket.gethostname()}_{uuid.uuid4().hex[:8]}"
        elector = LeaderElector(args.leader_election_namespace, args.leader_election_name, identity)
        log.info("leader election on lease %s/%s as %s", elector.namespace, elector.name, identity)
    controller = Controller(
        settings=settings,
        resync_seconds=args.resync_seconds,
        status_interval_seconds=args.status_interval_seconds,
        elector=elector,
    )
    registry = kopf.OperatorRegistry()
    register(registry, controller)
    scope = f"namespaces {','.join(args.namespaces)}" if args.namespaces else "cluster-wide"
    log.info("llmtrain-operator starting (%s, trainer image %s)", scope, args.trainer_image)
    kopf.run(
        registry=registry,
        standalone=True,
        clusterwide=not args.namespaces,
        namespaces=args.namespaces,
        liveness_endpoint=f"http://0.0.0.0:{args.health_port}/healthz" if args.health_port else None,
    )
    return 0
