"""Pods on the test bed behave as on a cluster: scheduling on GPU nodes, DNS names, exit codes, restarts, logs,
service-account tokens under real RBAC, volumes, env resolution and graceful deletion.

Containers are plain `python -c` scripts; the image is a real one so the same tests run on kind or a real cluster.
Checks that look at the host (processes, host paths) run only on the test bed.
"""

from __future__ import annotations

import json
import os
import textwrap
import time
from pathlib import Path

import pytest
from llmtrain_testbed.kubelet.api import Api, ApiError
from llmtrain_testbed.testing import Cluster, wait_for

IMAGE = "python:3.11-slim"


@pytest.fixture(scope="module")
def api(cluster: Cluster) -> Api:
    return Api(api_client=cluster.api_client)


def pod_manifest(name: str, script: str, *, restart: str = "Never", **spec: object) -> dict:
    container = {"name": "main", "image": IMAGE, "command": ["python", "-c", textwrap.dedent(script)]}
    container.update(spec.pop("container", {}))  # type: ignore[arg-type]
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name},
        "spec": {"restartPolicy": restart, "terminationGracePeriodSeconds": 5, "containers": [container], **spec},
    }


def create(api: Api, namespace: str, obj: dict) -> dict:
    plural = {"Pod": "pods", "Service": "services", "ConfigMap": "configmaps", "ServiceAccount": "serviceaccounts"}
    if obj["kind"] in plural:
        return api.create(f"/api/v1/namespaces/{namespace}/{plural[obj['kind']]}", obj)
    if obj["kind"] == "PersistentVolumeClaim":
        return api.create(f"/api/v1/namespaces/{namespace}/persistentvolumeclaims", obj)
    group = {"Role": "roles", "RoleBinding": "rolebindings"}[obj["kind"]]
    return api.create(f"/apis/rbac.authorization.k8s.io/v1/namespaces/{namespace}/{group}", obj)


def get_pod(api: Api, namespace: str, name: str) -> dict:
    return api.get(f"/api/v1/namespaces/{namespace}/pods/{name}")


def wait_phase(api: Api, namespace: str, name: str, phases: tuple[str, ...], timeout: float = 60) -> dict:
    def reached() -> dict | None:
        pod = get_pod(api, namespace, name)
        return pod if pod.get("status", {}).get("phase") in phases else None

    return wait_for(reached, timeout=timeout, what=f"pod {namespace}/{name} in {phases}")


def logs(cluster: Cluster, namespace: str, name: str) -> str:
    return cluster.kubectl("logs", "-n", namespace, name).stdout


def condition(pod: dict, ctype: str) -> dict:
    return next((c for c in pod.get("status", {}).get("conditions", []) if c["type"] == ctype), {})


def require_eight_gpu_nodes(api: Api) -> None:
    gpus = [int(n["status"].get("allocatable", {}).get("nvidia.com/gpu", 0)) for n in api.get("/api/v1/nodes")["items"]]
    if max(gpus, default=0) < 8:
        pytest.skip("no node offers 8 nvidia.com/gpu")


def only_on_testbed(cluster: Cluster) -> None:
    if not cluster.is_testbed:
        pytest.skip("looks at the test bed's host (processes, host paths)")


# ----- nodes and scheduling -----


def test_nodes_are_ready_with_gpu_capacity_and_labels(api: Api, cluster: Cluster):
    only_on_testbed(cluster)
    nodes = {n["metadata"]["name"]: n for n in api.get("/api/v1/nodes")["items"]}
    assert {"llmtrain-node-0", "llmtrain-node-1"} <= set(nodes)
    for node in nodes.values():
        assert condition(node, "Ready")["status"] == "True"
        assert node["status"]["allocatable"]["nvidia.com/gpu"] == "8"
        assert node["metadata"]["labels"]["nvidia.com/gpu.product"] == "NVIDIA-H200"
        assert "nvidia.com/gpu.memory" in node["metadata"]["labels"]
    lease = api.get("/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases/llmtrain-node-0")
    assert lease["spec"]["holderIdentity"] == "llmtrain-node-0"


