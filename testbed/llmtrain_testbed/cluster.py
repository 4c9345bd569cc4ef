"""Bring the test bed up, down, and report its state; the public API used by the CLI and the pytest fixtures.

up(nodes=2, gpus_per_node=8) -> Started      idempotent: keeps what already runs with the same command line
restart(name) -> float                       stops one component and brings it back, as `up` does
lose_node(name) / restore_node(name)         a node stops answering (a powered-off machine) / answers again
down() -> Stopped                            stops every process it started, the pod network, sweeps leftovers
status() -> Status                           component health and nodes; never starts anything
"""

from __future__ import annotations

import fcntl
import importlib.util
import logging
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType

from . import audit as audit_log
from . import components, kubeconfig, paths, pki, probes, processes
from .components import Component

log = logging.getLogger("testbed")

CONTROL_PLANE = ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler")
# Stop order: the kubelet first, so it can stop its pods while the rest still runs.
STOP_ORDER = (
    "kueue",
    "training-operator",
    "kubelet",
    "kube-scheduler",
    "kube-controller-manager",
    "kube-apiserver",
    "etcd",
)
DEFAULT_NODES = 2
KUBELET_GRACE_S = 45.0  # the kubelet stops its pods on SIGTERM, honouring their grace periods


class TestbedError(RuntimeError):
    """The test bed could not be brought up; the message says why and what to do."""


@dataclass(frozen=True)
class Started:
    """Result of `up`: where the kubeconfig is, and which processes this call started (empty: already running)."""

    kubeconfig: Path
    state_dir: Path
    started: list[str]

    @property
    def already_running(self) -> bool:
        return not self.started


@dataclass(frozen=True)
class Stopped:
    """Result of `down`: processes stopped in order, and pids of leftovers that had to be killed."""

    stopped: list[str]
    swept: list[int] = field(default_factory=list)


@dataclass(frozen=True)
class NodeInfo:
    name: str
    ready: bool
    gpus: str


@dataclass(frozen=True)
class Status:
    """Result of `status`: per-component (running, healthy) and the registered nodes."""

    components: dict[str, tuple[bool, bool]]
    nodes: list[NodeInfo]
    kubeconfig: Path

    @property
    def healthy(self) -> bool:
        return all(running and ok for running, ok in self.components.values())


def admin_kubeconfig(state: Path | None = None) -> Path:
    return (state or paths.state_dir()) / "kubeconfig"


def up(
    nodes: int | None = None, gpus_per_node: int | None = None, timeout: float = 90.0, audit: bool | None = None
) -> Started:
    """Start whatever is not already running (same command line), wait for /readyz and `nodes` Ready nodes.

    `nodes` / `gpus_per_node` left as None keep what a running kubelet was started with (else 2 / 8), so a test
    session joining a cluster brought up with `--nodes 4` does not reshape it; `audit` (the API server's audit log of
    writes, audit.py) likewise keeps what a running API server has (else off).
    """
    state = paths.state_dir()
    state.mkdir(parents=True, exist_ok=True)
    with _exclusive(state):
        return _up(state, nodes, gpus_per_node, timeout, audit)


