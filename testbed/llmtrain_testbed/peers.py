"""Kubeflow's training-operator on the test bed: the peer bench/peers compares llmtrain's operator with.

`python -m llmtrain_testbed.peers up` (after `make peers` built it from github.com/kubeflow/training-operator)
installs it into the running test bed: the PyTorchJob CRD from the module's manifests, its namespace, its webhook
certificate Secret, the manager (PyTorchJob only, no leader election) as a host process under its own API user,
and its validating webhook configuration rewritten from a Service reference to a URL on 127.0.0.1. `down` removes
the webhook configuration first, then stops the manager; the test bed's own `down` stops it as well.

Two things differ from a cluster install, both because pods here are host processes:
- the webhook certificate: the manager's rotator (open-policy-agent/cert-controller) keeps a Secret's certificates
  only if its CA is named `training-operator-ca` and the Secret holds that CA's key, and the serving certificate
  must also name 127.0.0.1 for the API server to call it by URL. So the Secret gets a sub-CA of the test bed's CA
  with that name (the test bed CA's own key stays in the state dir) and a serving certificate for both names; the
  rotator finds them valid and only injects the sub-CA into the webhook configuration. It reads the files from a
  fixed path, /tmp/k8s-webhook-server/serving-certs (a volume mount in its Deployment), written here.
- the PyTorchJob init container: the default one runs `nslookup <master>`, which needs a DNS server; the test bed
  resolves names through per-pod hosts files, so `-pytorch-init-container-template-file` swaps in one that waits
  for the same name with `getent hosts` (files, then DNS).
"""

from __future__ import annotations

import base64
import json
import logging
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml

from . import addons, cluster, kubeconfig, paths, pki, processes

log = logging.getLogger("testbed.peers")

VERSION = "v1.8.1"
NAME = "training-operator"
NAMESPACE = "kubeflow"
SCHEMES = ("pytorchjob",)
WEBHOOK_PORT = 19444
HEALTH_PORT = 18091
METRICS_PORT = 18090
MANAGER = addons.Manager(NAME, (WEBHOOK_PORT, HEALTH_PORT, METRICS_PORT), HEALTH_PORT, {"MY_POD_NAMESPACE": NAMESPACE})

# The manager's API identity: its own client certificate, so the audit log tells its requests apart. Cluster-admin
# like the admin user (its ClusterRole in the manifests grants about as much on the kinds it touches).
USER = "llmtrain-bench-training-operator"
# Fixed by the manager (pkg/cert/cert.go): the Secret, the Service name in its DNS name, its CA's name, the webhook
# configuration it injects its CA into, and where it expects the serving files.
SECRET = "training-operator-webhook-cert"
SERVICE_DNS = f"training-operator.{NAMESPACE}.svc"
CA_NAME = "training-operator-ca"
WEBHOOK_CONFIGURATION = "validator.training-operator.kubeflow.org"
CERT_DIR = Path("/tmp/k8s-webhook-server/serving-certs")
MASTER_WAIT_TRIES = 100  # the default -pytorch-init-container-max-tries


def manifests_dir() -> Path:
    return paths.bin_dir().parent / f"{NAME}-{VERSION}"


def crd_files(source: Path, schemes: tuple[str, ...] = SCHEMES) -> list[Path]:
    """The CRDs of the enabled kinds only (the manager watches nothing else)."""
    return [source / "crds" / f"kubeflow.org_{scheme}s.yaml" for scheme in schemes]


def init_container_template() -> str:
    """The manager's Go template for a worker's init container: wait until the master's name resolves, like the
    default's nslookup loop, through the hosts file the test bed writes (getent: files, then DNS). The process
    kubelet ignores images, so the command is all that matters."""
    script = (
        "err=1; for i in $(seq {{.MaxTries}}); do if getent hosts {{.MasterAddr}}; then err=0 && break; fi; "
        "echo waiting for master; sleep 2; done; exit $err"
    )
    container = {
        "name": "init-pytorch",
        "image": "{{.InitContainerImage}}",
        "imagePullPolicy": "IfNotPresent",
        "command": ["sh", "-c", script],
    }
    return yaml.safe_dump([container], sort_keys=False, width=1000)


def webhook_configurations(
    manifests: list[dict[str, Any]], ca_pem: bytes, schemes: tuple[str, ...] = SCHEMES
) -> list[dict[str, Any]]:
    """The module's validating webhook configuration, named as the manager's rotator expects, pointed at
    https://127.0.0.1:<port> and limited to the enabled kinds (the manager serves only their webhooks)."""
    ca_bundle = base64.b64encode(ca_pem).decode()
    suffixes = tuple(f"-v1-{scheme}" for scheme in schemes)
    result = []
    for manifest in manifests:
        if manifest.get("kind") != "ValidatingWebhookConfiguration":
            continue
        hooks = []
        for hook in manifest.get("webhooks", []):
            path = hook["clientConfig"]["service"]["path"]
            if path.endswith(suffixes):
                url = f"https://127.0.0.1:{WEBHOOK_PORT}{path}"
                hooks.append({**hook, "clientConfig": {"url": url, "caBundle": ca_bundle}})
        result.append({**manifest, "metadata": {"name": WEBHOOK_CONFIGURATION}, "webhooks": hooks})
    return result


