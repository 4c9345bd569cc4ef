"""Operator scale benchmark: time from `create LLMTrainingJob` to all node pods created, API writes, operator RSS,
reconcile lag; and, for a job whose pods run, every write over its life.

    PYTHONPATH=operator:testbed python bench/operator_scale.py [--out result.json] [--scenarios big,many]
        [--big-nodes 64] [--jobs 100] [--thousand-jobs 1000] [--huge-nodes 512] [--life-seconds 120]

Scenarios (a fresh namespace and a fresh operator process each):
  big       1 job x --big-nodes (64), pods Pending
  many      --jobs (100) x --nodes-per-job (4), pods Pending
  huge      1 job x --huge-nodes (512), pods Pending
  thousand  --thousand-jobs (1000) x --nodes-per-job (4), pods Pending, then --settle-seconds of resyncs
  life      1 job x --life-nodes (4) whose pods run a sleep of --life-seconds (the dev-command hook), counted from
            create to Succeeded, with the operator's default status interval (60 s) and a 10 s resync

Runs against the test bed (brought up if needed) or the cluster KUBECONFIG names. In the Pending scenarios the node
pods get a nodeSelector no node has, so they stay Pending and nothing runs: we measure the operator, not the
kubelet. Pod creation is observed through a watch started before the job is created (client-side timestamps, ms
resolution). Writes are the operator's own API requests (POST/PATCH/PUT/DELETE) from its
llmtrain_operator_api_requests_total metric, with Events listed apart. Reconcile lag (the wait from a job's first
unserved trigger to the reconcile that serves it) and reconcile duration quantiles are interpolated from the
operator's histograms, as Prometheus' histogram_quantile does. Prints one JSON object (and each scenario's result
on stderr as it ends). It refuses to run (exit message) when another llmtrain operator already acts on new
namespaces, e.g. a cluster-wide `helm install`: both would reconcile the bench's jobs.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import math
import os
import re
import secrets
import signal
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "contract"), str(REPO / "operator"), str(REPO / "testbed")]

import kopf  # noqa: E402
from llmtrain_operator.kubeapi import KubeClient  # noqa: E402

WRITE_VERBS = ("POST", "PATCH", "PUT", "DELETE")
NO_NODE = {"llmtrain.dev/bench-no-such-node": "true"}


ANNOTATION_DEV_COMMAND = "llmtrain.dev/dev-command"
LAG = "llmtrain_operator_reconcile_lag_seconds"
DURATION = "llmtrain_operator_reconcile_duration_seconds"
SCENARIOS = ("big", "many", "huge", "thousand", "life")
DEFAULT_METRICS_PORT = 9090  # spec.metrics.port's default: where the operator reads a job's progress
# What a running node pod does in place of torchrun: sleep, while serving a step counter (one step a second) on the
# metrics port as a trainer would, so the operator's resync reads progress that changes (each pod has its own IP).
RUN_SNIPPET = """import http.server, threading, time
t0 = time.time()
class Metrics(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = f"llmtrain_step {{int(time.time() - t0)}}\\nllmtrain_total_steps {{int({seconds})}}\\n".encode()
        self.send_response(200)
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *args):
        pass