def _up(
    state: Path, nodes: int | None, gpus_per_node: int | None, timeout: float, audit: bool | None = None
) -> Started:
    nodes = nodes if nodes is not None else _running_kubelet_flag(state, "nodes", DEFAULT_NODES)
    gpus_per_node = gpus_per_node if gpus_per_node is not None else _running_kubelet_flag(state, "gpus-per-node", 8)
    audit = audit if audit is not None else _running_audit(state)
    if audit:
        (state / "logs").mkdir(parents=True, exist_ok=True)
        audit_log.write_policy(state)
    certs = pki.ensure(state / "pki")
    admin = kubeconfig.write(admin_kubeconfig(state), certs, "admin", "admin")
    cm_config = kubeconfig.write(state / "controller-manager.kubeconfig", certs, "controller-manager", "cm")
    sched_config = kubeconfig.write(state / "scheduler.kubeconfig", certs, "scheduler", "scheduler")
    storage_and_api = [components.etcd(state), components.apiserver(state, certs, audit=audit)]
    # Started once /readyz passes: before the apiserver has bootstrapped RBAC, the controller-manager is
    # forbidden to read its authentication config and exits.
    controllers = [
        components.controller_manager(state, certs, cm_config),
        components.scheduler(state, sched_config),
    ]
    network = _optional_module("network")
    if network is not None:
        network.ensure_bridge()  # the apiserver advertises the bridge address; pods reach it there
    deadline = time.monotonic() + timeout
    started = []
    for group in (storage_and_api, controllers):
        started += [c.name for c in group if _ensure_running(state, c)]
        for component in group:
            _wait_healthy(state, certs, component.name, deadline)

    if not _has_module("kubelet.__main__"):
        log.warning("llmtrain_testbed.kubelet is not available: no nodes are registered, pods will stay Pending")
    else:
        kubelet = components.kubelet(state, certs, admin, nodes, gpus_per_node)
        if _ensure_running(state, kubelet):
            started.append(kubelet.name)
        _wait_nodes_ready(state, certs, nodes, deadline)
    log.info("test bed %s; kubeconfig %s", "started" if started else "already running", admin)
    return Started(kubeconfig=admin, state_dir=state, started=started)


def restart(name: str, timeout: float = 90.0) -> float:
    """Stop one component and start it again as `up` does (a control-plane crash or upgrade, as clients see it);
    returns the seconds until everything was healthy again."""
    state = paths.state_dir()
    with _exclusive(state):
        began = time.monotonic()
        processes.stop(state, name)
        _up(state, None, None, timeout)
        return time.monotonic() - began


def lose_node(name: str) -> None:
    """Node `name` stops answering, as a powered-off machine: the process kubelet stops its heartbeats and kills its
    pods' processes without reporting anything; the node lifecycle controller takes it from there."""
    _set_lost(name, lost=True)


def restore_node(name: str) -> None:
    """Node `name` answers again (heartbeats resume; pods still bound to it are run again)."""
    _set_lost(name, lost=False)


def _set_lost(name: str, lost: bool) -> None:
    path = paths.state_dir() / "kubelet" / "lost-nodes"  # read by kubelet.agent (LOST_NODES_FILE)
    path.parent.mkdir(parents=True, exist_ok=True)
    names = set(path.read_text().split()) if path.exists() else set()
    names = names | {name} if lost else names - {name}
    tmp = path.with_suffix(".tmp")
    tmp.write_text("".join(f"{n}\n" for n in sorted(names)))
    tmp.replace(path)


def down() -> Stopped:
    """Stop the kubelet (and so its pods), the control plane and the pod network; kill any marked leftover."""
    state = paths.state_dir()
    state.mkdir(parents=True, exist_ok=True)
    with _exclusive(state):
        return _down(state)


def _down(state: Path) -> Stopped:
    stopped = []
    for name in STOP_ORDER:
        if processes.stop(state, name, grace=KUBELET_GRACE_S if name == "kubelet" else 10.0):
            log.info("stopped %s", name)
            stopped.append(name)
    kubelet_cleanup = _optional_module("kubelet")
    if kubelet_cleanup is not None and hasattr(kubelet_cleanup, "cleanup"):
        kubelet_cleanup.cleanup(state / "kubelet")
    swept = processes.sweep(state)
    if swept:
        log.warning("killed %d leftover test bed process(es): %s", len(swept), swept)
    network = _optional_module("network")
    if network is not None:
        network.teardown()
    # Each `up` after a `down` starts from an empty cluster; the PKI (and so the kubeconfig) is kept.
    shutil.rmtree(state / "etcd", ignore_errors=True)
    (state / "kubelet" / "lost-nodes").unlink(missing_ok=True)  # the next `up` starts with every node answering
    return Stopped(stopped=stopped, swept=swept)