def cert_secret(ca_crt: bytes, ca_key: bytes, tls_crt: bytes, tls_key: bytes) -> dict[str, Any]:
    """The Secret the rotator reads (its key names: ca.crt, ca.key, tls.crt, tls.key)."""
    data = {"ca.crt": ca_crt, "ca.key": ca_key, "tls.crt": tls_crt, "tls.key": tls_key}
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": SECRET, "namespace": NAMESPACE},
        "type": "Opaque",
        "data": {k: base64.b64encode(v).decode() for k, v in data.items()},
    }


def manager_argv(binary: Path, kubeconfig_file: Path, template: Path) -> list[str]:
    return [
        str(binary),
        f"--kubeconfig={kubeconfig_file}",
        f"--metrics-bind-address=127.0.0.1:{METRICS_PORT}",
        f"--health-probe-bind-address=127.0.0.1:{HEALTH_PORT}",
        f"--webhook-server-port={WEBHOOK_PORT}",
        *(f"--enable-scheme={scheme}" for scheme in SCHEMES),
        f"--pytorch-init-container-template-file={template}",
        f"--pytorch-init-container-max-tries={MASTER_WAIT_TRIES}",
    ]


# -- the running test bed --------------------------------------------------------------------------------------------


def _kubectl(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    argv = [str(paths.binary("kubectl")), f"--kubeconfig={cluster.admin_kubeconfig()}", *args]
    return subprocess.run(argv, input=stdin, capture_output=True, text=True, timeout=120, check=True)


def _apply(objects: list[dict[str, Any]]) -> None:
    documents = "\n---\n".join(json.dumps(obj) for obj in objects)
    _kubectl(
        "apply", "--server-side", "--force-conflicts", "--field-manager=llmtrain-testbed", "-f", "-", stdin=documents
    )


def _certificates(certs: pki.Pki) -> dict[str, Any]:
    """The sub-CA, the serving certificate it signs, and the Secret holding both."""
    ca_crt, ca_key = pki.ensure_sub_ca(certs, CA_NAME, dns=(CA_NAME,))
    crt, key = pki.ensure_server_cert(
        certs, "training-operator-webhook", ips=("127.0.0.1",), dns=(SERVICE_DNS, "localhost"), issuer=CA_NAME
    )
    CERT_DIR.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(crt, CERT_DIR / "tls.crt")
    shutil.copyfile(key, CERT_DIR / "tls.key")
    return cert_secret(ca_crt.read_bytes(), ca_key.read_bytes(), crt.read_bytes(), key.read_bytes())


def up(timeout: float = 180.0) -> None:
    """Install the training-operator into the running test bed (idempotent: a manager with the same argv stays)."""
    state, source = paths.state_dir(), manifests_dir()
    if not (source / "webhook.yaml").is_file():
        raise paths.MissingBinary(f"training-operator manifests not found in {source}: run `make peers`")
    binary = paths.binary(NAME)
    crds = [f"--filename={f}" for f in crd_files(source)]
    _kubectl("apply", "--server-side", "--field-manager=llmtrain-testbed", *crds)
    wait_established(crds, time.monotonic() + 60)
    _apply([{"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NAMESPACE}}])
    certs = pki.Pki(state / "pki")
    secret = _certificates(certs)
    _apply([secret])
    manifests = [m for m in yaml.safe_load_all((source / "webhook.yaml").read_text()) if m]
    ca_pem = base64.b64decode(secret["data"]["ca.crt"])
    _apply(webhook_configurations(manifests, ca_pem))
    work = state / NAME
    work.mkdir(parents=True, exist_ok=True)
    client_crt, _ = pki.ensure_client_cert(certs, "training-operator-client", USER, "system:masters")
    config = kubeconfig.write(work / "kubeconfig", certs, client_crt.stem, USER)
    template = work / "init-container.yaml"
    template.write_text(init_container_template())
    addons.ensure_manager(MANAGER, state, manager_argv(binary, config, template), time.monotonic() + timeout)
    log.info("training-operator %s installed (schemes: %s)", VERSION, ", ".join(SCHEMES))


def wait_established(crds: list[str], deadline: float) -> None:
    """`kubectl wait` errors out (not waits) while a fresh CRD has no status.conditions yet: retry it."""
    while True:
        try:
            _kubectl("wait", "--for=condition=Established", "--timeout=30s", *crds)
            return
        except subprocess.CalledProcessError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)


def down() -> None:
    """Webhook configuration first (so nothing waits on a stopped manager), then the manager and its cert files."""
    _kubectl("delete", "validatingwebhookconfiguration", WEBHOOK_CONFIGURATION, "--ignore-not-found")
    if processes.stop(paths.state_dir(), NAME):
        log.info("stopped training-operator manager")
    for name in ("tls.crt", "tls.key"):
        (CERT_DIR / name).unlink(missing_ok=True)


def main(argv: list[str] | None = None) -> int:
    return addons.main("python -m llmtrain_testbed.peers", __doc__.splitlines()[0], up, down, argv)


if __name__ == "__main__":
    sys.exit(main())