def test_a_pod_asking_for_eight_gpus_is_bound_by_the_scheduler_and_runs(api: Api, namespace: str):
    require_eight_gpu_nodes(api)
    manifest = pod_manifest("gpu8", "print('trained')", container={"resources": {"limits": {"nvidia.com/gpu": 8}}})
    create(api, namespace, manifest)
    pod = wait_phase(api, namespace, "gpu8", ("Succeeded", "Failed"))
    assert pod["status"]["phase"] == "Succeeded"
    assert pod["spec"]["nodeName"]
    assert condition(pod, "PodScheduled")["status"] == "True"


def test_a_pod_asking_for_a_hundred_gpus_stays_pending_unschedulable(api: Api, namespace: str):
    create(api, namespace, pod_manifest("gpu100", "pass", container={"resources": {"limits": {"nvidia.com/gpu": 100}}}))

    def unschedulable() -> dict:
        return condition(get_pod(api, namespace, "gpu100"), "PodScheduled")

    cond = wait_for(lambda: unschedulable().get("reason") == "Unschedulable" and unschedulable(), timeout=30)
    assert cond["status"] == "False" and "nvidia.com/gpu" in cond["message"]
    assert get_pod(api, namespace, "gpu100")["status"]["phase"] == "Pending"


# ----- network and DNS -----

PEER_SCRIPT = """
    import os, socket, sys, threading, time
    me, peer = os.environ["ME"], os.environ["PEER"]
    server = socket.socket()
    server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    server.bind(("0.0.0.0", 9090))
    server.listen()
    def answer():
        conn, _ = server.accept()
        conn.sendall(b"hello from " + me.encode())
        conn.close()
    threading.Thread(target=answer, daemon=True).start()
    for name in (os.environ["PEER_FQDN"], peer):
        for _ in range(120):
            try:
                ip = socket.gethostbyname(name)
                break
            except OSError:
                time.sleep(0.25)
        else:
            sys.exit(f"cannot resolve {name}")
        print(f"resolved {name} -> {ip}", flush=True)
    for _ in range(120):
        try:
            with socket.create_connection((os.environ["PEER_FQDN"], 9090), timeout=2) as s:
                print("received:", s.recv(100).decode(), flush=True)
                break
        except OSError:
            time.sleep(0.25)
    else:
        sys.exit("no answer from the peer")
    time.sleep(3)  # let the peer connect to us too
"""


def test_two_pods_resolve_each_other_by_fqdn_and_exchange_bytes(api: Api, cluster: Cluster, namespace: str):
    create(
        api,
        namespace,
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": "job"},
            "spec": {
                "clusterIP": "None",
                "publishNotReadyAddresses": True,
                "selector": {"job": "job"},
                "ports": [{"name": "p", "port": 9090}],
            },
        },
    )
    for me, peer in (("job-node-0", "job-node-1"), ("job-node-1", "job-node-0")):
        manifest = pod_manifest(
            me,
            PEER_SCRIPT,
            hostname=me,
            subdomain="job",
            container={
                "env": [
                    {"name": "ME", "value": me},
                    {"name": "PEER", "value": f"{peer}.job"},
                    {"name": "PEER_FQDN", "value": f"{peer}.job.{namespace}.svc.cluster.local"},
                ]
            },
        )
        manifest["metadata"]["labels"] = {"job": "job"}
        create(api, namespace, manifest)
    for me, peer in (("job-node-0", "job-node-1"), ("job-node-1", "job-node-0")):
        pod = wait_phase(api, namespace, me, ("Succeeded", "Failed"), timeout=90)
        output = logs(cluster, namespace, me)
        assert pod["status"]["phase"] == "Succeeded", output
        assert f"received: hello from {peer}" in output
    ips = {get_pod(api, namespace, n)["status"]["podIP"] for n in ("job-node-0", "job-node-1")}
    assert len(ips) == 2