server = http.server.ThreadingHTTPServer(("", {port}), Metrics)
threading.Thread(target=server.serve_forever, daemon=True).start()
time.sleep({seconds})
"""


def job(name: str, nodes: int, sleep_s: float | None = None) -> dict[str, Any]:
    """A tiny-preset job. Without `sleep_s` its pods can never be scheduled (Pending forever); with it they run a
    sleep of that long in place of torchrun (the operator must run with LLMTRAIN_DEV_COMMAND_OVERRIDE=1) and exit 0."""
    manifest: dict[str, Any] = {
        "apiVersion": "llmtrain.dev/v1alpha1",
        "kind": "LLMTrainingJob",
        "metadata": {"name": name},
        "spec": {
            "nodes": nodes,
            "procsPerNode": 1,
            "model": {"preset": "tiny"},
            "training": {"steps": 10, "globalBatchSize": nodes},
            "scheduling": {"nodeSelector": NO_NODE},
        },
    }
    if sleep_s is not None:
        command = ["python", "-c", RUN_SNIPPET.format(seconds=sleep_s, port=DEFAULT_METRICS_PORT)]
        manifest["metadata"]["annotations"] = {ANNOTATION_DEV_COMMAND: json.dumps(command)}
        manifest["spec"].pop("scheduling")
        manifest["spec"]["precision"] = "fp32"
        manifest["spec"]["resources"] = {"requests": {"cpu": "10m", "memory": "32Mi"}}
    return manifest


@dataclass(frozen=True)
class Scenario:
    """One measured run: `jobs` jobs of `nodes` node pods each, under a fresh operator."""

    label: str
    jobs: int
    nodes: int
    resync_s: float = 30.0
    settle_s: float = 3.0  # after the last pod is created (or the job finished), before the final reads
    life_s: float | None = None  # pods run a sleep this long; None: they stay Pending
    timeout_s: float = 300.0
    steady_s: float = 0.0  # a second window, measured on its own, after the settle


def pick_scenarios(names: str, args: argparse.Namespace) -> list[Scenario]:
    """The scenarios named (comma-separated, in the order given); unknown names are an error."""
    built = {
        "big": Scenario("one_big_job", 1, args.big_nodes),
        "many": Scenario("many_jobs", args.jobs, args.nodes_per_job),
        "huge": Scenario("huge_job", 1, args.huge_nodes, resync_s=10.0, timeout_s=120.0),
        "thousand": Scenario(
            "thousand_jobs",
            args.thousand_jobs,
            args.nodes_per_job,
            resync_s=10.0,
            settle_s=args.settle_seconds,
            steady_s=args.steady_seconds,
            timeout_s=480.0,
        ),
        "life": Scenario(
            "job_life", 1, args.life_nodes, resync_s=10.0, life_s=args.life_seconds, timeout_s=args.life_seconds + 180
        ),
    }
    chosen = [name.strip() for name in names.split(",") if name.strip()]
    unknown = [name for name in chosen if name not in built]
    if unknown:
        raise SystemExit(f"unknown scenario(s) {', '.join(unknown)}; choose from {', '.join(SCENARIOS)}")
    return [built[name] for name in chosen]


def life_write_budget(nodes: int, life_s: float) -> int:
    """The issue's goal for one job's whole life: its pods, ConfigMap, Service and first status patch (nodes + 3),
    plus one status patch per started minute."""
    return nodes + 3 + math.ceil(life_s / 60)


def histogram_buckets(text: str, name: str) -> dict[float, float]:
    """Cumulative bucket counts of histogram `name` from a Prometheus text exposition, by upper bound (inf too)."""
    from prometheus_client.parser import text_string_to_metric_families

    out: dict[float, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == f"{name}_bucket":
                out[float(sample.labels["le"])] = sample.value
    return out


def bucket_delta(after: dict[float, float], before: dict[float, float]) -> dict[float, float]:
    """What a cumulative histogram gained between two reads (the operator's counts start at its own start)."""
    return {bound: count - before.get(bound, 0.0) for bound, count in after.items()}


def bucket_quantile(buckets: dict[float, float], q: float) -> float | None:
    """The q-quantile of cumulative buckets, interpolated linearly inside its bucket (Prometheus'
    histogram_quantile): an estimate no finer than the buckets. None without observations; inf when the quantile
    falls in the +Inf bucket (beyond the highest finite bound)."""
    bounds = sorted(buckets)
    total = buckets.get(math.inf, buckets[bounds[-1]] if bounds else 0.0)
    if total <= 0:
        return None
    rank, lower, below = q * total, 0.0, 0.0
    for bound in bounds:
        count = buckets[bound]
        if count >= rank:
            if math.isinf(bound):
                return math.inf
            return lower + (bound - lower) * ((rank - below) / (count - below) if count > below else 1.0)
        lower, below = bound, count
    return math.inf


class AnotherOperator(SystemExit):
    """An llmtrain operator already acts on new namespaces: both would reconcile the bench's jobs (409s, double
    writes), so the numbers would be meaningless."""


async def refuse_if_another_operator(client: KubeClient, kubeconfig: str, wait_s: float = 6.0) -> None:
    """Create a probe job in a fresh namespace before starting ours; if anything writes its status, refuse."""
    ns = f"bench-probe-{secrets.token_hex(3)}"
    kubectl("create", "namespace", ns, kubeconfig=kubeconfig)
    path = f"/apis/llmtrain.dev/v1alpha1/namespaces/{ns}/llmtrainingjobs"
    try:
        await client.request("POST", path, job("probe", 1))
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline:
            _, probe = await client.request("GET", f"{path}/probe")
            if isinstance(probe, dict) and probe.get("status"):
                await client.close()
                raise AnotherOperator(
                    "another llmtrain operator reconciles jobs in new namespaces (it wrote the status of a probe job "
                    f"in {ns}); uninstall it (`helm list -A`) or benchmark on a cluster without one"
                )
            await asyncio.sleep(0.5)
    finally:
        kubectl("delete", "namespace", ns, "--wait=false", kubeconfig=kubeconfig)


def scrape(port: int) -> str:
    return urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=30).read().decode()