def status() -> Status:
    state = paths.state_dir()
    certs = pki.Pki(state / "pki")
    health: dict[str, tuple[bool, bool]] = {}
    for name in (*CONTROL_PLANE, "kubelet"):
        tracked = processes.read(state, name)
        running = tracked is not None and tracked.alive()
        health[name] = (running, running and certs.ca_crt.exists() and probes.healthy(name, certs))
    found = probes.nodes(certs) if health["kube-apiserver"][1] else []
    node_infos = [
        NodeInfo(
            name=n["metadata"]["name"],
            ready=probes.node_ready(n),
            gpus=n.get("status", {}).get("capacity", {}).get("nvidia.com/gpu", "0"),
        )
        for n in found
    ]
    return Status(components=health, nodes=node_infos, kubeconfig=admin_kubeconfig(state))


def _optional_module(name: str) -> ModuleType | None:
    """The network and kubelet modules are developed separately; the control plane works without them."""
    if not _has_module(name):
        log.warning("%s.%s is not available: skipping it", __package__, name)
        return None
    return importlib.import_module(f".{name}", __package__)


@contextmanager
def _exclusive(state: Path) -> Iterator[None]:
    """Serialise up/down: test sessions started at once must not both start etcd (the second waits, then finds
    everything running)."""
    with open(state / "lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _running_kubelet_flag(state: Path, flag: str, default: int) -> int:
    tracked = processes.read(state, "kubelet")
    if tracked is not None and tracked.alive():
        for arg in tracked.argv:
            if arg.startswith(f"--{flag}="):
                return int(arg.split("=", 1)[1])
    return default


def _running_audit(state: Path) -> bool:
    tracked = processes.read(state, "kube-apiserver")
    return tracked is not None and tracked.alive() and any(a.startswith("--audit-log-path=") for a in tracked.argv)


def _has_module(name: str) -> bool:
    try:
        return importlib.util.find_spec(f".{name}", __package__) is not None
    except ImportError:
        return False


def _ensure_running(state: Path, component: Component) -> bool:
    """Start `component` unless it already runs with the same command line. True if it was (re)started."""
    tracked = processes.read(state, component.name)
    if tracked is not None and tracked.alive():
        if tracked.argv == component.argv:
            return False
        log.info("restarting %s: its command line changed", component.name)
        processes.stop(state, component.name, grace=KUBELET_GRACE_S if component.name == "kubelet" else 10.0)
    for host, port in component.ports:
        try:
            processes.ensure_port_free(port, component.name, host)
        except processes.PortBusy as busy:
            raise TestbedError(str(busy)) from None
    log.info("starting %s", component.name)
    processes.start(state, component.name, component.argv, env=_env(component.name))
    return True


def _env(name: str) -> dict[str, str]:
    if name != "kubelet":
        return {}
    # `python -m llmtrain_testbed.kubelet` must find this package and the project's code.
    repo = paths.REPO_ROOT
    return {
        "PYTHONPATH": ":".join(
            str(p) for p in (paths.PROJECT_DIR, repo / "contract", repo / "operator", repo / "trainer_image")
        )
    }


def _wait_healthy(state: Path, certs: pki.Pki, name: str, deadline: float) -> None:
    while not probes.healthy(name, certs):
        tracked = processes.read(state, name)
        log_file = state / "logs" / f"{name}.log"
        if tracked is None or not tracked.alive():
            raise TestbedError(f"{name} exited during start-up; last lines of {log_file}:\n{probes.log_tail(log_file)}")
        if time.monotonic() > deadline:
            raise TestbedError(f"{name} not healthy in time; see {log_file}:\n{probes.log_tail(log_file)}")
        time.sleep(0.2)


def _wait_nodes_ready(state: Path, certs: pki.Pki, count: int, deadline: float) -> None:
    log_file = state / "logs" / "kubelet.log"
    while sum(probes.node_ready(n) for n in probes.nodes(certs)) < count:
        tracked = processes.read(state, "kubelet")
        if tracked is None or not tracked.alive():
            raise TestbedError(f"the kubelet exited; last lines of {log_file}:\n{probes.log_tail(log_file)}")
        if time.monotonic() > deadline:
            raise TestbedError(f"fewer than {count} nodes Ready in time; see {log_file}:\n{probes.log_tail(log_file)}")
        time.sleep(0.3)
