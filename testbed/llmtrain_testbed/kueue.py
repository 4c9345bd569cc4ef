"""Kueue on the test bed: the real manager, built from sigs.k8s.io/kueue by `make cluster-bins`, as a host process.

`python -m llmtrain_testbed.kueue up` (what `make kueue` runs) installs it into the running test bed: Kueue's CRDs,
its namespace, a serving certificate from the test bed's CA, the manager (pod integration only, no leader election,
its own certificates), and its webhook configurations rewritten from Service references to URLs on 127.0.0.1 (the
API server runs on the host too). The pod webhooks only see pods that carry a queue name, so the rest of the test
bed never depends on the manager. Then a ResourceFlavor and a ClusterQueue for tests. `down` removes the webhook
configurations first, then stops the manager; the test bed's own `down` stops it as well.
"""

from __future__ import annotations

import base64
import json
import logging
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml

from . import addons, cluster, paths, pki, processes

log = logging.getLogger("testbed.kueue")

VERSION = "v0.17.0"
NAME = "kueue"
NAMESPACE = "kueue-system"
WEBHOOK_PORT = 19443
HEALTH_PORT = 18081
METRICS_PORT = 18443
MANAGER = addons.Manager(NAME, (WEBHOOK_PORT, HEALTH_PORT, METRICS_PORT), HEALTH_PORT)

QUEUE_LABEL = "kueue.x-k8s.io/queue-name"
# Without Kueue's internal certificate management its metrics server reads this fixed path (cmd/kueue/main.go).
METRICS_CERT_DIR = Path("/etc/kueue/metrics/certs")
WEBHOOK_NAMES = {
    "MutatingWebhookConfiguration": "llmtrain-testbed-kueue-mutating",
    "ValidatingWebhookConfiguration": "llmtrain-testbed-kueue-validating",
}
# What the tests share: one flavor, one ClusterQueue (LocalQueues are per test namespace).
FLAVOR = "default-flavor"
CLUSTER_QUEUE = "llmtrain-test"


def manifests_dir() -> Path:
    return paths.bin_dir().parent / f"kueue-{VERSION}"


def config(cert_dir: Path) -> dict[str, Any]:
    """The manager's Configuration: pods only, on loopback ports that do not clash with the control plane."""
    return {
        "apiVersion": "config.kueue.x-k8s.io/v1beta2",
        "kind": "Configuration",
        "namespace": NAMESPACE,
        "health": {"healthProbeBindAddress": f"127.0.0.1:{HEALTH_PORT}"},
        "metrics": {"bindAddress": f"127.0.0.1:{METRICS_PORT}"},
        "webhook": {"port": WEBHOOK_PORT, "host": "127.0.0.1", "certDir": str(cert_dir)},
        "leaderElection": {"leaderElect": False},
        "internalCertManagement": {"enable": False},
        "manageJobsWithoutQueueName": False,
        "integrations": {"frameworks": ["pod"]},
        # The on-demand visibility API is an aggregated API server with its own certificates: not needed here.
        "featureGates": {"VisibilityOnDemand": False},
    }


def _served(path: str) -> bool:
    """Webhooks the manager serves with only the pod integration: Kueue's own kinds and pods."""
    return "-kueue-x-k8s-io-" in path or path.endswith("--v1-pod")


def webhook_configurations(manifests: list[dict[str, Any]], ca_pem: bytes) -> list[dict[str, Any]]:
    """Kueue's webhook configurations, pointed at https://127.0.0.1:<port> and limited to what it serves."""
    ca_bundle = base64.b64encode(ca_pem).decode()
    result = []
    for manifest in manifests:
        kind = manifest.get("kind")
        if kind not in WEBHOOK_NAMES:
            continue
        hooks = []
        for hook in manifest.get("webhooks", []):
            path = hook["clientConfig"]["service"]["path"]
            if not _served(path):
                continue
            hook = {**hook, "clientConfig": {"url": f"https://127.0.0.1:{WEBHOOK_PORT}{path}", "caBundle": ca_bundle}}
            if path.endswith("--v1-pod"):
                hook["objectSelector"] = {"matchExpressions": [{"key": QUEUE_LABEL, "operator": "Exists"}]}
            hooks.append(hook)
        result.append({**manifest, "metadata": {"name": WEBHOOK_NAMES[kind]}, "webhooks": hooks})
    return result


