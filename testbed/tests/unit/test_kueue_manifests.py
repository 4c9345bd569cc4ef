"""How the test bed installs Kueue: webhooks by URL, only the ones the pod-only manager serves, pods scoped."""

from __future__ import annotations

from pathlib import Path

from llmtrain_testbed import kueue


def _hook(path: str) -> dict:
    return {"name": path, "clientConfig": {"service": {"name": "webhook-service", "namespace": "system", "path": path}}}


MANIFESTS = [
    {
        "kind": "MutatingWebhookConfiguration",
        "metadata": {"name": "mutating-webhook-configuration"},
        "webhooks": [
            _hook("/mutate--v1-pod"),
            _hook("/mutate-apps-v1-deployment"),
            _hook("/mutate-kueue-x-k8s-io-v1beta2-clusterqueue"),
        ],
    },
    {"kind": "ValidatingWebhookConfiguration", "metadata": {"name": "x"}, "webhooks": [_hook("/validate--v1-pod")]},
]


def test_webhooks_point_at_the_host_process_with_the_test_beds_ca():
    configs = kueue.webhook_configurations(MANIFESTS, b"CA")
    urls = [hook["clientConfig"]["url"] for config in configs for hook in config["webhooks"]]
    assert all(url.startswith(f"https://127.0.0.1:{kueue.WEBHOOK_PORT}/") for url in urls)
    assert all(hook["clientConfig"]["caBundle"] == "Q0E=" for config in configs for hook in config["webhooks"])


def test_only_served_webhooks_are_installed_so_deployments_never_depend_on_kueue():
    mutating = kueue.webhook_configurations(MANIFESTS, b"CA")[0]
    assert [hook["name"] for hook in mutating["webhooks"]] == [
        "/mutate--v1-pod",
        "/mutate-kueue-x-k8s-io-v1beta2-clusterqueue",
    ]


def test_pod_webhooks_see_only_pods_with_a_queue_name():
    configs = kueue.webhook_configurations(MANIFESTS, b"CA")
    pod_hooks = [hook for config in configs for hook in config["webhooks"] if hook["name"].endswith("--v1-pod")]
    assert len(pod_hooks) == 2
    for hook in pod_hooks:
        assert hook["objectSelector"] == {"matchExpressions": [{"key": kueue.QUEUE_LABEL, "operator": "Exists"}]}


def test_the_manager_runs_the_pod_integration_only_without_leader_election_or_its_own_certificates():
    config = kueue.config(cert_dir=Path("/certs"))
    assert config["integrations"] == {"frameworks": ["pod"]}
    assert config["leaderElection"] == {"leaderElect": False}
    assert config["internalCertManagement"] == {"enable": False}
    assert config["manageJobsWithoutQueueName"] is False
