"""The operator against a real API server when things are awkward: job names that are valid but do not fit a
Service or a hostname, and creates the API server rejects (a ResourceQuota) until the cause is lifted."""

from __future__ import annotations

import time

import pytest
from llmtrain_operator.constants import config_map_name, pod_name, rendezvous_host, service_name
from llmtrain_testbed.testing import Cluster, wait_for

from .kube import SLEEP_FOREVER, Kube, OperatorProcess, job_manifest, running_operator

# Each node resolves the rendezvous host (MASTER_ADDR) the way torchrun would, then exits 0; 3 (retryable) if not.
RESOLVE_RENDEZVOUS = """\
import socket
deadline = time.time() + 60
while True:
    try:
        socket.getaddrinfo(os.environ['MASTER_ADDR'], None)
        break
    except OSError:
        if time.time() > deadline:
            sys.exit(3)
        time.sleep(1)
time.sleep(1)
"""


@pytest.mark.parametrize(
    "name",
    ["llama-3.1-8b", "long-" + "x" * 95],  # a dot (no Service may have one); 100 characters (no hostname may)
    ids=["dotted", "100-characters"],
)
def test_any_valid_job_name_gets_valid_children_and_succeeds(kube: Kube, operator: OperatorProcess, name: str):
    assert len(name) <= 253
    kube.create(job_manifest(name, RESOLVE_RENDEZVOUS, nodes=2, runPolicy={"backoffLimit": 0}))
    pods = wait_for(lambda: len(p := kube.pods(name)) == 2 and p, timeout=30, what="2 node pods")

    assert kube.get("service", service_name(name)) is not None
    assert kube.get("configmap", config_map_name(name)) is not None
    for pod in pods:
        rank = int(pod["metadata"]["labels"]["llmtrain.dev/node-rank"])
        assert pod["metadata"]["name"] == pod["spec"]["hostname"] == pod_name(name, rank)
        assert len(pod["spec"]["hostname"]) <= 63 and "." not in pod["spec"]["hostname"]
        assert pod["spec"]["subdomain"] == service_name(name)
        assert pod["spec"]["terminationGracePeriodSeconds"] == 60  # no checkpoint to save on SIGTERM
        env = {e["name"]: e.get("value") for e in pod["spec"]["containers"][0]["env"]}
        assert env["MASTER_ADDR"] == rendezvous_host(name) and env["LLMTRAIN_JOB_NAME"] == name

    status = kube.wait_phase(name, "Succeeded", timeout=120)
    assert status["restarts"] == 0


def test_a_quota_that_forbids_pods_is_reported_and_the_job_proceeds_once_it_is_lifted(
    kube: Kube, operator: OperatorProcess
):
    kube.apply(
        {"apiVersion": "v1", "kind": "ResourceQuota", "metadata": {"name": "no-pods"}, "spec": {"hard": {"pods": "0"}}}
    )
    wait_for(
        lambda: (kube.get("resourcequota", "no-pods").get("status") or {}).get("hard"),
        timeout=30,
        what="the quota's status to be computed",
    )
    kube.create(job_manifest("quota", SLEEP_FOREVER, nodes=1))

    created = wait_for(
        lambda: (c := kube.condition("quota", "Created")).get("reason") == "CreateFailed" and c,
        timeout=30,
        what="Created=False/CreateFailed",
    )
    assert created["status"] == "False" and "exceeded quota" in created["message"]
    warnings = [e for e in kube.events("quota") if e["type"] == "Warning" and e["reason"] == "CreateFailed"]
    assert warnings and "exceeded quota" in warnings[0]["message"]
    assert kube.pods("quota") == [] and kube.status("quota").get("active", 0) == 0  # status counts what exists

    kube.delete("resourcequota", "no-pods")
    status = kube.wait_phase("quota", "Running", timeout=60)
    assert status["active"] == 1 and len(kube.pods("quota")) == 1
    assert kube.condition("quota", "Created")["status"] == "True"


# Attempt 0 serves rank 0's metrics stuck at step 42 (a hung collective); attempt 1 finishes at once.
STUCK_AT_STEP_42 = """
import http.server
if a > 0:
    sys.exit(0)
body = b"# TYPE llmtrain_step gauge\\nllmtrain_step 42\\n"
class Metrics(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200)
        self.end_headers()
        self.wfile.write(body)
http.server.HTTPServer(("0.0.0.0", 9090), Metrics).serve_forever()
"""