# ----- exit codes, restarts, logs -----


def test_a_pod_exiting_zero_is_succeeded_and_kubectl_logs_returns_its_output(
    api: Api, cluster: Cluster, namespace: str
):
    create(api, namespace, pod_manifest("ok", "print('hello from the pod')"))
    pod = wait_phase(api, namespace, "ok", ("Succeeded", "Failed"))
    assert pod["status"]["phase"] == "Succeeded"
    terminated = pod["status"]["containerStatuses"][0]["state"]["terminated"]
    assert terminated["exitCode"] == 0 and terminated["reason"] == "Completed"
    assert "hello from the pod" in logs(cluster, namespace, "ok")


def test_a_pod_exiting_3_with_restart_never_is_failed_with_exit_code_and_termination_message(api: Api, namespace: str):
    script = """
        import sys
        open("/dev/termination-log", "w").write('{"llmtrain": true, "exitCode": 78, "reason": "InvalidConfig"}')
        sys.exit(3)
    """
    create(api, namespace, pod_manifest("fail", script))
    pod = wait_phase(api, namespace, "fail", ("Succeeded", "Failed"))
    assert pod["status"]["phase"] == "Failed"
    terminated = pod["status"]["containerStatuses"][0]["state"]["terminated"]
    assert terminated["exitCode"] == 3 and terminated["reason"] == "Error"
    assert json.loads(terminated["message"])["reason"] == "InvalidConfig"


def test_restart_policy_on_failure_restarts_a_failing_container(api: Api, namespace: str):
    create(api, namespace, pod_manifest("crashy", "import sys; sys.exit(1)", restart="OnFailure"))

    def restarts() -> int:
        statuses = get_pod(api, namespace, "crashy").get("status", {}).get("containerStatuses") or [{}]
        return statuses[0].get("restartCount", 0)

    wait_for(lambda: restarts() >= 2, timeout=60, what="restartCount >= 2")
    pod = get_pod(api, namespace, "crashy")
    assert pod["status"]["phase"] in ("Running", "Pending")
    assert pod["status"]["containerStatuses"][0]["lastState"]["terminated"]["exitCode"] == 1


def test_readiness_follows_exec_and_http_probes(api: Api, namespace: str):
    web = {
        "name": "web",
        "image": IMAGE,
        "command": ["python", "-m", "http.server", "8080"],
        "readinessProbe": {"httpGet": {"path": "/", "port": 8080}, "periodSeconds": 1},
    }
    worker = {
        "name": "worker",
        "image": IMAGE,
        "command": ["sh", "-c", "sleep 2; touch /tmp/ready; sleep 600"],
        "readinessProbe": {"exec": {"command": ["test", "-f", "/tmp/ready"]}, "periodSeconds": 1},
    }
    manifest = pod_manifest("probed", "pass", restart="Always")
    manifest["spec"]["containers"] = [web, worker]
    create(api, namespace, manifest)
    pod = wait_for(
        lambda: (p := get_pod(api, namespace, "probed")) and condition(p, "Ready").get("status") == "True" and p,
        timeout=60,
        what="pod Ready",
    )
    assert all(s["ready"] for s in pod["status"]["containerStatuses"])


# ----- service accounts and RBAC -----

API_CALL = """
    import os, ssl, urllib.error, urllib.request
    sa = "/var/run/secrets/kubernetes.io/serviceaccount"
    if not os.path.exists(sa + "/token"):
        print("no token"); raise SystemExit(0)
    ns = open(sa + "/namespace").read()
    url = f"https://{os.environ['KUBERNETES_SERVICE_HOST']}:{os.environ['KUBERNETES_SERVICE_PORT']}"
    req = urllib.request.Request(f"{url}/api/v1/namespaces/{ns}/pods")
    req.add_header("Authorization", "Bearer " + open(sa + "/token").read())
    ctx = ssl.create_default_context(cafile=sa + "/ca.crt")
    try:
        print("status", urllib.request.urlopen(req, context=ctx, timeout=10).status)
    except urllib.error.HTTPError as e:
        print("status", e.code)
"""


