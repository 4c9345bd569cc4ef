"""The operator against a real API server: children, failure policy, suspend, garbage collection, crash recovery."""

from __future__ import annotations

import json

from llmtrain_testbed.testing import Cluster, wait_for

from .kube import SLEEP_FOREVER, Kube, OperatorProcess, job_manifest, running_operator


def _env(pod: dict) -> dict:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in pod["spec"]["containers"][0]["env"]}


def test_job_gets_config_headless_service_and_node_pods_with_dns_fields(kube: Kube, operator: OperatorProcess):
    kube.create(job_manifest("wired", nodes=2))
    pods = wait_for(lambda: len(p := kube.pods("wired")) == 2 and p, timeout=30, what="2 node pods")
    uid = kube.job("wired")["metadata"]["uid"]

    cm = kube.get("configmap", "wired-config")
    assert json.loads(cm["data"]["config.json"])["jobName"] == "wired"
    svc = kube.get("service", "wired")
    assert svc["spec"]["clusterIP"] == "None" and svc["spec"]["publishNotReadyAddresses"] is True
    assert {p["port"] for p in svc["spec"]["ports"]} == {29400, 9090}
    for child in (cm, svc, *pods):
        (owner,) = child["metadata"]["ownerReferences"]
        assert owner["uid"] == uid and owner["controller"] is True

    for pod in sorted(pods, key=lambda p: p["metadata"]["name"]):
        rank = pod["metadata"]["labels"]["llmtrain.dev/node-rank"]
        assert pod["metadata"]["name"] == f"wired-node-{rank}"
        assert pod["spec"]["hostname"] == f"wired-node-{rank}" and pod["spec"]["subdomain"] == "wired"
        assert pod["spec"]["restartPolicy"] == "Never"
        env = _env(pod)
        assert env["MASTER_ADDR"] == "wired-node-0.wired" and env["PET_NODE_RANK"] == rank
        assert env["WORLD_SIZE"] == "2" and env["LLMTRAIN_BACKEND"] == "gloo"

    status = kube.wait_phase("wired", "Running", timeout=60)
    assert status["active"] == 2 and status["restarts"] == 0
    table = kube.cluster.kubectl("get", "ltj", "-n", kube.ns).stdout
    assert table.split()[:9] == ["NAME", "PHASE", "NODES", "STEP", "LOSS", "EVAL", "TOK/S", "RESTARTS", "AGE"]
    assert "Running" in table


def test_retryable_exit_restarts_the_gang_then_succeeds(kube: Kube, operator: OperatorProcess):
    # attempt 0: node 1 exits 3 after a second while node 0 waits; attempt 1: both finish cleanly
    snippet = "if a == 0 and r == 0:\n    time.sleep(3600)\ntime.sleep(1)\nsys.exit(3 if a == 0 else 0)"
    kube.create(job_manifest("retry", snippet, nodes=2, runPolicy={"backoffLimit": 2}))
    status = kube.wait_phase("retry", "Succeeded", timeout=90)
    assert status["restarts"] == 1
    assert {c["type"]: c["status"] for c in status["conditions"]}["Succeeded"] == "True"
    reasons = [e["reason"] for e in kube.events("retry")]
    assert "GangRestart" in reasons and "Succeeded" in reasons
    assert all(p["metadata"]["labels"]["llmtrain.dev/attempt"] == "1" for p in kube.pods("retry"))


def test_exhausted_backoff_fails_the_job(kube: Kube, operator: OperatorProcess):
    kube.create(job_manifest("flaky", "time.sleep(0.5); sys.exit(3)", nodes=1, runPolicy={"backoffLimit": 1}))
    status = kube.wait_phase("flaky", "Failed", timeout=90)
    failed = {c["type"]: c for c in status["conditions"]}["Failed"]
    assert failed["reason"] == "BackoffLimitExceeded" and status["restarts"] == 1


def test_permanent_exit_code_fails_without_restart(kube: Kube, operator: OperatorProcess):
    kube.create(job_manifest("badcfg", "sys.exit(78) if r == 1 else time.sleep(3600)", nodes=2))
    status = kube.wait_phase("badcfg", "Failed", timeout=60)
    assert status["restarts"] == 0
    assert {c["type"]: c for c in status["conditions"]}["Failed"]["reason"] == "InvalidConfig"
    warning = [e for e in kube.events("badcfg") if e["type"] == "Warning"]
    assert warning and warning[0]["reason"] == "InvalidConfig"
    # cleanPodPolicy Running (default): the still-running node 0 is stopped, the failed pod stays for its logs
    wait_for(lambda: [p["metadata"]["name"] for p in kube.pods("badcfg")] == ["badcfg-node-1"], timeout=30)


