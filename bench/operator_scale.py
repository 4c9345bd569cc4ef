"""Operator scale benchmark: time from `create LLMTrainingJob` to all node pods created, API writes, operator RSS.

    PYTHONPATH=operator:testbed python bench/operator_scale.py [--out result.json] [--big-nodes 64] [--jobs 100]

Runs against the test bed (brought up if needed) or the cluster KUBECONFIG names. The node pods get a nodeSelector no
node has, so they stay Pending and nothing runs: we measure the operator, not the kubelet. Pod creation is observed
through a watch started before the job is created (client-side timestamps, ms resolution). Writes are the operator's
own API requests (POST/PATCH/PUT/DELETE) from its llmtrain_operator_api_requests_total metric, with Events listed
apart. Prints one JSON object. It refuses to run (exit message) when another llmtrain operator already acts on new
namespaces, e.g. a cluster-wide `helm install`: both would reconcile the bench's jobs.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import re
import secrets
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "contract"), str(REPO / "operator"), str(REPO / "testbed")]

import kopf  # noqa: E402
from llmtrain_operator.kubeapi import KubeClient  # noqa: E402

WRITE_VERBS = ("POST", "PATCH", "PUT", "DELETE")
NO_NODE = {"llmtrain.dev/bench-no-such-node": "true"}


def job(name: str, nodes: int) -> dict[str, Any]:
    return {
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


def operator_writes(port: int) -> dict[str, float]:
    """Cumulative write requests: 'objects' and 'events' totals, plus 'VERB resource code' entries."""
    from prometheus_client.parser import text_string_to_metric_families

    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
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


async def watch_pods(client: KubeClient, ns: str, expected: int, seen: dict[str, float], done: asyncio.Event) -> None:
    """Record the local time each node pod is first seen (ADDED) until `expected` are."""
    session = client._ensure()
    url = f"{client.info.server}/api/v1/namespaces/{ns}/pods?watch=1&labelSelector=llmtrain.dev%2Fjob-name"
    async with session.get(url, headers=client.info.as_http_headers(), timeout=None) as resp:
        async for line in resp.content:
            event = json.loads(line)
            if event.get("type") == "ADDED":
                seen.setdefault(event["object"]["metadata"]["name"], time.perf_counter())
                if len(seen) >= expected:
                    done.set()
                    return


async def scenario(client: KubeClient, ns: str, jobs: list[dict[str, Any]], timeout: float) -> dict[str, Any]:
    expected = sum(j["spec"]["nodes"] for j in jobs)
    seen: dict[str, float] = {}
    done = asyncio.Event()
    watcher = asyncio.ensure_future(watch_pods(client, ns, expected, seen, done))
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
    }


def kubectl(*args: str, kubeconfig: str, input: str | None = None) -> str:
    from llmtrain_testbed import paths

    env = {**os.environ, "KUBECONFIG": kubeconfig}
    return subprocess.run(
        [paths.kubectl_binary(), *args], input=input, capture_output=True, text=True, env=env, check=True, timeout=120
    ).stdout


async def run(kubeconfig: str, big_nodes: int, many_jobs: int, many_nodes: int) -> dict[str, Any]:
    kubectl(
        "apply",
        "--server-side",
        "--force-conflicts",
        "-f",
        str(REPO / "crds/llmtrain.dev_llmtrainingjobs.yaml"),
        kubeconfig=kubeconfig,
    )
    kubectl("wait", "--for=condition=Established", "crd/llmtrainingjobs.llmtrain.dev", kubeconfig=kubeconfig)
    results: dict[str, Any] = {"benchmark": "operator_scale", "cpus": os.cpu_count()}
    info = kopf.login_with_kubeconfig(logger=logging.getLogger("bench"), settings=kopf.OperatorSettings())
    client = KubeClient(info, timeout=300)
    await refuse_if_another_operator(client, kubeconfig)
    for label, count, nodes in (("one_big_job", 1, big_nodes), ("many_jobs", many_jobs, many_nodes)):
        ns = f"bench-operator-{secrets.token_hex(3)}"
        kubectl("create", "namespace", ns, kubeconfig=kubeconfig)
        port = 18000 + secrets.randbelow(1000)
        env = {**os.environ, "KUBECONFIG": kubeconfig, "PYTHONPATH": f"{REPO / 'contract'}:{REPO / 'operator'}"}
        argv = [
            sys.executable,
            "-m",
            "llmtrain_operator",
            "--namespace",
            ns,
            "--metrics-port",
            str(port),
            "--health-port",
            "0",
            "--resync-seconds",
            "30",
        ]
        log = open(f"/tmp/bench-operator-{label}.log", "w")  # noqa: SIM115
        proc = subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT)
        try:
            await asyncio.sleep(4)  # operator startup (imports, kopf watches)
            base = operator_writes(port)
            jobs = [job(f"{label.replace('_', '-')}-{i}", nodes) for i in range(count)]
            result = await scenario(client, ns, jobs, timeout=300)
            await asyncio.sleep(3)  # let status writes settle
            after = operator_writes(port)
            writes = {k: after.get(k, 0) - base.get(k, 0) for k in after}
            result["writes_per_job"] = round(writes.get("objects", 0) / count, 2)
            result["event_writes_per_job"] = round(writes.get("events", 0) / count, 2)
            result["write_breakdown"] = {k: v for k, v in writes.items() if " " in k and v}
            result.update(rss_mb(proc.pid))
            results[label] = result
        finally:
            proc.terminate()
            proc.wait(20)
            log.close()
            kubectl("delete", "namespace", ns, "--wait=false", kubeconfig=kubeconfig)
    await client.close()
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", help="also write the JSON here")
    parser.add_argument("--big-nodes", type=int, default=64)
    parser.add_argument("--jobs", type=int, default=100)
    parser.add_argument("--nodes-per-job", type=int, default=4)
    args = parser.parse_args()
    kubeconfig = os.environ.get("KUBECONFIG")
    if not kubeconfig:
        from llmtrain_testbed import cluster

        kubeconfig = str(cluster.up().kubeconfig)
        os.environ["KUBECONFIG"] = kubeconfig
    results = asyncio.run(run(kubeconfig, args.big_nodes, args.jobs, args.nodes_per_job))
    text = json.dumps(results, indent=2)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