def default_queue_objects(gpus: int = 8) -> list[dict[str, Any]]:
    """A ResourceFlavor and a ClusterQueue with room for `gpus` GPUs that preempts lower priorities within it."""
    flavor = {"apiVersion": "kueue.x-k8s.io/v1beta2", "kind": "ResourceFlavor", "metadata": {"name": FLAVOR}}
    quota = [("cpu", "64"), ("memory", "256Gi"), ("nvidia.com/gpu", str(gpus))]
    cluster_queue = {
        "apiVersion": "kueue.x-k8s.io/v1beta2",
        "kind": "ClusterQueue",
        "metadata": {"name": CLUSTER_QUEUE},
        "spec": {
            "namespaceSelector": {},
            "preemption": {"withinClusterQueue": "LowerPriority"},
            "resourceGroups": [
                {
                    "coveredResources": [name for name, _ in quota],
                    "flavors": [{"name": FLAVOR, "resources": [{"name": n, "nominalQuota": q} for n, q in quota]}],
                }
            ],
        },
    }
    return [flavor, cluster_queue]


def local_queue(namespace: str, name: str = "team", cluster_queue: str = CLUSTER_QUEUE) -> dict[str, Any]:
    return {
        "apiVersion": "kueue.x-k8s.io/v1beta2",
        "kind": "LocalQueue",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {"clusterQueue": cluster_queue},
    }


# -- the running test bed --------------------------------------------------------------------------------------------


def _kubectl(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    argv = [str(paths.binary("kubectl")), f"--kubeconfig={cluster.admin_kubeconfig()}", *args]
    return subprocess.run(argv, input=stdin, capture_output=True, text=True, timeout=120, check=True)


def _apply(objects: list[dict[str, Any]]) -> None:
    documents = "\n---\n".join(json.dumps(obj) for obj in objects)
    _kubectl(
        "apply", "--server-side", "--force-conflicts", "--field-manager=llmtrain-testbed", "-f", "-", stdin=documents
    )


def up(timeout: float = 180.0) -> None:
    """Install Kueue into the running test bed (idempotent: a running manager with the same config stays)."""
    state, source = paths.state_dir(), manifests_dir()
    if not (source / "webhook.yaml").is_file():
        raise paths.MissingBinary(f"Kueue manifests not found in {source}: run `make cluster-bins`")
    binary = paths.binary(NAME)
    _kubectl("apply", "--server-side", "--field-manager=llmtrain-testbed", "-f", str(source / "crds"))
    _kubectl("wait", "--for=condition=Established", "--timeout=60s", "-f", str(source / "crds"))
    _apply([{"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NAMESPACE}}])
    certs = pki.Pki(state / "pki")
    cert_dir = state / "kueue" / "certs"
    cert_dir.mkdir(parents=True, exist_ok=True)
    crt, key = pki.ensure_server_cert(certs, "kueue-webhook", ips=("127.0.0.1",), dns=("localhost",))
    for directory in (cert_dir, METRICS_CERT_DIR):
        directory.mkdir(parents=True, exist_ok=True)
        (directory / "tls.crt").write_bytes(crt.read_bytes())
        (directory / "tls.key").write_bytes(key.read_bytes())
    config_file = state / "kueue" / "config.yaml"
    config_file.write_text(yaml.safe_dump(config(cert_dir), sort_keys=False))
    argv = [str(binary), f"--config={config_file}", f"--kubeconfig={cluster.admin_kubeconfig()}", "--zap-log-level=2"]
    addons.ensure_manager(MANAGER, state, argv, time.monotonic() + timeout)
    manifests = list(yaml.safe_load_all((source / "webhook.yaml").read_text()))
    _apply(webhook_configurations([m for m in manifests if m], certs.ca_crt.read_bytes()))
    _apply_until_admitted(default_queue_objects(), time.monotonic() + 60)
    log.info("kueue %s installed (ClusterQueue %s)", VERSION, CLUSTER_QUEUE)


def _apply_until_admitted(objects: list[dict[str, Any]], deadline: float) -> None:
    """The first writes through a fresh webhook can fail while its certificate is loaded: retry briefly."""
    while True:
        try:
            _apply(objects)
            return
        except subprocess.CalledProcessError as error:
            if time.monotonic() > deadline:
                raise cluster.TestbedError(f"kueue objects not accepted: {error.stderr}") from None
            time.sleep(1)


def down() -> None:
    """Webhook configurations first (so nothing waits on a stopped manager), then the manager."""
    for kind, name in WEBHOOK_NAMES.items():
        _kubectl("delete", kind.lower(), name, "--ignore-not-found")
    if processes.stop(paths.state_dir(), NAME):
        log.info("stopped kueue manager")


def main(argv: list[str] | None = None) -> int:
    return addons.main("python -m llmtrain_testbed.kueue", __doc__.splitlines()[0], up, down, argv)


if __name__ == "__main__":
    sys.exit(main())
