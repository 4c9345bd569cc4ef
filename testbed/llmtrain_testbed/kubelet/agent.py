"""The process kubelet: one process serving N fake nodes, running their pods as processes.

Threads: informers (all pods, all services), a dispatcher that gives each pod bound to our nodes a PodWorker, a
DNS loop that keeps every pod's hosts file current, the node agent (registration, leases), one logs server per
node, and the local-path provisioner. Every loop is level-triggered: it compares desired and actual state.
"""

from __future__ import annotations

import logging
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from .. import network
from ..paths import REPO_ROOT
from . import dns
from .api import Api, ApiError
from .informer import Informer, Key, key_of
from .ipam import Ipam
from .logs_server import LogsServer
from .nodes import NodeAgent, NodeConfig, capacity
from .pods import PodHost, PodWorker
from .provisioner import Provisioner
from .volumes import Lookup, unmount_under

log = logging.getLogger("testbed.kubelet")

API_PORT = "6443"
RETRY_FINISHED_S = 10.0
LOST_NODES_FILE = "lost-nodes"  # in the kubelet's state dir: one node name per line (cluster.lose_node writes it)


@dataclass
class KubeletOptions:
    kubeconfig: str
    state_dir: Path
    nodes: int = 2
    node: NodeConfig = field(default_factory=NodeConfig)
    serving_cert: str | None = None
    serving_key: str | None = None
    client_ca: str | None = None
    shutdown_grace_s: float = 5.0


def container_base_env(host_ip: str, hostname: str) -> dict[str, str]:
    """The environment every container starts from: the project's venv first on PATH, the repo's packages on
    PYTHONPATH (no image, so this is the 'image'), and the in-cluster API server variables."""
    return {
        "PATH": f"{sys.prefix}/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        "HOME": "/root",
        "HOSTNAME": hostname,
        "LANG": "C.UTF-8",
        "PYTHONPATH": f"{REPO_ROOT / 'contract'}:{REPO_ROOT / 'operator'}:{REPO_ROOT / 'trainer_image'}",
        "KUBERNETES_SERVICE_HOST": host_ip,
        "KUBERNETES_SERVICE_PORT": API_PORT,
        "KUBERNETES_SERVICE_PORT_HTTPS": API_PORT,
        "KUBERNETES_PORT": f"tcp://{host_ip}:{API_PORT}",
    }


