"""The e2e suite's set-up: the operator installed with helm as users install it, and a real Prometheus.

The same suite runs on kind or a real cluster (KUBECONFIG); the parts that read this machine's processes or the
hostPath behind a claim check `cluster.is_testbed`.
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import threading
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from llmtrain_testbed.testing import Cluster, wait_for

from .jobs import REPO

OPERATOR_NAMESPACE = "llmtrain-e2e-system"
RELEASE = "e2e"


@pytest.fixture(scope="session")
def operator(cluster: Cluster) -> Iterator[str]:
    """helm install charts/llmtrain-operator (cluster-wide); yields the operator's namespace; uninstalls after."""
    # A `make demo` release left on the same cluster would manage our jobs too: one operator per job.
    cluster.helm("uninstall", "llmtrain", "-n", "llmtrain-system", "--wait", check=False)
    cluster.helm(
        "upgrade",
        "--install",
        RELEASE,
        str(REPO / "charts" / "llmtrain-operator"),
        "--namespace",
        OPERATOR_NAMESPACE,
        "--create-namespace",
        "--set",
        "image.repository=llmtrain/operator",
        "--set",
        "image.tag=e2e",
        "--set",
        "resyncSeconds=2",
        "--set",
        "statusIntervalSeconds=2",
        "--wait",
        "--timeout",
        "4m",
        timeout=300,
    )
    try:
        yield OPERATOR_NAMESPACE
    finally:
        cluster.helm("uninstall", RELEASE, "-n", OPERATOR_NAMESPACE, "--wait", check=False)


def operator_pods(cluster: Cluster) -> list[dict]:
    out = cluster.kubectl("-n", OPERATOR_NAMESPACE, "get", "pods", "-o", "json").stdout
    return [p for p in json.loads(out)["items"] if not p["metadata"].get("deletionTimestamp")]


@dataclass
class Prometheus:
    url: str

    def query(self, promql: str) -> list[dict]:
        qs = urllib.parse.urlencode({"query": promql})
        with urllib.request.urlopen(f"{self.url}/api/v1/query?{qs}", timeout=10) as resp:
            body = json.load(resp)
        assert body["status"] == "success", body
        return body["data"]["result"]

    def active_targets(self) -> list[dict]:
        with urllib.request.urlopen(f"{self.url}/api/v1/targets?state=active", timeout=10) as resp:
            return json.load(resp)["data"]["activeTargets"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _scrape_targets(cluster: Cluster) -> list[dict]:
    """Prometheus file_sd entries for every running pod's container port named `metrics` or `http-metrics`."""
    from kubernetes import client

    groups = []
    for pod in client.CoreV1Api(cluster.api_client).list_pod_for_all_namespaces().items:
        if not pod.status.pod_ip or pod.status.phase != "Running":
            continue
        for container in pod.spec.containers:
            for port in container.ports or []:
                if port.name in ("metrics", "http-metrics"):  # trainer pods, the operator
                    groups.append(
                        {
                            "targets": [f"{pod.status.pod_ip}:{port.container_port}"],
                            "labels": {"namespace": pod.metadata.namespace, "pod": pod.metadata.name},
                        }
                    )
    return groups


def _keep_targets_fresh(cluster: Cluster, path: Path, stop: threading.Event) -> None:
    """Pod discovery from the Kubernetes API, written where Prometheus's file_sd watches (Debian's Prometheus is
    built without kubernetes_sd)."""
    while not stop.is_set():
        try:
            tmp = path.with_suffix(".tmp")
            tmp.write_text(json.dumps(_scrape_targets(cluster)))
            tmp.replace(path)
        except Exception:  # an API hiccup: keep the last file, try again
            pass
        stop.wait(1.0)


@pytest.fixture(scope="session")
def prometheus(cluster: Cluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Prometheus]:
    """Debian's Prometheus scraping the operator and every trainer pod (container ports named `http-metrics` and
    `metrics`), with targets discovered from the Kubernetes API."""
    binary = shutil.which("prometheus")
    if binary is None:
        pytest.fail("prometheus is not installed: run `make system-deps` (Debian package `prometheus`)")
    if not cluster.is_testbed:
        pytest.skip("the e2e Prometheus scrapes pod IPs from this machine; on kind use the chart's PodMonitor")
    work = tmp_path_factory.mktemp("prometheus")
    targets = work / "targets.json"
    targets.write_text("[]")
    config = {
        "global": {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "5s"},
        "scrape_configs": [
            {
                "job_name": "llmtrain-pods",
                "honor_labels": True,  # keep the trainer's own `job` label (the LLMTrainingJob's name)
                "file_sd_configs": [{"files": [str(targets)], "refresh_interval": "1s"}],
            }
        ],
    }
    (work / "prometheus.yml").write_text(yaml.safe_dump(config))
    stop = threading.Event()
    discovery = threading.Thread(target=_keep_targets_fresh, args=(cluster, targets, stop), daemon=True)
    discovery.start()
    port = _free_port()
    log = (work / "prometheus.log").open("w")
    proc = subprocess.Popen(
        [
            binary,
            f"--config.file={work / 'prometheus.yml'}",
            f"--storage.tsdb.path={work / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
            "--log.level=warn",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    prom = Prometheus(url=f"http://127.0.0.1:{port}")

    def ready() -> bool:
        try:
            with urllib.request.urlopen(f"{prom.url}/-/ready", timeout=2) as resp:
                return resp.status == 200
        except OSError:
            return False

    try:
        wait_for(ready, timeout=60, what=f"Prometheus ready (log: {work / 'prometheus.log'})")
        yield prom
    finally:
        stop.set()
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()