def test_the_service_account_token_lists_pods_only_when_a_role_allows_it(api: Api, cluster: Cluster, namespace: str):
    create(api, namespace, {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "reader"}})
    create(
        api,
        namespace,
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "Role",
            "metadata": {"name": "pod-reader"},
            "rules": [{"apiGroups": [""], "resources": ["pods"], "verbs": ["list"]}],
        },
    )
    create(
        api,
        namespace,
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "RoleBinding",
            "metadata": {"name": "reader"},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "pod-reader"},
            "subjects": [{"kind": "ServiceAccount", "name": "reader", "namespace": namespace}],
        },
    )
    create(api, namespace, pod_manifest("allowed", API_CALL, serviceAccountName="reader"))
    create(api, namespace, pod_manifest("denied", API_CALL))
    create(api, namespace, pod_manifest("tokenless", API_CALL, automountServiceAccountToken=False))
    expected = {"allowed": "status 200", "denied": "status 403", "tokenless": "no token"}
    for name, line in expected.items():
        pod = wait_phase(api, namespace, name, ("Succeeded", "Failed"), timeout=60)
        output = logs(cluster, namespace, name)
        assert pod["status"]["phase"] == "Succeeded", output
        assert line in output, f"{name}: {output}"


# ----- volumes and env -----


def test_a_pvc_directory_keeps_a_file_across_a_container_restart(api: Api, cluster: Cluster, namespace: str):
    create(
        api,
        namespace,
        {
            "apiVersion": "v1",
            "kind": "PersistentVolumeClaim",
            "metadata": {"name": "ckpt"},
            "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}},
        },
    )
    claim = wait_for(
        lambda: (
            (c := api.get(f"/api/v1/namespaces/{namespace}/persistentvolumeclaims/ckpt"))["status"].get("phase")
            == "Bound"
            and c
        ),
        timeout=30,
        what="the claim to be bound (a provisioner serves the default StorageClass)",
    )
    assert claim["spec"]["volumeName"]
    script = """
        import os, sys
        marker = "/ckpt/step"
        if os.path.exists(marker):
            print("resumed from", open(marker).read()); sys.exit(0)
        open(marker, "w").write("100"); sys.exit(1)
    """
    manifest = pod_manifest(
        "resumer",
        script,
        restart="OnFailure",
        volumes=[{"name": "ckpt", "persistentVolumeClaim": {"claimName": "ckpt"}}],
        container={"volumeMounts": [{"name": "ckpt", "mountPath": "/ckpt"}]},
    )
    create(api, namespace, manifest)
    pod = wait_phase(api, namespace, "resumer", ("Succeeded", "Failed"), timeout=90)
    assert pod["status"]["phase"] == "Succeeded"
    assert pod["status"]["containerStatuses"][0]["restartCount"] == 1
    assert "resumed from 100" in logs(cluster, namespace, "resumer")