async def first_scrape(port: int, proc: subprocess.Popen[bytes], timeout_s: float = 60.0) -> str:
    """The operator's first /metrics, once it serves them (imports and kopf's watches take seconds; longer under
    tracemalloc), plus 2 s for its watches to list."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            scrape(port)
            await asyncio.sleep(2)
            return scrape(port)
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.5)


def operator_writes(text: str) -> dict[str, float]:
    """Cumulative write requests: 'objects' and 'events' totals, plus 'VERB resource code' entries."""
    from prometheus_client.parser import text_string_to_metric_families

    out: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name != "llmtrain_operator_api_requests_total" or sample.labels["verb"] not in WRITE_VERBS:
                continue
            resource = sample.labels["resource"]
            key = "events" if resource == "events" else "objects"
            out[key] = out.get(key, 0) + sample.value
            detail = f"{sample.labels['verb']} {resource} {sample.labels['code']}"
            out[detail] = out.get(detail, 0) + sample.value
    return out


def rss_mb(pid: int) -> dict[str, float]:
    status = Path(f"/proc/{pid}/status").read_text()
    get = lambda key: int(re.search(rf"{key}:\s+(\d+) kB", status).group(1)) / 1024  # noqa: E731
    return {"rss_mb": round(get("VmRSS"), 1), "peak_rss_mb": round(get("VmHWM"), 1)}


def cpu_seconds(pid: int) -> float:
    """User + system CPU the process has used: set against the wall time, whether the operator (one Python
    thread) or the control plane it talks to is the bottleneck."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return round((int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK"), 2)


async def watch_pods(
    client: KubeClient, ns: str, expected: int, seen: dict[str, float], done: asyncio.Event, reconnects: list[int]
) -> None:
    """Record the local time each node pod is first seen (ADDED) until `expected` are. The API server closes a watch
    that cannot keep up (hundreds of pods a second on a busy 2-core machine): resume it from the last
    resourceVersion seen, so the events in between are replayed, not lost (counted in `reconnects`)."""
    session = client._ensure()
    base = f"{client.info.server}/api/v1/namespaces/{ns}/pods?watch=1&labelSelector=llmtrain.dev%2Fjob-name"
    version = ""
    while True:
        url = f"{base}&resourceVersion={version}" if version else base
        async with session.get(url, headers=client.info.as_http_headers(), timeout=None) as resp:
            async for line in resp.content:
                event = json.loads(line)
                if event.get("type") == "ERROR":
                    raise RuntimeError(f"pod watch error: {event.get('object')}")
                version = event["object"]["metadata"].get("resourceVersion", version)
                if event.get("type") == "ADDED":
                    seen.setdefault(event["object"]["metadata"]["name"], time.perf_counter())
                    if len(seen) >= expected:
                        done.set()
                        return
        reconnects[0] += 1


