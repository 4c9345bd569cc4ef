"""Builders: every spec field lands where it should on the ConfigMap, Service and node pods."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from llmtrain_operator.api import LLMTrainingJobSpec
from llmtrain_operator.builders import JobRef, SpecError, build_config_map, build_pod, build_service

FIXTURES = Path(__file__).parent / "fixtures"
JOB = JobRef("gpt2-fsdp", "research", "uid-123")


def load(name: str) -> LLMTrainingJobSpec:
    return LLMTrainingJobSpec.model_validate(yaml.safe_load((FIXTURES / name).read_text())["spec"])


def env_of(pod: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in pod["spec"]["containers"][0]["env"]}


@pytest.fixture
def gpu_spec() -> LLMTrainingJobSpec:
    return load("gpt2-gpu-fsdp.yaml")


def test_children_carry_job_label_and_a_controller_owner_reference(gpu_spec):
    for child in (build_config_map(JOB, gpu_spec), build_service(JOB, gpu_spec), build_pod(JOB, gpu_spec, 1, 0, "i")):
        meta = child["metadata"]
        assert meta["namespace"] == "research"
        assert meta["labels"]["llmtrain.dev/job-name"] == "gpt2-fsdp"
        (owner,) = meta["ownerReferences"]
        assert owner == {
            "apiVersion": "llmtrain.dev/v1alpha1",
            "kind": "LLMTrainingJob",
            "name": "gpt2-fsdp",
            "uid": "uid-123",
            "controller": True,
            "blockOwnerDeletion": True,
        }


def test_config_map_holds_the_trainer_config_json(gpu_spec):
    cm = build_config_map(JOB, gpu_spec)
    assert cm["metadata"]["name"] == "gpt2-fsdp-config"
    config = json.loads(cm["data"]["config.json"])
    assert config["jobName"] == "gpt2-fsdp"
    assert config["model"] == {"preset": "gpt2-124m", "maxSeqLen": 1024}
    assert config["data"]["source"] == "/data/openwebtext.bin" and config["data"]["tokenizer"] == "tiktoken:gpt2"
    assert config["parallelism"] == {
        "dataParallel": "fsdp",
        "sharding": "hybrid",
        "tensorParallel": 1,
        "lossParallel": True,
    }
    assert config["optimizer"]["lr"] == 0.0006
    assert config["schedule"]["warmupSteps"] == 200
    assert config["training"]["activationCheckpointing"] == "selective" and config["training"]["compile"] is True
    # one directory per job on the claim: jobs may share it
    assert config["checkpoint"] == {
        "dir": "/checkpoints/gpt2-fsdp",
        "interval": 500,
        "keep": 2,
        "asyncSave": True,
        "saveOnSigterm": True,
        "export": "none",
    }
    assert config["metrics"]["port"] == 9100


def test_no_checkpoint_section_means_no_checkpoint_dir():
    config = json.loads(build_config_map(JOB, load("tiny-cpu.yaml"))["data"]["config.json"])
    assert "dir" not in config["checkpoint"]


def test_service_is_headless_publishes_not_ready_addresses_and_exposes_rdzv_and_metrics(gpu_spec):
    svc = build_service(JOB, gpu_spec)
    assert svc["metadata"]["name"] == "gpt2-fsdp"
    assert svc["spec"]["clusterIP"] == "None"
    assert svc["spec"]["publishNotReadyAddresses"] is True
    assert svc["spec"]["selector"] == {"llmtrain.dev/job-name": "gpt2-fsdp"}
    assert {p["name"]: p["port"] for p in svc["spec"]["ports"]} == {"rdzv": 29400, "metrics": 9100}


def test_pod_dns_fields_and_restart_policy(gpu_spec):
    pod = build_pod(JOB, gpu_spec, 2, 0, "default-image")
    spec = pod["spec"]
    assert pod["metadata"]["name"] == "gpt2-fsdp-node-2"
    assert spec["hostname"] == "gpt2-fsdp-node-2"
    assert spec["subdomain"] == "gpt2-fsdp"
    assert spec["restartPolicy"] == "Never"
    assert spec["automountServiceAccountToken"] is False
    assert pod["metadata"]["labels"]["llmtrain.dev/node-rank"] == "2"
    assert pod["metadata"]["labels"]["llmtrain.dev/attempt"] == "0"


def test_pod_command_is_an_explicit_torchrun_with_c10d_rendezvous_on_node_0(gpu_spec):
    container = build_pod(JOB, gpu_spec, 3, 1, "i")["spec"]["containers"][0]
    assert container["command"] == [
        "torchrun",
        "--nnodes=4",
        "--nproc-per-node=8",
        "--node-rank=3",
        "--rdzv-backend=c10d",
        "--rdzv-endpoint=gpt2-fsdp-node-0.gpt2-fsdp:29400",
        "--rdzv-id=uid-123",
        "--rdzv-conf=join_timeout=1800",
        "-m",
        "llmtrain_trainer",
        "--config",
        "/etc/llmtrain/config.json",
    ]


def test_pod_env_has_torchrun_variables_pod_ip_and_nccl_with_gpus(gpu_spec):
    env = env_of(build_pod(JOB, gpu_spec, 3, 1, "i"))
    assert env["PET_NNODES"] == "4" and env["PET_NPROC_PER_NODE"] == "8" and env["PET_NODE_RANK"] == "3"
    assert env["NODE_RANK"] == "3" and env["WORLD_SIZE"] == "32"
    assert env["MASTER_ADDR"] == "gpt2-fsdp-node-0.gpt2-fsdp" and env["MASTER_PORT"] == "29400"
    assert env["POD_IP"] == {"fieldRef": {"fieldPath": "status.podIP"}}
    assert env["LLMTRAIN_JOB_NAME"] == "gpt2-fsdp"
    assert env["LLMTRAIN_BACKEND"] == "nccl"
    assert env["LLMTRAIN_RESTART_ATTEMPT"] == "1"
    assert env["LLMTRAIN_TERMINATION_LOG"] == "/dev/termination-log"
    assert env["NCCL_DEBUG"] == "WARN"  # from podTemplate, merged after the operator's


def test_cpu_job_uses_gloo_and_its_integer_procs_per_node():
    pod = build_pod(JobRef("tiny-cpu", "default", "u"), load("tiny-cpu.yaml"), 0, 0, "img")
    env = env_of(pod)
    assert env["LLMTRAIN_BACKEND"] == "gloo"
    assert env["PET_NPROC_PER_NODE"] == "2" and env["WORLD_SIZE"] == "4"
    assert "--nproc-per-node=2" in pod["spec"]["containers"][0]["command"]
    assert pod["spec"]["containers"][0]["resources"] == {}


def test_image_defaults_to_the_operator_setting():
    spec = load("tiny-cpu.yaml")
    assert build_pod(JOB, spec, 0, 0, "operator-default:1")["spec"]["containers"][0]["image"] == "operator-default:1"
    spec = load("gpt2-gpu-fsdp.yaml")
    image = build_pod(JOB, spec, 0, 0, "operator-default:1")["spec"]["containers"][0]["image"]
    assert image == "registry.example/llmtrain-trainer:0.1.0"


def test_multi_node_pods_wait_for_the_rendezvous_name_to_resolve_before_torchrun(gpu_spec):
    pod = build_pod(JOB, gpu_spec, 2, 0, "img")
    [init] = pod["spec"]["initContainers"]
    assert init["name"] == "wait-for-rendezvous" and init["image"] == pod["spec"]["containers"][0]["image"]
    assert init["command"][:2] == ["python", "-c"]
    assert init["command"][3:] == ["gpt2-fsdp-node-0.gpt2-fsdp", "0"]  # 0: no limit, queueing is not a failure
    assert init["securityContext"] == pod["spec"]["containers"][0]["securityContext"]


def test_single_node_pods_and_test_commands_need_no_rendezvous_wait(gpu_spec):
    single = gpu_spec.model_copy(update={"nodes": 1})
    assert "initContainers" not in build_pod(JOB, single, 0, 0, "i")["spec"]
    assert "initContainers" not in build_pod(JOB, gpu_spec, 0, 0, "i", command=["true"])["spec"]


def test_rendezvous_wait_script_exits_once_the_name_resolves_and_fails_after_its_timeout():
    import subprocess
    import sys

    from llmtrain_operator.builders import WAIT_FOR_RENDEZVOUS

    ok = subprocess.run([sys.executable, "-c", WAIT_FOR_RENDEZVOUS, "localhost", "5"], capture_output=True, text=True)
    assert ok.returncode == 0 and "localhost resolves" in ok.stdout
    missing = "no-such-pod.no-such-job.invalid"
    bad = subprocess.run([sys.executable, "-c", WAIT_FOR_RENDEZVOUS, missing, "0.1"], capture_output=True, text=True)
    assert bad.returncode == 1 and f"{missing} did not resolve" in bad.stderr


def test_pod_security_context_satisfies_the_restricted_profile(gpu_spec):
    pod = build_pod(JOB, gpu_spec, 0, 0, "i")
    psc = pod["spec"]["securityContext"]
    assert psc["runAsNonRoot"] is True and psc["runAsUser"] == 1000
    assert psc["seccompProfile"] == {"type": "RuntimeDefault"}
    csc = pod["spec"]["containers"][0]["securityContext"]
    assert csc["allowPrivilegeEscalation"] is False
    assert csc["capabilities"] == {"drop": ["ALL"]}
    assert csc["runAsNonRoot"] is True
    assert "hostNetwork" not in pod["spec"] and "hostPID" not in pod["spec"]


def test_pod_volumes_config_shm_checkpoint_and_template_extras(gpu_spec):
    pod = build_pod(JOB, gpu_spec, 0, 0, "i")
    volumes = {v["name"]: v for v in pod["spec"]["volumes"]}
    assert volumes["llmtrain-config"]["configMap"] == {"name": "gpt2-fsdp-config"}
    assert volumes["dshm"]["emptyDir"] == {"medium": "Memory"}
    assert volumes["checkpoints"]["persistentVolumeClaim"] == {"claimName": "gpt2-ckpt"}
    assert volumes["data"]["persistentVolumeClaim"] == {"claimName": "openwebtext"}
    mounts = {m["mountPath"]: m["name"] for m in pod["spec"]["containers"][0]["volumeMounts"]}
    assert mounts == {
        "/etc/llmtrain": "llmtrain-config",
        "/dev/shm": "dshm",
        "/checkpoints": "checkpoints",
        "/data": "data",
    }


def test_checkpoint_volume_may_be_any_volume_source():
    pod = build_pod(JobRef("llama-tp", "default", "u"), load("llama-tp.yaml"), 0, 0, "i")
    volumes = {v["name"]: v for v in pod["spec"]["volumes"]}
    assert volumes["checkpoints"] == {"name": "checkpoints", "nfs": {"server": "nfs.example", "path": "/ckpt"}}


def test_pod_requests_gpus_and_declares_ports_and_termination_message_policy(gpu_spec):
    container = build_pod(JOB, gpu_spec, 0, 0, "i")["spec"]["containers"][0]
    assert container["resources"]["limits"] == {"nvidia.com/gpu": "8"}
    assert container["resources"]["requests"]["nvidia.com/gpu"] == "8"
    assert {p["name"]: p["containerPort"] for p in container["ports"]} == {"rdzv": 29400, "metrics": 9100}
    assert container["terminationMessagePolicy"] == "FallbackToLogsOnError"


def test_a_node_pod_leaves_a_lost_node_after_60s_not_kubernetes_default_300s(gpu_spec):
    tolerations = build_pod(JOB, gpu_spec, 0, 0, "i")["spec"]["tolerations"]
    lost = {t["key"]: t for t in tolerations if t["key"].startswith("node.kubernetes.io/")}
    assert set(lost) == {"node.kubernetes.io/not-ready", "node.kubernetes.io/unreachable"}
    assert all(t["effect"] == "NoExecute" and t["tolerationSeconds"] == 60 for t in lost.values())


def test_a_jobs_own_lost_node_toleration_wins(gpu_spec):
    own = {"key": "node.kubernetes.io/unreachable", "operator": "Exists", "effect": "NoExecute"}
    own["tolerationSeconds"] = 900
    spec = gpu_spec.model_copy(deep=True)
    spec.scheduling.tolerations.append(own)
    tolerations = build_pod(JOB, spec, 0, 0, "i")["spec"]["tolerations"]
    assert [t for t in tolerations if t["key"] == "node.kubernetes.io/unreachable"] == [own]
    assert any(t["key"] == "node.kubernetes.io/not-ready" for t in tolerations)


def test_scheduling_fields_and_kueue_queue_label(gpu_spec):
    pod = build_pod(JOB, gpu_spec, 0, 0, "i")
    spec = pod["spec"]
    assert spec["priorityClassName"] == "training"
    assert spec["nodeSelector"] == {"gpu.example/type": "h100"}
    assert spec["tolerations"][0] == {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
    assert spec["serviceAccountName"] == "trainer"
    assert pod["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "team-a"
    assert pod["metadata"]["labels"]["team"] == "research"
    assert pod["metadata"]["annotations"] == {"example.com/owner": "alice"}
    assert "schedulerName" not in spec  # unset fields stay unset


@pytest.mark.parametrize(
    ("template", "field"),
    [
        ({"env": [{"name": "MASTER_ADDR", "value": "evil"}]}, "spec.podTemplate.env[0].name"),
        ({"labels": {"llmtrain.dev/node-rank": "9"}}, "spec.podTemplate.labels.llmtrain.dev/node-rank"),
        ({"volumes": [{"name": "dshm", "emptyDir": {}}]}, "spec.podTemplate.volumes[0].name"),
        ({"volumeMounts": [{"name": "x", "mountPath": "/etc/llmtrain"}]}, "spec.podTemplate.volumeMounts[0].mountPath"),
    ],
)
def test_pod_template_cannot_override_operator_owned_fields(template, field):
    raw = yaml.safe_load((FIXTURES / "tiny-cpu.yaml").read_text())["spec"]
    spec = LLMTrainingJobSpec.model_validate({**raw, "podTemplate": template})
    with pytest.raises(SpecError, match=field.replace(".", r"\.").replace("[", r"\[")):
        build_pod(JOB, spec, 0, 0, "i")


def test_dev_command_replaces_torchrun_only_when_given(gpu_spec):
    pod = build_pod(JOB, gpu_spec, 0, 0, "i", command=["python", "-c", "pass"])
    assert pod["spec"]["containers"][0]["command"] == ["python", "-c", "pass"]
