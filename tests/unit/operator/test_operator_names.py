"""Child names: every valid LLMTrainingJob name yields valid, stable, bounded names for the Service, the ConfigMap,
the node pods and their hostnames, the rendezvous host and the job-name label; names that already fit are kept."""

from __future__ import annotations

import re

import pytest
from llmtrain_operator.api import LLMTrainingJobSpec
from llmtrain_operator.builders import JobRef, build_config_map, build_pod, build_service
from llmtrain_operator.constants import (
    MAX_NODES,
    child_stem,
    config_map_name,
    job_label_value,
    pod_name,
    rendezvous_host,
    service_name,
)
from llmtrain_operator.observe import owning_job

DNS1035_LABEL = re.compile(r"^[a-z]([-a-z0-9]{0,61}[a-z0-9])?$")
DNS1123_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
DNS1123_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")

# Valid LLMTrainingJob names (DNS-1123 subdomains up to 253 characters) that today's scheme would break.
AWKWARD = [
    "llama-3.1-8b",
    "7b-run",  # starts with a digit: fine for a pod, not for a Service
    "a" * 100,
    "x" * 253,
    "run." + "b" * 248,
    ".".join(["seg"] * 60)[:253].rstrip("."),
]
SPEC = LLMTrainingJobSpec.model_validate(
    {"nodes": 2, "procsPerNode": 1, "model": {"preset": "tiny"}, "training": {"steps": 1, "globalBatchSize": 2}}
)


@pytest.mark.parametrize("name", ["demo", "gpt2-fsdp", "wired", "a" * 53])
def test_names_that_already_fit_are_kept(name):
    assert service_name(name) == name
    assert config_map_name(name) == f"{name}-config"
    assert pod_name(name, 3) == f"{name}-node-3"
    assert rendezvous_host(name) == f"{name}-node-0.{name}"
    assert job_label_value(name) == name


@pytest.mark.parametrize("name", AWKWARD)
def test_every_valid_job_name_gives_valid_child_names(name):
    assert DNS1123_SUBDOMAIN.match(name) and len(name) <= 253  # the input is a valid job name
    assert DNS1035_LABEL.match(service_name(name))
    assert DNS1123_SUBDOMAIN.match(config_map_name(name)) and len(config_map_name(name)) <= 253
    for rank in (0, MAX_NODES - 1):
        assert DNS1123_LABEL.match(pod_name(name, rank)), pod_name(name, rank)  # the hostname is the pod name
    host, subdomain = rendezvous_host(name).split(".")
    assert (host, subdomain) == (pod_name(name, 0), service_name(name))
    assert LABEL_VALUE.match(job_label_value(name)) and len(job_label_value(name)) <= 63


def test_a_derived_name_keeps_a_readable_prefix_and_a_hash_of_the_whole_name():
    assert re.fullmatch(r"llama-3-1-8b-[0-9a-f]{8}", child_stem("llama-3.1-8b"))
    assert child_stem("7b-run").startswith("j7b-run-")


def test_derived_names_are_stable_and_distinct():
    assert child_stem("llama-3.1-8b") == child_stem("llama-3.1-8b")
    # the dot-free spelling is a different job and keeps its own name; long names sharing a prefix differ too
    assert child_stem("llama-3.1-8b") != child_stem("llama-3-1-8b") == "llama-3-1-8b"
    assert child_stem("a" * 100) != child_stem("a" * 101)


@pytest.mark.parametrize("name", ["llama-3.1-8b", "a" * 100])
def test_built_children_use_the_derived_names(name):
    job = JobRef(name, "ns", "uid-1")
    service, config = build_service(job, SPEC), build_config_map(job, SPEC)
    pod = build_pod(job, SPEC, 1, 0, "img")
    assert service["metadata"]["name"] == service_name(name)
    assert service["spec"]["selector"] == {"llmtrain.dev/job-name": job_label_value(name)}
    assert config["metadata"]["name"] == config_map_name(name)
    assert pod["metadata"]["name"] == pod["spec"]["hostname"] == pod_name(name, 1)
    assert pod["spec"]["subdomain"] == service_name(name)
    assert pod["metadata"]["labels"]["llmtrain.dev/job-name"] == job_label_value(name)
    env = {e["name"]: e.get("value") for e in pod["spec"]["containers"][0]["env"]}
    assert env["MASTER_ADDR"] == rendezvous_host(name) and env["LLMTRAIN_JOB_NAME"] == name
    assert {"name": "llmtrain-config", "configMap": {"name": config_map_name(name)}} in pod["spec"]["volumes"]
    assert pod["metadata"]["ownerReferences"][0]["name"] == name


def test_a_pod_is_indexed_under_the_full_name_of_the_job_that_controls_it():
    pod = build_pod(JobRef("a" * 100, "ns", "uid-1"), SPEC, 0, 0, "img")
    assert owning_job(pod) == "a" * 100
    assert owning_job({"metadata": {"ownerReferences": [{"kind": "Other", "name": "x", "controller": True}]}}) is None