def test_a_gang_stuck_at_one_step_is_restarted_as_stalled(kube: Kube, operator: OperatorProcess):
    policy = {"stallTimeoutSeconds": 6, "backoffLimit": 1}
    kube.create(job_manifest("stuck", STUCK_AT_STEP_42, nodes=1, runPolicy=policy))
    status = kube.wait_phase("stuck", "Succeeded", timeout=120)
    assert status["restarts"] == 1  # counted against backoffLimit
    warnings = [e for e in kube.events("stuck") if e["type"] == "Warning" and e["reason"] == "Stalled"]
    assert warnings and "step 42" in warnings[0]["message"]
    restarting = kube.condition("stuck", "Restarting")
    assert restarting["status"] == "False"  # recovered


def test_metrics_that_cannot_be_read_are_reported_not_taken_for_a_stall(kube: Kube, operator: OperatorProcess):
    # serves nothing on the metrics port: the operator cannot tell a stall from a blind spot, and says so
    kube.create(job_manifest("blind", SLEEP_FOREVER, nodes=1, runPolicy={"stallTimeoutSeconds": 4}))
    kube.wait_phase("blind", "Running", timeout=60)
    progressing = wait_for(
        lambda: (c := kube.condition("blind", "Progressing")).get("reason") == "ProgressUnavailable" and c,
        timeout=60,
        what="Progressing=Unknown/ProgressUnavailable",
    )
    assert progressing["status"] == "Unknown" and ":9090/metrics" in progressing["message"]
    assert [e for e in kube.events("blind") if e["reason"] == "ProgressUnavailable"]
    time.sleep(8)  # twice the stall timeout
    status = kube.status("blind")
    assert status["phase"] == "Running" and status["restarts"] == 0


def test_attempts_that_fail_the_same_way_stop_as_a_crash_loop(kube: Kube, operator: OperatorProcess):
    kube.create(job_manifest("crashy", "time.sleep(0.5); sys.exit(3)", nodes=1, runPolicy={"backoffLimit": 5}))
    status = kube.wait_phase("crashy", "Failed", timeout=90)
    failed = kube.condition("crashy", "Failed")
    assert failed["reason"] == "CrashLoop" and "failed with exit code 3" in failed["message"]
    assert status["restarts"] == 1  # the second identical failure ends it: 4 of backoffLimit's 5 left unspent
    assert status["lastFailure"]["count"] == 2


def _lease_holder(kube: Kube) -> str:
    lease = kube.get("lease", "llmtrain-operator") or {}
    return (lease.get("spec") or {}).get("holderIdentity") or ""


def test_two_replicas_elect_one_leader_and_the_standby_takes_over_within_15_seconds(cluster: Cluster, kube: Kube):
    with running_operator(cluster, kube.ns, "--leader-elect") as first:
        first_holder = wait_for(lambda: _lease_holder(kube), timeout=30, what="a leader")
        with running_operator(cluster, kube.ns, "--leader-elect") as second:
            kube.create(job_manifest("ha", SLEEP_FOREVER, nodes=2))
            kube.wait_phase("ha", "Running", timeout=60)
            assert _lease_holder(kube) == first_holder and len(kube.pods("ha")) == 2  # one leader acted, once
            assert f"as {first_holder}" in first.logs()

            first.kill()  # SIGKILL: no release; the standby must wait the lease out
            killed = time.monotonic()
            second_holder = wait_for(
                lambda: (h := _lease_holder(kube)) not in ("", first_holder) and h, timeout=30, what="a new leader"
            )
            assert time.monotonic() - killed <= 16  # 15 s, plus a second of polling
            assert f"as {second_holder}" in second.logs()

            # the new leader acts: a lost node pod restarts the gang
            kube.cluster.kubectl("delete", "pod", "-n", kube.ns, kube.pods("ha")[0]["metadata"]["name"], "--wait=false")
            wait_for(lambda: kube.status("ha").get("attempt") == 1, timeout=60, what="a gang restart by the new leader")
            kube.wait_phase("ha", "Running", timeout=60)


def test_a_leader_that_stops_releases_the_lease_for_the_standby(cluster: Cluster, kube: Kube):
    with running_operator(cluster, kube.ns, "--leader-elect") as first:
        first_holder = wait_for(lambda: _lease_holder(kube), timeout=30, what="a leader")
        with running_operator(cluster, kube.ns, "--leader-elect"):
            time.sleep(3)  # the standby has read the Lease
            first.stop()  # SIGTERM: kopf's cleanup releases the Lease
            stopped = time.monotonic()
            wait_for(lambda: _lease_holder(kube) not in ("", first_holder), timeout=30, what="a new leader")
            assert time.monotonic() - stopped < 10  # well inside the 10 s lease: it was released
