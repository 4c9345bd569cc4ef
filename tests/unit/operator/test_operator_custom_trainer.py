"""A job with `spec.trainer` runs the user's own script under the same torchrun gang as the built-in trainer."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from llmtrain_contract.exit_codes import PERMANENT_EXIT_CODES
from llmtrain_contract.metrics import METRICS_PATH
from llmtrain_operator import crdgen
from llmtrain_operator.api import BUILTIN_FIELDS, LLMTrainingJobSpec
from llmtrain_operator.builders import JobRef, build_config_map, build_pod, build_service, torchrun_command
from llmtrain_operator.custom_trainer import LAUNCH_TORCHRUN
from llmtrain_operator.reconcile import JobView, reconcile
from llmtrain_operator.validate import parse_spec, validate_spec
from reconcile_inputs import NOW, RUNNING, SETTINGS, cond, pod, seen

REPO = Path(__file__).resolve().parents[3]
JOB = JobRef("mine", "team", "uid-7")
CUSTOM: dict[str, Any] = {
    "nodes": 2,
    "procsPerNode": 2,
    "trainer": {
        "command": ["python", "/workspace/train.py"],
        "args": ["--steps", "100"],
        "env": [{"name": "MY_FLAG", "value": "1"}],
        "workingDir": "/workspace",
    },
    "checkpoint": {"claimName": "ckpt", "interval": 25, "keep": 4},
}


def spec(**changes: Any) -> LLMTrainingJobSpec:
    return LLMTrainingJobSpec.model_validate({**CUSTOM, **changes})


def container(pod_manifest: dict[str, Any]) -> dict[str, Any]:
    return pod_manifest["spec"]["containers"][0]


def env_of(pod_manifest: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container(pod_manifest)["env"]}


# -- the API ----------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("field", BUILTIN_FIELDS)
def test_a_built_in_trainer_field_on_a_custom_job_is_rejected_naming_it(field):
    value = {
        "model": {"preset": "tiny"},
        "precision": "fp32",
        "training": {"steps": 1, "globalBatchSize": 1},
        "evaluation": {"source": "/data/val"},
    }
    parsed, errors = parse_spec({**CUSTOM, field: value.get(field, {})})
    assert parsed is None
    assert field in str(errors[0]) and "built-in trainer" in str(errors[0])


def test_the_built_in_trainer_still_needs_model_and_training():
    parsed, errors = parse_spec({"nodes": 1})
    assert parsed is None and "model, training" in str(errors[0])


def test_crd_rejects_each_built_in_field_on_a_custom_job_by_cel_naming_it():
    rules = crdgen.render_crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    by_path = {(r.get("fieldPath"), r["rule"]): r["message"] for r in rules["x-kubernetes-validations"]}
    for field in BUILTIN_FIELDS:
        message = by_path[(f".{field}", f"!has(self.trainer) || !has(self.{field})")]
        assert message.startswith(f"{field} is a built-in trainer field")
    assert (".trainer", "has(self.trainer) == has(oldSelf.trainer)") in by_path
    assert (".parallelism", "has(self.parallelism) == has(oldSelf.parallelism)") in by_path


def test_built_in_sections_have_no_server_side_default_so_cel_sees_what_the_user_wrote():
    props = crdgen.render_crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]
    for field in BUILTIN_FIELDS:
        assert "default" not in props[field], field
        assert "x-llmtrain-builtin" not in json.dumps(props[field])
    assert props["runPolicy"]["default"] == {} and props["metrics"]["default"] == {}  # shared sections keep theirs
    assert props["parallelism"]["properties"]["dataParallel"]["default"] == "fsdp"  # nested defaults still apply


def test_crd_refuses_torchrun_as_the_command():
    trainer = crdgen.render_crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"][
        "properties"
    ]["trainer"]
    (rule,) = trainer["x-kubernetes-validations"]
    assert "torchrun" in rule["rule"] and rule["fieldPath"] == ".command"
    assert trainer["required"] == ["command"] and trainer["properties"]["command"]["minItems"] == 1


def test_trainer_env_may_not_replace_what_torchrun_and_the_contract_need():
    errors = validate_spec(
        spec(trainer={"command": ["python", "t.py"], "env": [{"name": "MASTER_ADDR", "value": "x"}]})
    )
    assert [str(e) for e in errors] == ["spec.trainer.env[0].name: MASTER_ADDR is set by the operator"]


def test_the_model_and_batch_checks_do_not_apply_to_a_custom_job():
    assert validate_spec(spec()) == []


# -- the pods ---------------------------------------------------------------------------------------------------------


def test_custom_command_runs_under_the_same_torchrun_options_through_the_exit_code_wrapper():
    built_in = LLMTrainingJobSpec.model_validate(
        {"nodes": 2, "procsPerNode": 2, "model": {"preset": "tiny"}, "training": {"steps": 1, "globalBatchSize": 4}}
    )
    command = torchrun_command(JOB, spec(), 1)
    assert command[:3] == ["python", "-c", LAUNCH_TORCHRUN]
    options = torchrun_command(JOB, built_in, 1)[1:-4]  # between `torchrun` and `-m llmtrain_trainer --config X`
    assert command[3 : 3 + len(options)] == options
    assert "--rdzv-endpoint=mine-node-0.mine:29400" in options and "--nnodes=2" in options
    assert command[3 + len(options) :] == ["--no-python", "python", "/workspace/train.py", "--steps", "100"]


def test_custom_pod_env_adds_the_contract_variables_to_the_built_in_ones():
    env = env_of(build_pod(JOB, spec(), 1, 3, "default:img"))
    assert env["PET_NNODES"] == "2" and env["PET_NPROC_PER_NODE"] == "2" and env["PET_NODE_RANK"] == "1"
    assert env["MASTER_ADDR"] == env["PET_MASTER_ADDR"] == "mine-node-0.mine"
    assert env["MASTER_PORT"] == env["PET_MASTER_PORT"] == "29400"
    assert env["WORLD_SIZE"] == "4" and env["LLMTRAIN_BACKEND"] == "gloo"
    assert env["LLMTRAIN_RESTART_ATTEMPT"] == "3"
    assert env["LLMTRAIN_CHECKPOINT_DIR"] == "/checkpoints/mine"
    assert (env["LLMTRAIN_CHECKPOINT_INTERVAL"], env["LLMTRAIN_CHECKPOINT_KEEP"]) == ("25", "4")
    assert env["LLMTRAIN_METRICS_PORT"] == "9090"
    assert env["MY_FLAG"] == "1"


def test_without_a_checkpoint_volume_there_is_no_checkpoint_dir():
    env = env_of(build_pod(JOB, spec(checkpoint=None), 0, 0, "img"))
    assert "LLMTRAIN_CHECKPOINT_DIR" not in env


def test_custom_pod_image_working_dir_and_the_rest_of_the_pod_as_for_the_built_in_trainer():
    pod_manifest = build_pod(JOB, spec(), 1, 0, "default:img")
    assert container(pod_manifest)["image"] == "default:img"
    assert container(pod_manifest)["workingDir"] == "/workspace"
    assert pod_manifest["spec"]["subdomain"] == "mine" and pod_manifest["spec"]["restartPolicy"] == "Never"
    assert pod_manifest["spec"]["initContainers"][0]["name"] == "wait-for-rendezvous"
    assert container(build_pod(JOB, spec(image="org/img:2"), 0, 0, "d"))["image"] == "org/img:2"
    trainer = {**CUSTOM["trainer"], "image": "me/script:1"}
    assert container(build_pod(JOB, spec(trainer=trainer), 0, 0, "d"))["image"] == "me/script:1"
    ports = {p["name"] for p in build_service(JOB, spec())["spec"]["ports"]}
    assert ports == {"rdzv", "metrics"}


def test_kueue_and_scheduling_apply_to_custom_pods_as_to_built_in_ones():
    scheduled = spec(scheduling={"queueName": "team-a", "priorityClassName": "high"}, runPolicy={"suspend": True})
    pod_manifest = build_pod(JOB, scheduled, 0, 0, "img")
    assert pod_manifest["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "team-a"
    assert pod_manifest["spec"]["priorityClassName"] == "high"


def test_custom_job_config_map_holds_what_the_operator_resolved_not_a_trainer_config():
    data = build_config_map(JOB, spec())["data"]
    assert set(data) == {"job.json"}
    assert json.loads(data["job.json"]) == {
        "jobName": "mine",
        "trainer": "custom",
        "checkpointDir": "/checkpoints/mine",
        "metricsPort": 9090,
        "metricsPath": METRICS_PATH,
    }


def test_the_wrapper_maps_every_permanent_exit_code_of_the_contract():
    assert f"PERMANENT = {sorted(PERMANENT_EXIT_CODES)}" in LAUNCH_TORCHRUN
    compile(LAUNCH_TORCHRUN, "<launch>", "exec")


@pytest.mark.slow  # starts torchrun
@pytest.mark.parametrize(("worker", "code"), [("sys.exit(78)", 78), ("sys.exit(3)", 3)])
def test_the_wrapper_exits_with_the_workers_code_where_torchrun_alone_exits_1(tmp_path, worker, code):
    script = tmp_path / "w.py"
    script.write_text(f"import sys\n{worker}\n")
    argv = [sys.executable, "-c", LAUNCH_TORCHRUN, "--standalone", "--nproc-per-node=1", "--no-python"]
    result = subprocess.run([*argv, sys.executable, str(script)], capture_output=True, text=True, timeout=120)
    assert result.returncode == code, result.stderr[-2000:]


# -- the examples -----------------------------------------------------------------------------------------------------

EXAMPLES = sorted((REPO / "examples" / "custom").glob("*/job.yaml"))


def test_there_is_an_example_for_ddp_hugging_face_deepspeed_and_a_pytorchjob_script():
    assert {p.parent.name for p in EXAMPLES} == {"ddp", "huggingface", "deepspeed", "pytorchjob"}


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.parent.name)
def test_each_custom_example_is_a_valid_job_running_the_script_next_to_it(path):
    job = yaml.safe_load(path.read_text())
    parsed, errors = parse_spec(job["spec"])
    assert parsed is not None and parsed.trainer is not None, errors
    assert validate_spec(parsed) == []
    mount = parsed.pod_template.volume_mounts[0]["mountPath"]
    scripts = [arg for arg in [*parsed.trainer.command, *parsed.trainer.args] if arg.startswith(mount + "/")]
    for script in scripts:  # the ConfigMap made from the directory holds it
        assert (path.parent / script.removeprefix(mount + "/")).is_file(), script
    configmap = parsed.pod_template.volumes[0]["configMap"]["name"]
    assert f"kubectl create configmap {configmap} --from-file=examples/custom/{path.parent.name}/" in path.read_text()


# -- status -----------------------------------------------------------------------------------------------------------


def _custom_job(status: dict[str, Any]) -> JobView:
    return JobView(name="demo", namespace="ns", uid="uid-1", spec={**CUSTOM, "checkpoint": None}, status=status)


def test_a_running_custom_job_without_progress_says_what_needs_it():
    decision = reconcile(_custom_job(RUNNING), seen(pod(0), pod(1)), NOW, SETTINGS)
    message = cond(decision, "Running")["message"]
    assert "no progress reported on port 9090" in message and "docs/custom-trainer.md" in message


def test_the_note_goes_once_the_script_reports_progress():
    from llmtrain_operator.api import Progress

    decision = reconcile(_custom_job(RUNNING), seen(pod(0), pod(1)), NOW, SETTINGS, Progress(step=3))
    assert cond(decision, "Running")["message"] == "all 2 node pods running"


def test_memory_preflight_leaves_a_custom_script_to_the_scheduler_its_model_being_unknown():
    from llmtrain_operator.memory_preflight import preflight

    gpus = {"requests": {"nvidia.com/gpu": 8}, "limits": {"nvidia.com/gpu": 8}}
    spec, errors = parse_spec({**CUSTOM, "procsPerNode": 8, "resources": gpus})
    assert errors == [] and preflight(spec, 80 * 2**30) is None
