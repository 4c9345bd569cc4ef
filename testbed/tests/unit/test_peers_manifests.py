"""How the test bed installs Kubeflow's training-operator: its webhook by URL under the name its certificate rotator
looks for, a certificate Secret the rotator keeps as it is, and an init container that needs no DNS server."""

from __future__ import annotations

import base64
import ipaddress
from pathlib import Path

import yaml
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID
from llmtrain_testbed import peers, pki


def _hook(kind: str) -> dict:
    path = f"/validate-kubeflow-org-v1-{kind}"
    service = {"name": "webhook-service", "namespace": "system", "path": path}
    return {"name": f"validator.{kind}.training-operator.kubeflow.org", "clientConfig": {"service": service}}


# The shape of manifests/base/webhook/manifests.yaml in the module.
MANIFESTS = [
    {
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "ValidatingWebhookConfiguration",
        "metadata": {"name": "validating-webhook-configuration"},
        "webhooks": [_hook(kind) for kind in ("mxjob", "paddlejob", "pytorchjob", "tfjob", "xgboostjob")],
    }
]


def test_the_webhook_configuration_is_named_as_the_rotator_expects_and_points_at_loopback():
    (config,) = peers.webhook_configurations(MANIFESTS, b"CA")
    assert config["metadata"] == {"name": peers.WEBHOOK_CONFIGURATION}
    (hook,) = config["webhooks"]
    assert hook["clientConfig"] == {
        "url": f"https://127.0.0.1:{peers.WEBHOOK_PORT}/validate-kubeflow-org-v1-pytorchjob",
        "caBundle": base64.b64encode(b"CA").decode(),
    }


def test_only_the_enabled_kinds_keep_a_webhook_so_other_kinds_never_wait_on_an_unserved_path():
    (config,) = peers.webhook_configurations(MANIFESTS, b"CA", schemes=("pytorchjob", "tfjob"))
    assert [hook["name"] for hook in config["webhooks"]] == [
        "validator.pytorchjob.training-operator.kubeflow.org",
        "validator.tfjob.training-operator.kubeflow.org",
    ]


def _render(template: str, master: str, tries: int) -> list[dict]:
    """What the manager's Go template makes of it."""
    text = template.replace("{{.MasterAddr}}", master).replace("{{.MaxTries}}", str(tries))
    return yaml.safe_load(text.replace("{{.InitContainerImage}}", "alpine:3.10"))


def test_the_init_container_waits_for_the_master_through_the_hosts_file_not_nslookup():
    template = peers.init_container_template()
    (container,) = _render(template, "job-master-0", 100)
    script = container["command"][-1]
    assert container["command"][:2] == ["sh", "-c"]
    assert "getent hosts job-master-0" in script and "seq 100" in script and "exit $err" in script
    assert "nslookup" not in template and container["image"] == "alpine:3.10"


def test_the_cert_secret_holds_what_the_rotator_reads():
    secret = peers.cert_secret(b"cacrt", b"cakey", b"crt", b"key")
    assert secret["metadata"] == {"name": "training-operator-webhook-cert", "namespace": "kubeflow"}
    decoded = {k: base64.b64decode(v) for k, v in secret["data"].items()}
    assert decoded == {"ca.crt": b"cacrt", "ca.key": b"cakey", "tls.crt": b"crt", "tls.key": b"key"}


def test_the_manager_binds_loopback_serves_pytorchjob_only_and_uses_the_template():
    argv = peers.manager_argv(Path("/bin/to"), Path("/k/config"), Path("/t/init.yaml"))
    assert argv[0] == "/bin/to" and "--kubeconfig=/k/config" in argv
    assert "--enable-scheme=pytorchjob" in argv
    assert "--pytorch-init-container-template-file=/t/init.yaml" in argv
    assert f"--health-probe-bind-address=127.0.0.1:{peers.HEALTH_PORT}" in argv
    assert peers.crd_files(Path("/m")) == [Path("/m/crds/kubeflow.org_pytorchjobs.yaml")]


def test_the_sub_ca_passes_the_rotators_checks_and_chains_to_the_test_bed_ca(tmp_path):
    certs = pki.ensure(tmp_path)
    ca_crt, ca_key = pki.ensure_sub_ca(certs, peers.CA_NAME, dns=(peers.CA_NAME,))
    crt, _ = pki.ensure_server_cert(
        certs, "webhook", ips=("127.0.0.1",), dns=(peers.SERVICE_DNS,), issuer=peers.CA_NAME
    )
    root = x509.load_pem_x509_certificate(certs.ca_crt.read_bytes())
    sub = x509.load_pem_x509_certificate(ca_crt.read_bytes())
    leaf = x509.load_pem_x509_certificate(crt.read_bytes())
    sub.verify_directly_issued_by(root)
    leaf.verify_directly_issued_by(sub)
    assert sub.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert sub.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(
        x509.DNSName
    ) == [peers.CA_NAME]
    assert ca_key.read_text().startswith("-----BEGIN RSA PRIVATE KEY-----")  # PKCS#1: what the rotator parses
    sans = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sans.get_values_for_type(x509.DNSName) == [peers.SERVICE_DNS]
    assert sans.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("127.0.0.1")]
    usages = leaf.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(usages) == [ExtendedKeyUsageOID.SERVER_AUTH]


def test_a_client_cert_names_its_user_and_group(tmp_path):
    certs = pki.ensure(tmp_path)
    crt, _ = pki.ensure_client_cert(certs, "bench-client", "bench-user", "system:masters")
    subject = x509.load_pem_x509_certificate(crt.read_bytes()).subject.rfc4514_string()
    assert subject == "CN=bench-user,O=system:masters"
