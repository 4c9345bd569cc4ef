"""`make demo`: install the chart, train examples/tiny-cpu.yaml through the operator, show progress live.

Runs against the cluster KUBECONFIG points at, else the local test bed (`make cluster-up` started it).
Leaves everything running so you can look around afterwards; `make cluster-down` stops it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "testbed"))

from llmtrain_testbed import paths  # noqa: E402

NAMESPACE = "llmtrain-demo"
OPERATOR_NAMESPACE = "llmtrain-system"
JOB = "tiny-cpu"
TIMEOUT_S = 900


def say(msg: str) -> None:
    print(f"[demo {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def run(*cmd: str, check: bool = True, quiet: bool = False) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(cmd, text=True, capture_output=True, env=_env())
    if check and proc.returncode != 0:
        sys.exit(f"demo: `{' '.join(cmd)}` failed:\n{proc.stdout}{proc.stderr}")
    if not quiet and proc.stdout.strip():
        print(proc.stdout.rstrip())
    return proc


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env.setdefault("KUBECONFIG", str(paths.state_dir() / "kubeconfig"))
    return env


def kubectl(*args: str, **kw) -> subprocess.CompletedProcess[str]:
    return run(paths.kubectl_binary(), *args, **kw)


def install_operator() -> None:
    helm = str(paths.binary("helm"))
    say("installing the operator with helm (charts/llmtrain-operator) into namespace llmtrain-system")
    # The demo's operator watches only the demo's namespace, so it never acts on the jobs of a later `make test`
    # (whose operators watch their own namespaces) on the same cluster.
    kubectl("create", "namespace", NAMESPACE, check=False, quiet=True)
    run(
        helm,
        "upgrade",
        "--install",
        "llmtrain",
        str(REPO / "charts" / "llmtrain-operator"),
        "--namespace",
        OPERATOR_NAMESPACE,
        "--create-namespace",
        "--wait",
        "--timeout",
        "5m",
        "--set",
        "image.repository=llmtrain/operator",
        "--set",
        "image.tag=dev",
        "--set",
        "resyncSeconds=2",  # progress in status every 2 s: the demo job is short
        "--set",
        "statusIntervalSeconds=2",
        "--set",
        f"watchNamespaces={{{NAMESPACE}}}",
        quiet=True,
    )
    kubectl("-n", OPERATOR_NAMESPACE, "rollout", "status", "deployment", "--timeout=180s", quiet=True)
    say("operator is running:")
    kubectl("-n", OPERATOR_NAMESPACE, "get", "pods", "-o", "wide")


def submit_job() -> None:
    kubectl("create", "namespace", NAMESPACE, check=False, quiet=True)
    if kubectl("-n", NAMESPACE, "get", "ltj", JOB, check=False, quiet=True).returncode == 0:
        # A job resumes from the newest checkpoint under its name: start the demo from scratch instead.
        say(f"deleting the previous {JOB} run and its checkpoints")
        kubectl("-n", NAMESPACE, "delete", "ltj", JOB, "--wait=true", "--timeout=120s", quiet=True)
        kubectl("-n", NAMESPACE, "delete", "pvc", "llmtrain-checkpoints", "--wait=true", "--timeout=120s", quiet=True)
    say(f"kubectl apply -f examples/checkpoint-pvc.yaml -f examples/tiny-cpu.yaml (namespace {NAMESPACE})")
    kubectl(
        "-n",
        NAMESPACE,
        "apply",
        "-f",
        str(REPO / "examples" / "checkpoint-pvc.yaml"),
        "-f",
        str(REPO / "examples" / "tiny-cpu.yaml"),
    )


def status_line(job: dict) -> str:
    st = job.get("status") or {}
    prog = st.get("progress") or {}
    parts = [f"phase={st.get('phase', 'Pending'):<10}"]
    nodes = job["spec"].get("nodes", "?")
    if st.get("phase") == "Succeeded":
        parts.append(f"{st.get('succeeded', 0)}/{nodes} nodes succeeded")
    else:
        parts.append(f"{st.get('ready', 0)}/{nodes} nodes ready")
    if prog.get("step") is not None:
        parts.append(f"step {prog['step']}/{prog.get('totalSteps', '?')}")
    if prog.get("loss") is not None:
        parts.append(f"loss {float(prog['loss']):.4f}")
    if prog.get("tokensPerSecond") is not None:
        parts.append(f"{float(prog['tokensPerSecond']):,.0f} tok/s")
    if prog.get("eta"):
        parts.append(f"ETA {prog['eta']}")
    if prog.get("lastCheckpointStep") is not None:
        parts.append(f"ckpt@{prog['lastCheckpointStep']}")
    if st.get("restarts"):
        parts.append(f"restarts {st['restarts']}")
    return "  ".join(parts)


def watch_job() -> dict:
    say(f"training; status from `kubectl get ltj {JOB} -n {NAMESPACE}` (updates in place)")
    deadline = time.monotonic() + TIMEOUT_S
    tty = sys.stdout.isatty()
    last = ""
    job: dict = {}
    while time.monotonic() < deadline:
        proc = kubectl("-n", NAMESPACE, "get", "ltj", JOB, "-o", "json", check=False, quiet=True)
        if proc.returncode == 0:
            job = json.loads(proc.stdout)
            line = status_line(job)
            if line != last:
                print(("\r\033[K" if tty else "") + line, end="" if tty else "\n", flush=True)
                last = line
            if (job.get("status") or {}).get("phase") in ("Succeeded", "Failed"):
                break
        time.sleep(1)
    if tty:
        print()
    return job


def main() -> int:
    started = time.monotonic()
    install_operator()
    submit_job()
    job = watch_job()
    phase = (job.get("status") or {}).get("phase")
    if phase != "Succeeded":
        say(f"the job did not succeed (phase {phase}); conditions:")
        for c in (job.get("status") or {}).get("conditions", []):
            print(f"  {c.get('type')}={c.get('status')} {c.get('reason', '')}: {c.get('message', '')}")
        kubectl("-n", NAMESPACE, "get", "events", "--sort-by=.lastTimestamp", check=False)
        return 1
    say(f"job {JOB} Succeeded in {time.monotonic() - started:.0f} s (demo total). Look around:")
    kubeconfig = _env()["KUBECONFIG"]
    print(f"""
  export KUBECONFIG={kubeconfig}
  export PATH={paths.bin_dir()}:$PATH
  kubectl get ltj -n {NAMESPACE}                       # Phase, Nodes, Step, Loss, Tok/s, Restarts, Age
  kubectl describe ltj {JOB} -n {NAMESPACE}            # conditions and events
  kubectl logs {JOB}-node-0 -n {NAMESPACE}             # node 0's torchrun and trainer output
  kubectl get pods,svc,cm -n {NAMESPACE} -l llmtrain.dev/job-name={JOB}
  kubectl -n {OPERATOR_NAMESPACE} logs deploy/llmtrain-llmtrain-operator   # the operator
  make cluster-down                                    # stop the local cluster
""")
    return 0


if __name__ == "__main__":
    sys.exit(main())