def test_env_value_from_resolves_pod_ip_node_name_and_config_map_keys(api: Api, cluster: Cluster, namespace: str):
    create(
        api, namespace, {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "cfg"}, "data": {"lr": "3e-4"}}
    )
    script = "import os; print(*(f'{k}={os.environ[k]}' for k in ('IP', 'NODE', 'LR', 'NAME')), sep='\\n')"
    env = [
        {"name": "IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
        {"name": "NODE", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}},
        {"name": "LR", "valueFrom": {"configMapKeyRef": {"name": "cfg", "key": "lr"}}},
        {"name": "NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
    ]
    create(api, namespace, pod_manifest("envy", script, container={"env": env}))
    pod = wait_phase(api, namespace, "envy", ("Succeeded", "Failed"))
    lines = set(logs(cluster, namespace, "envy").split())
    assert f"IP={pod['status']['podIP']}" in lines
    assert f"NODE={pod['spec']['nodeName']}" in lines
    assert {"LR=3e-4", "NAME=envy"} <= lines


def test_configmap_volume_appears_at_a_mount_path_missing_on_the_host(api: Api, cluster: Cluster, namespace: str):
    only_on_testbed(cluster)
    assert not Path("/etc/llmtrain-test").exists()
    create(api, namespace, {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "cfg"}, "data": {"a": "1"}})
    manifest = pod_manifest(
        "mounted",
        "print(open('/etc/llmtrain-test/config.json').read())",
        volumes=[{"name": "cfg", "configMap": {"name": "cfg", "items": [{"key": "a", "path": "config.json"}]}}],
        container={"volumeMounts": [{"name": "cfg", "mountPath": "/etc/llmtrain-test", "readOnly": True}]},
    )
    create(api, namespace, manifest)
    pod = wait_phase(api, namespace, "mounted", ("Succeeded", "Failed"))
    assert pod["status"]["phase"] == "Succeeded"
    assert logs(cluster, namespace, "mounted").strip() == "1"
    assert not Path("/etc/llmtrain-test").exists()  # made inside the pod's mount namespace only


def test_a_volume_over_the_repos_parent_does_not_hide_the_image(api: Api, cluster: Cluster, namespace: str):
    """The repo plays the image's part: an emptyDir at /tmp must not hide a repo cloned under /tmp (as CI does)."""
    only_on_testbed(cluster)
    from llmtrain_testbed.paths import REPO_ROOT

    manifest = pod_manifest(
        "shadowed",
        "import llmtrain_operator, llmtrain_trainer, os, sys; print(sorted(os.listdir(sys.argv[1])))",
        volumes=[{"name": "scratch", "emptyDir": {}}],
        container={
            "args": [str(REPO_ROOT.parent)],
            "volumeMounts": [{"name": "scratch", "mountPath": str(REPO_ROOT.parent)}],
        },
    )
    create(api, namespace, manifest)
    pod = wait_phase(api, namespace, "shadowed", ("Succeeded", "Failed"))
    assert pod["status"]["phase"] == "Succeeded", logs(cluster, namespace, "shadowed")
    # The emptyDir is still what the pod sees at the parent: only the image paths were put back on top of it.
    assert REPO_ROOT.name in logs(cluster, namespace, "shadowed")


# ----- deletion -----


def test_deleting_a_pod_sigterms_its_processes_and_leaves_none(
    api: Api, cluster: Cluster, namespace: str, tmp_path: Path
):
    only_on_testbed(cluster)
    script = "trap 'echo terminated > /out/signal; exit 0' TERM; sleep 6001 & sleep 6002 & wait"
    manifest = pod_manifest(
        "victim",
        "",
        restart="Always",
        volumes=[{"name": "out", "hostPath": {"path": str(tmp_path), "type": "Directory"}}],
        container={"command": ["sh", "-c", script], "volumeMounts": [{"name": "out", "mountPath": "/out"}]},
    )
    create(api, namespace, manifest)
    pod = wait_phase(api, namespace, "victim", ("Running",))
    uid = pod["metadata"]["uid"]
    time.sleep(0.5)  # let the shell install its trap
    api.delete(f"/api/v1/namespaces/{namespace}/pods/victim")

    def gone() -> bool:
        try:
            get_pod(api, namespace, "victim")
        except ApiError as exc:
            return exc.status == 404
        return False

    wait_for(gone, timeout=30, what="the pod's final deletion")
    assert (tmp_path / "signal").read_text().strip() == "terminated"
    assert not Path(f"/run/netns/llmt-{uid}").exists()
    leftovers = []
    for entry in os.listdir("/proc"):
        try:
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes()
        except OSError:
            continue
        if cmdline in (b"sleep\x006001\x00", b"sleep\x006002\x00"):
            leftovers.append(entry)
    assert not leftovers
