"""llmtrain's operator and Kubeflow's training-operator v1.8.1, side by side on the test bed, in one run.

    make bench-peers   # builds the training-operator once (make peers), then runs this

or by hand, the test bed's binaries and the training-operator built:

    PYTHONPATH=testbed:contract:operator:trainer_image python bench/peers/compare.py [--out peers.json]

It brings the test bed up with the API server's audit log (restarting a running API server that has none), installs
the training-operator (llmtrain_testbed.peers) and runs our operator as a process, cluster-wide, each under its own
API user. Then, one after the other:
- scale (--repeats times, alternating): a 64-node job (an LLMTrainingJob with nodes=64; a PyTorchJob with 1 Master
  + 63 Workers), pods pinned to a node that does not exist so they stay Pending: time from the job's create to all
  64 pods seen by a watch started before it, and the operator's API writes until 5 s after that. The median run.
- fault: a 2-node job running examples/custom/ddp/train_ddp.py with the same arguments, checkpointing to a claim
  (our operator launches it through torchrun; the PyTorchJob's command is `python -m torch.distributed.run` reading
  the PET_* variables the training-operator sets). Once rank 0 logged step 20, one worker process on node rank 1 is
  SIGKILLed. Recorded: what the operator did (pods recreated, containers restarted in place, its restart count), the
  step the script resumed from, the time from the kill to that resume, the final state and why. Run with the same
  backoffLimit (2) for both, then for the training-operator with 6 (it counts every container restart).

Writes are counted the same way for both: at the API server, from its audit log (llmtrain_testbed.audit), by the
client certificate user each operator runs as (create/update/patch/delete, any response code, Events apart). Prints
a Markdown table; writes JSON with every number and the per verb/resource/code breakdown.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(REPO / p) for p in ("testbed", "contract", "operator", "trainer_image", "bench/peers")]

import manifests  # noqa: E402
from kubernetes import client, config, watch  # noqa: E402
from llmtrain_testbed import audit, cluster, kubeconfig, paths, peers, pki  # noqa: E402

LLMTRAIN_USER = "llmtrain-bench-llmtrain-operator"
SETTLE_S = 5.0
RESUMED = re.compile(r"resumed from step (\d+)")


@dataclass(frozen=True)
class Operator:
    """How the bench talks to one operator's jobs."""

    label: str
    user: str  # its API user (audit log)
    group: str
    version: str
    plural: str
    pod_label: str  # label every pod of a job carries, = the job's name
    container: str  # the training container's name
    build: Callable[..., dict[str, Any]]
    final: Callable[[dict[str, Any]], str | None]
    restarts: Callable[[dict[str, Any]], int | None]


def _llmtrain_final(job: dict[str, Any]) -> str | None:
    phase = (job.get("status") or {}).get("phase")
    return phase if phase in ("Succeeded", "Failed") else None


def _pytorch_final(job: dict[str, Any]) -> str | None:
    for condition in (job.get("status") or {}).get("conditions") or []:
        if condition.get("type") in ("Succeeded", "Failed") and condition.get("status") == "True":
            return condition["type"]
    return None


def _pytorch_restarts(job: dict[str, Any]) -> int | None:
    """The training-operator keeps no restart count of its own; its Restarting condition is the trace it leaves."""
    conditions = (job.get("status") or {}).get("conditions") or []
    return sum(1 for c in conditions if c.get("type") == "Restarting")


LLMTRAIN = Operator(
    "llmtrain",
    LLMTRAIN_USER,
    "llmtrain.dev",
    "v1alpha1",
    "llmtrainingjobs",
    "llmtrain.dev/job-name",
    "trainer",
    manifests.llmtrain_job,
    _llmtrain_final,
    lambda job: (job.get("status") or {}).get("restarts"),
)
TRAINING_OPERATOR = Operator(
    f"training-operator {peers.VERSION}",
    peers.USER,
    "kubeflow.org",
    "v1",
    "pytorchjobs",
    "training.kubeflow.org/job-name",
    "pytorch",
    manifests.pytorch_job,
    _pytorch_final,
    _pytorch_restarts,
)