class Kubelet:
    def __init__(self, opts: KubeletOptions) -> None:
        self.opts = opts
        self.api = Api(opts.kubeconfig)
        self.state_dir = opts.state_dir.resolve()
        self.host_ip = opts.node.address
        self.allocatable = capacity(opts.node)
        self.shutdown_grace_s = opts.shutdown_grace_s
        self.stopping = threading.Event()
        self._informers_stop = threading.Event()
        self.ipam = Ipam(self.state_dir / "ipam", network.pod_ips)
        self.node_agent = NodeAgent(self.api, opts.nodes, opts.node, self._informers_stop, self.lost_nodes)
        self.node_names = set(self.node_agent.names())
        self.workers: dict[Key, PodWorker] = {}
        self._workers_lock = threading.Lock()
        self._dispatch_wake = threading.Event()
        self._dns_wake = threading.Event()
        self.pods = Informer(self.api, "/api/v1/pods", self._on_pods, self._informers_stop)
        self.services = Informer(self.api, "/api/v1/services", self._dns_wake.set, self._informers_stop)
        self.provisioner = Provisioner(self.api, self.state_dir, self._informers_stop)
        self.servers: list[LogsServer] = []
        self.pod_host = PodHost(
            api=self.api,
            state_dir=self.state_dir,
            host_ip=self.host_ip,
            allocatable=self.allocatable,
            shutdown_grace_s=self.shutdown_grace_s,
            stopping=self.stopping.is_set,
            allocate_ip=self.ipam.allocate,
            release_ip=self.ipam.release,
            lookup=self.lookup,
            render_hosts=self.render_hosts,
            base_env=self.base_env,
        )

    def lost_nodes(self) -> set[str]:
        """Nodes the tests made stop answering (`llmtrain_testbed.cluster.lose_node`): no heartbeats, their pods'
        processes killed, nothing reported — a powered-off machine, as the control plane sees it."""
        try:
            return set((self.state_dir / LOST_NODES_FILE).read_text().split())
        except FileNotFoundError:
            return set()

    # ----- what the pod workers get (through self.pod_host) -----

    def base_env(self, pod: dict) -> dict[str, str]:
        return container_base_env(self.host_ip, dns.pod_hostname(pod))

    def lookup(self, plural: str, namespace: str) -> Lookup:
        """name -> the ConfigMap/Secret (fresh from the API) or None when it does not exist."""

        def get(name: str) -> dict | None:
            try:
                return self.api.get(f"/api/v1/namespaces/{namespace}/{plural}/{name}")
            except ApiError as exc:
                if exc.status == 404:
                    return None
                raise

        return get

    def render_hosts(self, pod: dict, pod_ip: str) -> str:
        return dns.render_hosts(pod, pod_ip, self.pods.snapshot(), self.services.snapshot(), self.host_ip)

    # ----- what the logs servers use -----

    def find_log(self, namespace: str, pod: str, container: str, previous: bool):
        """The log file `kubectl logs` wants: the newest run of the container, or the one before (previous)."""
        worker = self.workers.get((namespace, pod))
        if worker is not None:
            pod_dirs = [worker.pod_dir]
        else:
            pod_dirs = sorted((self.state_dir / "pods").glob(f"{namespace}_{pod}_*"), key=lambda p: p.stat().st_mtime)
        if not pod_dirs:
            return f"pod {namespace}/{pod} is not on this kubelet"
        cdir = pod_dirs[-1] / container
        runs = sorted(cdir.glob("*.log"), key=lambda p: int(p.stem)) if cdir.is_dir() else []
        if not runs:
            return f"container {container!r} in pod {namespace}/{pod} has not started (no log yet)"
        if previous:
            if len(runs) < 2:
                return f"previous terminated container {container!r} in pod {namespace}/{pod} not found"
            return runs[-2], lambda: False

        def running() -> bool:
            if worker is None:
                return False
            found = next((c for c in [*worker.init_containers, *worker.containers] if c.name == container), None)
            alive = found is not None and found.proc is not None and found.proc.poll() is None
            return alive and not worker.finished.is_set()

        return runs[-1], running

    # ----- loops -----

    def _on_pods(self) -> None:
        self._dispatch_wake.set()
        self._dns_wake.set()

    def _dispatch(self) -> None:
        answering = self.node_names - self.lost_nodes()  # a lost node's workers vanish: processes killed, no reports
        mine = {key_of(p): p for p in self.pods.snapshot() if p.get("spec", {}).get("nodeName") in answering}
        with self._workers_lock:
            for key, worker in list(self.workers.items()):
                pod = mine.get(key)
                if pod is None or pod["metadata"]["uid"] != worker.uid:
                    worker.vanish()
                    if worker.finished.is_set():
                        del self.workers[key]
                elif worker.finished.is_set() and time.monotonic() - worker.finished_at > RETRY_FINISHED_S:
                    del self.workers[key]  # still there long after its worker ended (a failed final delete): retry
            for key, pod in mine.items():
                worker = self.workers.get(key)
                if worker is None:
                    if self.stopping.is_set():
                        continue
                    worker = PodWorker(self.pod_host, pod)
                    self.workers[key] = worker
                    worker.start()
                else:
                    worker.update(pod)

    def _dispatch_loop(self) -> None:
        self.pods.synced.wait()
        while not self.stopping.is_set():
            try:
                self._dispatch()
            except Exception:
                log.exception("dispatch failed")
            self._dispatch_wake.wait(1)
            self._dispatch_wake.clear()

    def _dns_loop(self) -> None:
        """Rewrite every live pod's hosts file when pods/services change and at least once a second."""
        while not self.stopping.is_set():
            for worker in list(self.workers.values()):
                try:
                    worker.refresh_hosts()
                except Exception as exc:
                    log.warning("%s: hosts file update failed: %s", worker.ctx, exc)
            self._dns_wake.wait(1)
            self._dns_wake.clear()

    # ----- life cycle -----

    def _clean_leftovers(self) -> None:
        """Processes and sandboxes of a previous run cannot be adopted (their exit codes would be unknowable),
        so they are killed and removed; their pods are then reported as described in PodWorker."""
        pods_dir = self.state_dir / "pods"
        uids = self.ipam.owners() | {d.name.rsplit("_", 1)[-1] for d in pods_dir.glob("*_*_*")}
        for ns in network.list_pod_netns():
            if ns[len(network.NETNS_PREFIX) :] in uids:
                log.warning("removing leftover pod sandbox %s from a previous kubelet run", ns)
                network.delete_pod_netns(ns[len(network.NETNS_PREFIX) :])
        unmount_under(pods_dir)
        self.ipam.reset()

    def _start_logs_servers(self) -> None:
        opts = self.opts
        if not (opts.serving_cert and opts.serving_key and opts.client_ca):
            log.warning("no --serving-cert/--serving-key/--client-ca: `kubectl logs` will not work")
            return
        for index in range(opts.nodes):
            port = opts.node.first_port + index
            server = LogsServer(self.host_ip, port, opts.serving_cert, opts.serving_key, opts.client_ca, self.find_log)
            server.start()
            self.servers.append(server)

    def run(self) -> None:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        network.ensure_bridge()
        self._clean_leftovers()
        self._start_logs_servers()
        while not self.stopping.is_set():
            try:
                self.node_agent.register()
                break
            except Exception as exc:  # the API server may not be up yet, or restarting
                log.warning("cannot register the nodes yet: %s; retrying", exc)
                self.stopping.wait(2)
        self.node_agent.start()
        self.pods.start()
        self.services.start()
        self.provisioner.start()
        for target, name in ((self._dispatch_loop, "dispatch"), (self._dns_loop, "dns")):
            threading.Thread(target=target, name=name, daemon=True).start()
        log.info("process kubelet running nodes %s (state %s)", sorted(self.node_names), self.state_dir)
        self.stopping.wait()
        self._shutdown()

    def stop(self) -> None:
        self.stopping.set()
        self._dispatch_wake.set()

    def _shutdown(self) -> None:
        """Stop every pod's processes (SIGTERM, short grace, SIGKILL of the whole tree), remove the sandboxes."""
        log.info("stopping %d pod(s)", len(self.workers))
        with self._workers_lock:
            workers = list(self.workers.values())
        for worker in workers:
            worker.wake.set()
        for worker in workers:
            worker.finished.wait(self.shutdown_grace_s + 15)
        for worker in workers:
            network.delete_pod_netns(worker.uid)  # in case a worker did not finish in time
        self._informers_stop.set()
        for server in self.servers:
            server.shutdown()
        log.info("process kubelet stopped")
