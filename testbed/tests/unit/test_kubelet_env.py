"""Container environment resolution of the process kubelet, as Kubernetes specifies it."""

from __future__ import annotations

import base64

import pytest
from llmtrain_testbed.kubelet.env import EnvError, PodFacts, container_argv, expand, resolve_env

POD = {
    "metadata": {
        "name": "trainer-0",
        "namespace": "team-a",
        "uid": "u-1",
        "labels": {"app": "llm"},
        "annotations": {"note": "hi"},
    },
    "spec": {"nodeName": "llmtrain-node-1", "serviceAccountName": "runner"},
}
FACTS = PodFacts(pod_ip="10.88.0.7", host_ip="10.88.0.1", node_allocatable={"cpu": "64", "memory": "512Gi"})
CONFIG = {"settings": {"data": {"lr": "0.1", "steps": "10"}}}
SECRETS = {"creds": {"data": {"token": base64.b64encode(b"s3cret").decode()}}}


def _resolve(container: dict) -> dict[str, str]:
    return resolve_env(container, POD, {"BASE": "b"}, FACTS, CONFIG.get, SECRETS.get)


def test_expand_replaces_known_variables_and_keeps_unknown_ones():
    assert expand("$(A)-$(B)-$$(A)-$", {"A": "1"}) == "1-$(B)-$(A)-$"


def test_field_refs_resolve_pod_metadata_ip_and_node():
    env = _resolve(
        {
            "env": [
                {"name": "POD", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
                {"name": "NS", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
                {"name": "UID", "valueFrom": {"fieldRef": {"fieldPath": "metadata.uid"}}},
                {"name": "APP", "valueFrom": {"fieldRef": {"fieldPath": "metadata.labels['app']"}}},
                {"name": "NOTE", "valueFrom": {"fieldRef": {"fieldPath": "metadata.annotations['note']"}}},
                {"name": "IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
                {"name": "HOST", "valueFrom": {"fieldRef": {"fieldPath": "status.hostIP"}}},
                {"name": "NODE", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}},
            ]
        }
    )
    assert (env["POD"], env["NS"], env["UID"], env["APP"], env["NOTE"]) == ("trainer-0", "team-a", "u-1", "llm", "hi")
    assert (env["IP"], env["HOST"], env["NODE"]) == ("10.88.0.7", "10.88.0.1", "llmtrain-node-1")
    assert env["BASE"] == "b"


def test_config_map_and_secret_key_refs_and_env_from_with_prefix():
    env = _resolve(
        {
            "envFrom": [{"configMapRef": {"name": "settings"}, "prefix": "CFG_"}],
            "env": [
                {"name": "LR", "valueFrom": {"configMapKeyRef": {"name": "settings", "key": "lr"}}},
                {"name": "TOKEN", "valueFrom": {"secretKeyRef": {"name": "creds", "key": "token"}}},
                {"name": "MISSING", "valueFrom": {"secretKeyRef": {"name": "nope", "key": "x", "optional": True}}},
            ],
        }
    )
    assert env["LR"] == "0.1" and env["CFG_steps"] == "10" and env["TOKEN"] == "s3cret"
    assert "MISSING" not in env


def test_a_missing_config_map_names_the_variable_and_the_object():
    with pytest.raises(EnvError, match="env LR: configMap 'absent' not found"):
        _resolve({"env": [{"name": "LR", "valueFrom": {"configMapKeyRef": {"name": "absent", "key": "lr"}}}]})


def test_resource_field_refs_round_up_and_fall_back_to_node_allocatable():
    env = _resolve(
        {
            "resources": {"limits": {"memory": "1Gi"}, "requests": {"cpu": "250m"}},
            "env": [
                {"name": "CPU_REQ", "valueFrom": {"resourceFieldRef": {"resource": "requests.cpu"}}},
                {"name": "CPU_LIM", "valueFrom": {"resourceFieldRef": {"resource": "limits.cpu"}}},
                {"name": "MEM_MI", "valueFrom": {"resourceFieldRef": {"resource": "limits.memory", "divisor": "1Mi"}}},
            ],
        }
    )
    assert (env["CPU_REQ"], env["CPU_LIM"], env["MEM_MI"]) == ("1", "64", "1024")


def test_env_values_and_args_expand_earlier_variables():
    container = {
        "command": ["python", "-c"],
        "args": ["print('$(GREETING)')", "$(UNKNOWN)"],
        "env": [{"name": "NAME", "value": "world"}, {"name": "GREETING", "value": "hello $(NAME)"}],
    }
    env = _resolve(container)
    assert container_argv(container, env) == ["python", "-c", "print('hello world')", "$(UNKNOWN)"]


def test_a_container_without_command_is_refused_with_the_reason():
    with pytest.raises(EnvError, match="`command` is required"):
        container_argv({"name": "main", "image": "busybox"}, {})