async def scenario(client: KubeClient, ns: str, jobs: list[dict[str, Any]], timeout: float) -> dict[str, Any]:
    expected = sum(j["spec"]["nodes"] for j in jobs)
    seen: dict[str, float] = {}
    done = asyncio.Event()
    reconnects = [0]
    watcher = asyncio.ensure_future(watch_pods(client, ns, expected, seen, done, reconnects))
    watcher.add_done_callback(lambda _: done.set())  # a watch that dies must end the wait, not time it out
    await asyncio.sleep(0.5)  # let the watch connect
    began = time.perf_counter()
    created_at: dict[str, float] = {}

    async def create(manifest: dict[str, Any]) -> None:
        status, body = await client.request(
            "POST", f"/apis/llmtrain.dev/v1alpha1/namespaces/{ns}/llmtrainingjobs", manifest
        )
        assert status == 201, body
        created_at[manifest["metadata"]["name"]] = time.perf_counter()

    await asyncio.gather(*(create(j) for j in jobs))
    try:
        await asyncio.wait_for(done.wait(), timeout)
    finally:
        watcher.cancel()
    if watcher.done() and not watcher.cancelled() and watcher.exception() is not None:
        raise RuntimeError(f"pod watch failed after {len(seen)}/{expected} pods") from watcher.exception()
    if len(seen) < expected:
        raise TimeoutError(f"only {len(seen)} of {expected} pods created within {timeout:.0f} s")
    per_job = []
    for j in jobs:
        name = j["metadata"]["name"]
        pods = [t for pod, t in seen.items() if pod.startswith(f"{name}-node-")]
        per_job.append(max(pods) - created_at[name])
    per_job.sort()
    return {
        "jobs": len(jobs),
        "nodes_per_job": jobs[0]["spec"]["nodes"],
        "pods": len(seen),
        "all_pods_created_s": round(max(seen.values()) - began, 3),
        "per_job_p50_s": round(per_job[len(per_job) // 2], 3),
        "per_job_max_s": round(per_job[-1], 3),
        "per_job_p99_s": round(per_job[min(len(per_job) - 1, int(len(per_job) * 0.99))], 3),
        "watch_reconnects": reconnects[0],
    }


def kubectl(*args: str, kubeconfig: str, input: str | None = None, timeout: float = 120) -> str:
    from llmtrain_testbed import paths

    env = {**os.environ, "KUBECONFIG": kubeconfig}
    return subprocess.run(
        [paths.kubectl_binary(), *args],
        input=input,
        capture_output=True,
        text=True,
        env=env,
        check=True,
        timeout=timeout,
    ).stdout


async def wait_for_phase(
    client: KubeClient, ns: str, name: str, phases: set[str], timeout: float
) -> tuple[str, list[str]]:
    """Poll the job's status.phase (once a second: the bench's reads are not the operator's writes) until it is in
    `phases`; returns that phase and the job's conditions then ("type=status/reason": which transitions were
    written)."""
    deadline = time.monotonic() + timeout
    while True:
        _, body = await client.request("GET", f"/apis/llmtrain.dev/v1alpha1/namespaces/{ns}/llmtrainingjobs/{name}")
        phase = (body.get("status") or {}).get("phase") if isinstance(body, dict) else None
        if phase in phases:
            conditions = body["status"].get("conditions") or []
            return phase, [f"{c.get('type')}={c.get('status')}/{c.get('reason')}" for c in conditions]
        if time.monotonic() > deadline:
            raise TimeoutError(f"job {ns}/{name} still {phase} after {timeout:.0f} s")
        await asyncio.sleep(1.0)


def start_operator(plan: Scenario, ns: str, kubeconfig: str, port: int) -> tuple[subprocess.Popen[bytes], Any]:
    """The operator as a subprocess watching only `ns`, its default status interval (60 s), the plan's resync."""
    env = {**os.environ, "KUBECONFIG": kubeconfig, "PYTHONPATH": f"{REPO / 'contract'}:{REPO / 'operator'}"}
    if plan.life_s is not None:
        env["LLMTRAIN_DEV_COMMAND_OVERRIDE"] = "1"  # the job's annotation replaces torchrun with a sleep
    traced = "LLMTRAIN_TRACEMALLOC_OUT" in env
    program = [str(REPO / "bench/traced_operator.py")] if traced else ["-m", "llmtrain_operator"]
    argv = [sys.executable, *program, "--namespace", ns, "--metrics-port", str(port)]
    argv += ["--health-port", "0", "--resync-seconds", str(plan.resync_s)]
    log = open(f"/tmp/bench-operator-{plan.label}.log", "w")  # noqa: SIM115
    return subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT), log


def quantile_text(buckets: dict[float, float], q: float) -> float | str | None:
    """A quantile for the JSON: seconds, or ">N" when it lies beyond the histogram's highest finite bound N."""
    value = bucket_quantile(buckets, q)
    if value is None or not math.isinf(value):
        return None if value is None else round(value, 4)
    return f">{max(bound for bound in buckets if not math.isinf(bound)):g}"


def reconcile_quantiles(before: str, after: str) -> dict[str, Any]:
    """Reconciles started between two /metrics reads, and their lag and duration p50/p99."""
    lag = bucket_delta(histogram_buckets(after, LAG), histogram_buckets(before, LAG))
    duration = bucket_delta(histogram_buckets(after, DURATION), histogram_buckets(before, DURATION))
    out: dict[str, Any] = {"reconciles": lag.get(math.inf, 0.0)}
    for q in (0.5, 0.99):
        for label, buckets in (("lag", lag), ("duration", duration)):
            out[f"reconcile_{label}_p{round(q * 100)}_s"] = quantile_text(buckets, q)
    return out


def summarize(before: str, after: str, plan: Scenario) -> dict[str, Any]:
    """Writes (per job, with a breakdown) and reconcile lag/duration quantiles between two /metrics reads."""
    base, end = operator_writes(before), operator_writes(after)
    writes = {k: end.get(k, 0) - base.get(k, 0) for k in end}
    return {
        "writes_per_job": round(writes.get("objects", 0) / plan.jobs, 2),
        "event_writes_per_job": round(writes.get("events", 0) / plan.jobs, 2),
        "write_breakdown": {k: v for k, v in writes.items() if " " in k and v},
        **reconcile_quantiles(before, after),
    }


async def measure(client: KubeClient, kubeconfig: str, plan: Scenario) -> dict[str, Any]:
    ns = f"bench-operator-{secrets.token_hex(3)}"
    kubectl("create", "namespace", ns, kubeconfig=kubeconfig)
    port = 18000 + secrets.randbelow(1000)
    proc, log = start_operator(plan, ns, kubeconfig, port)
    try:
        before, cpu_before = await first_scrape(port, proc), cpu_seconds(proc.pid)
        jobs = [job(f"{plan.label.replace('_', '-')}-{i}", plan.nodes, plan.life_s) for i in range(plan.jobs)]
        began = time.perf_counter()
        result = await scenario(client, ns, jobs, timeout=plan.timeout_s)
        if plan.life_s is not None:
            name = jobs[0]["metadata"]["name"]
            final = await wait_for_phase(client, ns, name, {"Succeeded", "Failed"}, plan.timeout_s)
            result["final_phase"], result["final_conditions"] = final
            result["life_s"] = round(time.perf_counter() - began, 1)
        settled, rss_then, cpu_then = scrape(port), rss_mb(proc.pid), cpu_seconds(proc.pid)
        await asyncio.sleep(plan.settle_s)  # let status writes settle (and, for thousand, the resyncs run)
        end = scrape(port)
        result.update(summarize(before, end, plan))
        result["operator_cpu_s_until_settled"] = round(cpu_then - cpu_before, 2)
        result["settle"] = {"seconds": plan.settle_s, "rss_mb_at_start": rss_then["rss_mb"]}
        result["settle"]["operator_cpu_s"] = round(cpu_seconds(proc.pid) - cpu_then, 2)
        result["settle"].update(reconcile_quantiles(settled, end))  # the steady state: resyncs, late pod events
        settle_writes = summarize(settled, end, plan)
        result["settle"]["write_breakdown"] = settle_writes["write_breakdown"]
        if plan.steady_s:  # a second window after the settle: the scheduler has marked every pod by then
            cpu_then = cpu_seconds(proc.pid)
            await asyncio.sleep(plan.steady_s)
            steady = scrape(port)
            result["steady"] = {"seconds": plan.steady_s, "operator_cpu_s": round(cpu_seconds(proc.pid) - cpu_then, 2)}
            result["steady"].update(reconcile_quantiles(end, steady))
            result["steady"]["write_breakdown"] = summarize(end, steady, plan)["write_breakdown"]
        if plan.life_s is not None:
            budget = life_write_budget(plan.nodes, result["life_s"])
            result["write_goal"] = f"<= {budget} (nodes + 3 + 1 per started minute)"
            result["write_goal_met"] = result["writes_per_job"] <= budget
        result.update(rss_mb(proc.pid))
        if "LLMTRAIN_TRACEMALLOC_OUT" in os.environ:
            proc.send_signal(signal.SIGUSR1)  # bench/traced_operator.py writes its largest allocations
            await asyncio.sleep(15)
        return result
    finally:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()  # (a traced operator can take longer to stop)
            proc.wait(20)
        log.close()
        # Wait until its pods are gone: the next scenario must not share the scheduler with 4,000 leftovers.
        kubectl("delete", "namespace", ns, "--wait=true", "--timeout=600s", kubeconfig=kubeconfig, timeout=660)


def wait_established(kubeconfig: str, attempts: int = 10) -> None:
    """`kubectl wait` for the CRD, again while it answers NotFound (a test bed just brought up can lag the apply)."""
    for attempt in range(attempts):
        try:
            kubectl("wait", "--for=condition=Established", "crd/llmtrainingjobs.llmtrain.dev", kubeconfig=kubeconfig)
            return
        except subprocess.CalledProcessError:
            if attempt == attempts - 1:
                raise
            time.sleep(2)


async def run(kubeconfig: str, plans: list[Scenario]) -> dict[str, Any]:
    kubectl(
        "apply",
        "--server-side",
        "--force-conflicts",
        "-f",
        str(REPO / "crds/llmtrain.dev_llmtrainingjobs.yaml"),
        kubeconfig=kubeconfig,
    )
    wait_established(kubeconfig)
    results: dict[str, Any] = {"benchmark": "operator_scale", "cpus": os.cpu_count(), "load_avg": os.getloadavg()}
    info = kopf.login_with_kubeconfig(logger=logging.getLogger("bench"), settings=kopf.OperatorSettings())
    client = KubeClient(info, timeout=300)
    await refuse_if_another_operator(client, kubeconfig)
    for plan in plans:
        results[plan.label] = await measure(client, kubeconfig, plan)
        print(json.dumps({plan.label: results[plan.label]}), file=sys.stderr, flush=True)  # progress, if killed
    results["load_avg_end"] = os.getloadavg()
    await client.close()
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", help="also write the JSON here")
    parser.add_argument("--tracemalloc", metavar="PATH", help="operator under tracemalloc; top allocations here")
    parser.add_argument("--scenarios", default="big,many", help=f"comma-separated, from {','.join(SCENARIOS)}")
    parser.add_argument("--big-nodes", type=int, default=64)
    parser.add_argument("--jobs", type=int, default=100)
    parser.add_argument("--nodes-per-job", type=int, default=4)
    parser.add_argument("--huge-nodes", type=int, default=512)
    parser.add_argument("--thousand-jobs", type=int, default=1000)
    parser.add_argument("--settle-seconds", type=float, default=60.0, help="thousand: steady state measured after")
    parser.add_argument("--steady-seconds", type=float, default=60.0, help="thousand: a second window after")
    parser.add_argument("--life-nodes", type=int, default=4)
    parser.add_argument("--life-seconds", type=float, default=120.0, help="life: how long the pods run")
    args = parser.parse_args()
    plans = pick_scenarios(args.scenarios, args)
    if args.tracemalloc:
        os.environ["LLMTRAIN_TRACEMALLOC_OUT"] = str(Path(args.tracemalloc).resolve())
    kubeconfig = os.environ.get("KUBECONFIG")
    if not kubeconfig:
        from llmtrain_testbed import cluster

        kubeconfig = str(cluster.up().kubeconfig)
        os.environ["KUBECONFIG"] = kubeconfig
    results = asyncio.run(run(kubeconfig, plans))
    text = json.dumps(results, indent=2)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
