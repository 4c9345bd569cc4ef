"""What a job with `spec.trainer` (the user's own script) gets instead of the built-in trainer's command and config.

The pods are the same (Service, DNS, rendezvous wait, torchrun with c10d on node 0, restarts); only the worker
command, the image, a few environment variables and the ConfigMap's content differ. The launch goes through
LAUNCH_TORCHRUN, a few lines run with `python -c` in the user's image (it needs only torch): it runs torchrun
in-process and exits with the workers' exit code, so a script's own `sys.exit(78)` reaches the pod's exit code
(plain torchrun exits 1 whatever a worker did) and the operator stops the job instead of restarting it.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from llmtrain_contract.exit_codes import PERMANENT_EXIT_CODES
from llmtrain_contract.metrics import METRICS_PATH

from .constants import CHECKPOINT_DIR, CUSTOM_JOB_FILE, RDZV_PORT

if TYPE_CHECKING:
    from .api import LLMTrainingJobSpec
    from .builders import JobRef

# torchrun, with its exit code mapped: the first permanent worker exit code (78 bad config, 79 diverged) wins, then
# the first worker's own code (a signal N as 128 + N), else 1. Kept to torch and the standard library.
LAUNCH_TORCHRUN = f"""\
import sys
from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
from torch.distributed.run import parse_args, run
PERMANENT = {sorted(PERMANENT_EXIT_CODES)}
try:
    run(parse_args(sys.argv[1:]))
except ChildFailedError as e:
    codes = [f.exitcode if f.exitcode >= 0 else 128 - f.exitcode for f in e.failures.values()]
    code = next((c for c in codes if c in PERMANENT), next((c for c in codes if c > 0), 1))
    print(e.format_msg(), file=sys.stderr, flush=True)
    print(f"llmtrain: worker exit codes {{sorted(set(codes))}}; the pod exits {{code}}", file=sys.stderr, flush=True)
    sys.exit(code)
"""


def checkpoint_dir(job_name: str, spec: LLMTrainingJobSpec) -> str | None:
    """The job's own directory on the checkpoint volume (as for the built-in trainer), None without one."""
    return f"{CHECKPOINT_DIR}/{job_name}" if spec.checkpoint is not None else None


def custom_command(torchrun_options: list[str], spec: LLMTrainingJobSpec) -> list[str]:
    """`torchrun <options> --no-python <command> <args>` through the exit-code-preserving wrapper."""
    assert spec.trainer is not None
    return [
        "python",
        "-c",
        LAUNCH_TORCHRUN,
        *torchrun_options,
        "--no-python",
        *spec.trainer.command,
        *spec.trainer.args,
    ]


def custom_env(job: JobRef, spec: LLMTrainingJobSpec, master_addr: str) -> dict[str, Any]:
    """What a custom script gets on top of the built-in trainer's environment (docs/custom-trainer.md)."""
    env: dict[str, Any] = {
        # Kubeflow's PyTorchJob sets these for torchrun; scripts written for it may read them. torchrun itself
        # uses them only for static rendezvous, which the operator never asks for.
        "PET_MASTER_ADDR": master_addr,
        "PET_MASTER_PORT": RDZV_PORT,
        "LLMTRAIN_METRICS_PORT": spec.metrics.port,
    }
    directory = checkpoint_dir(job.name, spec)
    if directory is not None and spec.checkpoint is not None:
        env["LLMTRAIN_CHECKPOINT_DIR"] = directory
        env["LLMTRAIN_CHECKPOINT_INTERVAL"] = spec.checkpoint.interval
        env["LLMTRAIN_CHECKPOINT_KEEP"] = spec.checkpoint.keep
    return env


def custom_job_file(job: JobRef, spec: LLMTrainingJobSpec) -> dict[str, str]:
    """The ConfigMap's data for a custom job: no TrainerConfig, only what the operator resolved (for reference)."""
    record = {
        "jobName": job.name,
        "trainer": "custom",
        "checkpointDir": checkpoint_dir(job.name, spec),
        "metricsPort": spec.metrics.port,
        "metricsPath": METRICS_PATH,
    }
    return {CUSTOM_JOB_FILE: json.dumps(record, indent=2)}