class Bench:
    """The API clients, the audit log, and the namespaces made (deleted at the end)."""

    def __init__(self, kubeconfig_file: Path) -> None:
        api = config.new_client_from_config(str(kubeconfig_file))
        self.core = client.CoreV1Api(api)
        self.custom = client.CustomObjectsApi(api)
        self.audit_log = audit.log_file(paths.state_dir())
        self.namespaces: list[str] = []

    def namespace(self, name: str) -> str:
        self.core.create_namespace({"metadata": {"name": name}})
        self.namespaces.append(name)
        return name

    def create(self, op: Operator, ns: str, job: dict[str, Any]) -> None:
        self.custom.create_namespaced_custom_object(op.group, op.version, ns, op.plural, job)

    def get(self, op: Operator, ns: str, name: str) -> dict[str, Any]:
        return self.custom.get_namespaced_custom_object(op.group, op.version, ns, op.plural, name)

    def pods(self, op: Operator, ns: str, name: str) -> list[client.V1Pod]:
        return self.core.list_namespaced_pod(ns, label_selector=f"{op.pod_label}={name}").items

    def audit_offset(self) -> int:
        return self.audit_log.stat().st_size if self.audit_log.exists() else 0

    def writes_since(self, offset: int, user: str) -> dict[str, Any]:
        with open(self.audit_log) as f:
            f.seek(offset)
            counts = audit.writes_by(f, user)
        return {**audit.summarize(counts), "breakdown": dict(sorted(counts.items()))}

    def cleanup(self) -> None:
        for ns in self.namespaces:
            self.core.delete_namespace(ns)


# -- scale -----------------------------------------------------------------------------------------------------------


def _watch_pods(bench: Bench, op: Operator, ns: str, name: str, expected: int, seen: dict[str, float]) -> None:
    """Record when each pod of the job is first seen (ADDED), until `expected` are."""
    stream = watch.Watch()
    selector = f"{op.pod_label}={name}"
    for event in stream.stream(bench.core.list_namespaced_pod, ns, label_selector=selector, timeout_seconds=300):
        if event["type"] == "ADDED":
            seen.setdefault(event["object"].metadata.name, time.perf_counter())
        if len(seen) >= expected:
            stream.stop()


def scale(bench: Bench, op: Operator, nodes: int, run: int = 0) -> dict[str, Any]:
    ns = bench.namespace(f"peers-scale-{op.plural}-{run}")
    name = "big"
    seen: dict[str, float] = {}
    watcher = threading.Thread(target=_watch_pods, args=(bench, op, ns, name, nodes, seen), daemon=True)
    watcher.start()
    time.sleep(1.0)  # let the watch connect
    offset = bench.audit_offset()
    began = time.perf_counter()
    bench.create(op, ns, op.build(name, nodes, manifests.script_args(60, 0.25, 10), pending=True))
    watcher.join(300)
    if len(seen) < nodes:
        raise RuntimeError(f"{op.label}: {len(seen)}/{nodes} pods after 300 s")
    time.sleep(SETTLE_S)
    return {
        "pods": len(seen),
        "all_pods_created_s": round(max(seen.values()) - began, 3),
        "first_pod_s": round(min(seen.values()) - began, 3),
        **bench.writes_since(offset, op.user),
    }