def test_suspend_deletes_pods_and_resume_recreates_them(kube: Kube, operator: OperatorProcess):
    kube.create(job_manifest("pausable", nodes=2))
    kube.wait_phase("pausable", "Running", timeout=60)
    kube.merge_patch("ltj", "pausable", {"spec": {"runPolicy": {"suspend": True}}})
    kube.wait_phase("pausable", "Suspended", timeout=30)
    wait_for(lambda: kube.pods("pausable") == [], timeout=45, what="pods deleted on suspend")
    assert kube.get("configmap", "pausable-config") is not None  # everything else is kept
    kube.merge_patch("ltj", "pausable", {"spec": {"runPolicy": {"suspend": False}}})
    status = kube.wait_phase("pausable", "Running", timeout=60)
    assert status["restarts"] == 0 and len(kube.pods("pausable")) == 2


def test_steps_raised_while_suspended_reach_the_trainer_on_resume(kube: Kube, operator: OperatorProcess):
    kube.create(job_manifest("longer", nodes=2))
    kube.wait_phase("longer", "Running", timeout=60)
    kube.merge_patch("ltj", "longer", {"spec": {"runPolicy": {"suspend": True}}})
    kube.wait_phase("longer", "Suspended", timeout=30)
    wait_for(lambda: kube.pods("longer") == [], timeout=45, what="pods deleted on suspend")

    kube.merge_patch("ltj", "longer", {"spec": {"training": {"steps": 40}, "runPolicy": {"suspend": False}}})
    kube.wait_phase("longer", "Running", timeout=60)

    config = json.loads(kube.get("configmap", "longer-config")["data"]["config.json"])
    assert config["training"]["steps"] == 40
    assert "ConfigUpdated" in [e["reason"] for e in kube.events("longer")]


def test_deleting_the_job_garbage_collects_its_children(kube: Kube, operator: OperatorProcess):
    kube.create(job_manifest("doomed", nodes=2))
    wait_for(lambda: len(kube.pods("doomed")) == 2, timeout=30, what="pods")
    kube.cluster.kubectl("delete", "ltj", "doomed", "-n", kube.ns, "--wait=false")
    wait_for(
        lambda: (
            not kube.pods("doomed")
            and kube.get("configmap", "doomed-config") is None
            and kube.get("service", "doomed") is None
        ),
        timeout=60,
        what="children garbage-collected",
    )


def test_a_job_recreated_under_the_same_name_runs_its_own_pods(kube: Kube, operator: OperatorProcess):
    """kubectl delete + apply: the deleted job's finished pods and config linger until garbage-collected; the new
    job must neither count them as its own (instantly Succeeded) nor mount the old config."""
    kube.create(job_manifest("again", "time.sleep(0.5)", nodes=2))
    kube.wait_phase("again", "Succeeded", timeout=60)
    old = {p["metadata"]["uid"] for p in kube.pods("again")}
    assert len(old) == 2  # cleanPodPolicy Running keeps finished pods

    kube.cluster.kubectl("delete", "ltj", "again", "-n", kube.ns, "--wait=false")
    kube.create(job_manifest("again", "time.sleep(2)", nodes=2))
    new_uid = kube.job("again")["metadata"]["uid"]
    status = kube.wait_phase("again", "Succeeded", timeout=90)

    pods = kube.pods("again")
    assert len(pods) == 2 and not old & {p["metadata"]["uid"] for p in pods}
    assert all(p["metadata"]["ownerReferences"][0]["uid"] == new_uid for p in pods)
    config = kube.get("configmap", "again-config")
    assert config["metadata"]["ownerReferences"][0]["uid"] == new_uid
    assert status["succeeded"] == 2