def median_run(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The run with the median time to all pods, plus every run's time (the machine is shared: spread matters)."""
    ordered = sorted(runs, key=lambda r: r["all_pods_created_s"])
    return {
        **ordered[(len(ordered) - 1) // 2],
        "runs": len(runs),
        "all_runs_s": [r["all_pods_created_s"] for r in runs],
    }


# -- fault -----------------------------------------------------------------------------------------------------------


def _pod_log(bench: Bench, op: Operator, pod: client.V1Pod) -> str:
    try:
        log = bench.core.read_namespaced_pod_log(pod.metadata.name, pod.metadata.namespace, container=op.container)
        return log or ""  # the client reads an empty log as None
    except client.ApiException:
        return ""


def _logs(bench: Bench, op: Operator, ns: str, name: str) -> str:
    return "\n".join(_pod_log(bench, op, pod) for pod in bench.pods(op, ns, name))


def _wait(what: str, check: Callable[[], Any], timeout: float, period: float = 0.5) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = check()
        if result:
            return result
        time.sleep(period)
    raise TimeoutError(f"timed out waiting for {what}")


def _worker_pids(job_name: str, node_rank: str) -> list[int]:
    """The job's script processes on node rank `node_rank` (not torchrun's agent): pods are host processes here."""
    marker, rank = f"LLMTRAIN_JOB_NAME={job_name}".encode(), f"GROUP_RANK={node_rank}".encode()
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            environ = (entry / "environ").read_bytes().split(b"\0")
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        launcher = b"torch.distributed.run" in cmdline or b"torchrun" in cmdline or b"run(parse_args" in cmdline
        if marker in environ and rank in environ and b"train_ddp.py" in cmdline and not launcher:
            pids.append(int(entry.name))
    return sorted(pids)


def _fault_setup(bench: Bench, op: Operator, tag: str) -> str:
    ns = bench.namespace(f"peers-fault-{op.plural}{tag}")
    script = (REPO / "examples" / "custom" / "ddp" / "train_ddp.py").read_text()
    bench.core.create_namespaced_config_map(ns, manifests.script_config_map(manifests.SCRIPT_CONFIG_MAP, script))
    bench.core.create_namespaced_persistent_volume_claim(ns, manifests.checkpoint_claim("checkpoints"))
    return ns


def _restart_counts(pods: list[client.V1Pod]) -> dict[tuple[str, str], int]:
    """Container restarts in place, by (pod uid, container)."""
    return {(p.metadata.uid, cs.name): cs.restart_count for p in pods for cs in (p.status.container_statuses or [])}


def _last_condition(job: dict[str, Any]) -> str:
    """The newest true condition's reason and message: why the job ended as it did."""
    true = [c for c in (job.get("status") or {}).get("conditions") or [] if c.get("status") == "True"]
    return f"{true[-1].get('reason', '')}: {true[-1].get('message', '')}" if true else ""


@dataclass
class Observed:
    """What the bench saw between the kill and the job's end."""

    uids: set[str]
    restarts: dict[tuple[str, str], int]
    resumed_step: int | None = None
    resumed_s: float | None = None
    final: str | None = None


def _observe(bench: Bench, op: Operator, ns: str, name: str, killed: float, seen: Observed) -> None:
    """Poll pods, logs and the job until it ends; pods the operator deletes are remembered (uids, restarts)."""
    while seen.final is None and time.monotonic() - killed < 600:
        pods = bench.pods(op, ns, name)
        seen.uids |= {p.metadata.uid for p in pods}
        for key, count in _restart_counts(pods).items():
            seen.restarts[key] = max(seen.restarts.get(key, 0), count)
        if seen.resumed_step is None and (found := RESUMED.findall(_logs(bench, op, ns, name))):
            seen.resumed_step, seen.resumed_s = int(found[-1]), round(time.monotonic() - killed, 1)
        seen.final = op.final(bench.get(op, ns, name))
        time.sleep(0.3)


def fault(
    bench: Bench, op: Operator, nodes: int, steps: int, kill_at_step: int, backoff_limit: int, tag: str = ""
) -> dict[str, Any]:
    ns, name = _fault_setup(bench, op, tag), "fault"
    offset = bench.audit_offset()
    began = time.monotonic()
    args = manifests.script_args(steps, 0.25, 10)
    bench.create(op, ns, op.build(name, nodes, args, claim="checkpoints", backoff_limit=backoff_limit))
    marker = f"step {kill_at_step}/{steps}"
    _wait(f"{op.label}: {marker}", lambda: marker in _logs(bench, op, ns, name), timeout=300)
    time.sleep(1.0)  # the step's checkpoint is written right after the line
    started_s = round(time.monotonic() - began, 1)
    pods = bench.pods(op, ns, name)
    seen = Observed({p.metadata.uid for p in pods}, _restart_counts(pods))
    before = (set(seen.uids), sum(seen.restarts.values()))
    pids = _wait(f"{op.label}: a node-rank-1 worker", lambda: _worker_pids(name, "1"), timeout=30)
    os.kill(pids[-1], signal.SIGKILL)
    killed = time.monotonic()
    _observe(bench, op, ns, name, killed, seen)
    ended_s = round(time.monotonic() - killed, 1)
    job = bench.get(op, ns, name)
    if seen.resumed_step is None:  # the run may have ended before a poll saw the line: look once more
        found = RESUMED.findall(_logs(bench, op, ns, name))
        seen.resumed_step = int(found[-1]) if found else None
    time.sleep(SETTLE_S)
    return {
        "nodes": nodes,
        "steps": steps,
        "backoff_limit": backoff_limit,
        "killed_at_s": started_s,
        "pods_recreated": len(seen.uids - before[0]),
        "container_restarts": sum(seen.restarts.values()) - before[1],
        "operator_restart_count": op.restarts(job),
        "resumed_from_step": seen.resumed_step,
        "kill_to_resume_s": seen.resumed_s,
        "kill_to_final_s": ended_s,
        "final": seen.final or "not finished in 600 s",
        "why": _last_condition(job),
        **bench.writes_since(offset, op.user),
    }


# -- the run ---------------------------------------------------------------------------------------------------------


def _start_llmtrain_operator(state: Path) -> subprocess.Popen[bytes]:
    """Our operator as a process (cluster-wide, like the training-operator), under its own API user."""
    certs = pki.Pki(state / "pki")
    crt, _ = pki.ensure_client_cert(certs, "llmtrain-operator-bench-client", LLMTRAIN_USER, "system:masters")
    config_file = kubeconfig.write(state / "llmtrain-operator-bench.kubeconfig", certs, crt.stem, LLMTRAIN_USER)
    env = {**os.environ, "KUBECONFIG": str(config_file), "PYTHONPATH": f"{REPO / 'contract'}:{REPO / 'operator'}"}
    argv = [sys.executable, "-m", "llmtrain_operator", "--metrics-port", "18099", "--health-port", "0"]
    log = open(state / "logs" / "llmtrain-operator-bench.log", "ab")  # noqa: SIM115 (the child holds it)
    return subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)


def refuse_beside_an_installed_operator(admin: Path) -> None:
    """Ours runs cluster-wide here: an llmtrain operator installed with the chart (any namespace, e.g. an e2e
    release left behind) would reconcile the same jobs, so the counts would be meaningless. `make demo`'s operator
    watches only its own namespace and does no harm, but it is refused too: the check cannot tell."""
    kubectl = [paths.kubectl_binary(), f"--kubeconfig={admin}", "get", "pods", "--all-namespaces"]
    selector = "--selector=app.kubernetes.io/name=llmtrain-operator"
    found = subprocess.run([*kubectl, selector, "-o", "name"], capture_output=True, text=True, timeout=60, check=True)
    if found.stdout.strip():
        raise SystemExit(
            f"an llmtrain operator is installed on this cluster ({found.stdout.split()[0]}, ...): it would act on the "
            "bench's jobs too; `helm list -A` and uninstall it, or run `make cluster-down` first"
        )


def _apply_llmtrain_crd(admin: Path) -> None:
    kubectl = [paths.kubectl_binary(), f"--kubeconfig={admin}"]
    crd = REPO / "crds" / "llmtrain.dev_llmtrainingjobs.yaml"
    subprocess.run([*kubectl, "apply", "--server-side", "--force-conflicts", "-f", str(crd)], check=True, timeout=60)
    peers.wait_established([f"--filename={crd}"], time.monotonic() + 60)


# The same backoffLimit for both, then the training-operator with room for the restarts it counts (every container
# restart of every replica: one killed worker costs two, the worker's and the master's).
FAULT_RUNS = ((LLMTRAIN, 2, ""), (TRAINING_OPERATOR, 2, ""), (TRAINING_OPERATOR, 6, "-b6"))


def _report(scenario: str, label: str, result: dict[str, Any]) -> dict[str, Any]:
    print(f"[peers] {scenario} {label}: {json.dumps(result)}", file=sys.stderr, flush=True)
    return result


def run(big_nodes: int, fault_nodes: int, steps: int, kill_at_step: int, repeats: int) -> dict[str, Any]:
    started = cluster.up(audit=True)  # restarts a running API server that has no audit log
    refuse_beside_an_installed_operator(started.kubeconfig)
    peers.up()
    _apply_llmtrain_crd(started.kubeconfig)
    operator = _start_llmtrain_operator(started.state_dir)
    bench = Bench(started.kubeconfig)
    results: dict[str, Any] = {
        "benchmark": "peers",
        "machine": f"{os.cpu_count()}-core CPU, process kubelet test bed",
        "operators": {LLMTRAIN.label: "this repo", TRAINING_OPERATOR.label: "github.com/kubeflow/training-operator"},
    }
    try:
        time.sleep(5)  # our operator's start-up (imports, watches)
        runs: dict[str, list[dict[str, Any]]] = {LLMTRAIN.label: [], TRAINING_OPERATOR.label: []}
        for i in range(repeats):  # alternating, so a busy spell on the shared machine hits both
            for op in (LLMTRAIN, TRAINING_OPERATOR):
                runs[op.label].append(_report("scale", op.label, scale(bench, op, big_nodes, i)))
        results["scale"] = {label: median_run(each) for label, each in runs.items()}
        results["fault"] = {}
        for op, backoff_limit, tag in FAULT_RUNS:
            label = op.label + (f" (backoffLimit {backoff_limit})" if tag else "")
            result = fault(bench, op, fault_nodes, steps, kill_at_step, backoff_limit, tag)
            results["fault"][label] = _report("fault", label, result)
    finally:
        operator.terminate()
        operator.wait(30)
        bench.cleanup()
        peers.down()
    return results


ROWS = (
    ("scale", "pods", "pods (64-node job)"),
    ("scale", "all_pods_created_s", "create -> all pods exist (s), median"),
    ("scale", "all_runs_s", "create -> all pods exist (s), each run"),
    ("scale", "writes", "API writes (no Events)"),
    ("scale", "event_writes", "Event writes"),
    ("fault", "pods_recreated", "fault: pods recreated"),
    ("fault", "container_restarts", "fault: containers restarted in place"),
    ("fault", "operator_restart_count", "fault: operator's restart count"),
    ("fault", "resumed_from_step", "fault: resumed from step"),
    ("fault", "kill_to_resume_s", "fault: SIGKILL -> resumed (s)"),
    ("fault", "kill_to_final_s", "fault: SIGKILL -> final state (s)"),
    ("fault", "backoff_limit", "fault: runPolicy.backoffLimit"),
    ("fault", "final", "fault: final state"),
    ("fault", "writes", "fault: API writes (no Events)"),
    ("fault", "event_writes", "fault: Event writes"),
)


def table(results: dict[str, Any]) -> str:
    """A Markdown table, one column per operator (and fault-run variant); "-" where a scenario did not run it."""
    labels = list(dict.fromkeys([*results["scale"], *results["fault"]]))
    lines = [f"| | {' | '.join(labels)} |", f"|---|{'---|' * len(labels)}"]
    for scenario, key, title in ROWS:
        cells = [str(results[scenario].get(op, {}).get(key, "-")) for op in labels]
        lines.append(f"| {title} | {' | '.join(cells)} |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", help="also write the JSON here")
    parser.add_argument("--big-nodes", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3, help="scale runs per operator (the median is reported)")
    parser.add_argument("--fault-nodes", type=int, default=2)
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--kill-at-step", type=int, default=20)
    args = parser.parse_args()
    results = run(args.big_nodes, args.fault_nodes, args.steps, args.kill_at_step, args.repeats)
    text = json.dumps(results, indent=2)
    print(table(results))
    if args.out:
        Path(args.out).write_text(text + "\n")
    else:
        print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