def test_killed_operator_is_replaced_without_duplicates(cluster: Cluster, kube: Kube):
    kube.create(job_manifest("phoenix", nodes=4))
    first = OperatorProcess(cluster, kube.ns).start()
    try:
        wait_for(lambda: kube.pods("phoenix"), timeout=30, interval=0.05, what="the first node pod")
        first.kill()  # mid-reconcile: some pods may exist, status may or may not be written
    finally:
        first.stop()
    with running_operator(cluster, kube.ns):
        status = kube.wait_phase("phoenix", "Running", timeout=60)
        names = sorted(p["metadata"]["name"] for p in kube.pods("phoenix"))
        assert names == [f"phoenix-node-{i}" for i in range(4)]
        assert status["restarts"] == 0
        assert len(kube.get("configmaps", selector="llmtrain.dev/job-name=phoenix")["items"]) == 1
        assert len(kube.get("services", selector="llmtrain.dev/job-name=phoenix")["items"]) == 1


def test_semantically_invalid_spec_fails_with_invalid_spec_and_no_children(kube: Kube, operator: OperatorProcess):
    bad = job_manifest("badspec", SLEEP_FOREVER, nodes=1, procsPerNode=4)
    bad["spec"]["model"] = {"dim": 64, "layers": 2, "heads": 6}
    bad["spec"]["parallelism"] = {"tensorParallel": 4}
    bad["spec"]["training"] = {"steps": 10, "globalBatchSize": 4}
    kube.create(bad)
    status = kube.wait_phase("badspec", "Failed", timeout=30)
    failed = {c["type"]: c for c in status["conditions"]}["Failed"]
    assert failed["reason"] == "InvalidSpec" and "spec.parallelism.tensorParallel" in failed["message"]
    events = wait_for(lambda: [e for e in kube.events("badspec") if e["reason"] == "InvalidSpec"], timeout=10)
    assert events[0]["type"] == "Warning" and "spec.parallelism.tensorParallel" in events[0]["message"]
    assert kube.pods("badspec") == [] and kube.get("configmap", "badspec-config") is None


def test_pods_stuck_pending_are_explained(kube: Kube, operator: OperatorProcess):
    job = job_manifest(
        "stuck",
        nodes=1,
        scheduling={"nodeSelector": {"llmtrain.dev/no-such-node": "true"}},
        runPolicy={"startupTimeoutSeconds": 1},
    )
    kube.create(job)

    def explained() -> dict | None:
        running = {c["type"]: c for c in kube.status("stuck").get("conditions", [])}.get("Running")
        return running if running and running["reason"] == "Unschedulable" else None

    running = wait_for(explained, timeout=40, what="an Unschedulable condition")
    assert "node" in running["message"] and kube.status("stuck")["phase"] == "Pending"
    assert [e for e in kube.events("stuck") if e["type"] == "Warning" and e["reason"] == "Unschedulable"]


def test_finished_job_is_deleted_after_its_ttl(kube: Kube, operator: OperatorProcess):
    kube.create(job_manifest("shortlived", "sys.exit(0)", nodes=1, runPolicy={"ttlSecondsAfterFinished": 2}))
    wait_for(lambda: kube.get("ltj", "shortlived") is None, timeout=60, what="the job deleted after its TTL")


METRICS_SERVER = """
import http.server
body = (
    b"# TYPE llmtrain_step gauge\\nllmtrain_step{job=\\"j\\",node_rank=\\"0\\"} 42\\n"
    b"# TYPE llmtrain_total_steps gauge\\nllmtrain_total_steps 100\\n"
    b"# TYPE llmtrain_loss gauge\\nllmtrain_loss 2.5\\n"
    b"# TYPE llmtrain_tokens_per_second gauge\\nllmtrain_tokens_per_second 1234.5\\n"
)
class Metrics(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200)
        self.end_headers()
        self.wfile.write(body)
http.server.HTTPServer(("0.0.0.0", 9090), Metrics).serve_forever()
"""


def test_rank0_metrics_become_status_progress(kube: Kube, operator: OperatorProcess):
    kube.create(job_manifest("progress", METRICS_SERVER, nodes=1))
    progress = wait_for(
        lambda: kube.status("progress").get("progress"), timeout=60, what="status.progress from rank 0's /metrics"
    )
    assert progress.pop("lastStepTime")  # when the operator first saw step 42: the stall clock
    assert progress == {"step": 42, "totalSteps": 100, "loss": 2.5, "tokensPerSecond": 1234.5}
    row = kube.cluster.kubectl("get", "ltj", "progress", "-n", kube.ns, "--no-headers").stdout.split()
    assert row[1:6] == ["Running", "1", "42", "2.5", "1234.5"]
