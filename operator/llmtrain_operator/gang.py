"""All-or-nothing placement of a job's node pods: no pod holds a GPU unless the whole gang can run.

Two mechanisms, chosen per job (spec.scheduling.gang, reported in status.gang):

- native: the Kubernetes Workload API. One `scheduling.k8s.io/v1beta1` PodGroup per attempt with a gang policy of
  minCount = nodes, owned by the job; each pod names it in `spec.schedulingGroup.podGroupName`. The scheduler's
  GangScheduling plugin binds none of them until all fit (feature gate GenericWorkload, beta and off by default in
  Kubernetes 1.37; `auto` uses it only when the API server serves PodGroups).
- kueue: with spec.scheduling.queueName the pods of one attempt are one Kueue plain-pod group (group name +
  total count). Kueue's webhook gates each pod, and the group is admitted as one Workload against the queue's quota,
  whole or not at all; a preempted group's pods are evicted and the operator's next attempt queues again. Kueue's
  webhook is built against an older pod API and would drop `schedulingGroup`, so a queued job does not also get a
  native PodGroup.
"""

from __future__ import annotations

from typing import Any, Literal

from .api import LLMTrainingJobSpec
from .builders import JobRef, owner_reference
from .constants import (
    ANNOTATION_KUEUE_GROUP_TOTAL,
    ANNOTATION_KUEUE_RETRIABLE,
    LABEL_KUEUE_POD_GROUP,
    pod_group_name,
)

GangMode = Literal["native", "kueue", "none"]
POD_GROUP_API_VERSION = "scheduling.k8s.io/v1beta1"


class GangUnavailable(ValueError):
    """spec.scheduling.gang is native but the API server does not serve PodGroups."""


def gang_mode(spec: LLMTrainingJobSpec, native_available: bool) -> GangMode:
    """Which mechanism places this job's gang (see the module docstring); raises GangUnavailable."""
    requested = spec.scheduling.gang
    if spec.scheduling.queue_name:
        return "kueue"
    if requested == "native" and not native_available:
        raise GangUnavailable(
            "spec.scheduling.gang is native but the API server does not serve scheduling.k8s.io/v1beta1 PodGroups "
            "(Kubernetes 1.37+ with the GenericWorkload feature gate and that API version enabled)"
        )
    if requested == "native" or (requested == "auto" and native_available):
        return "native"
    return "none"


def build_pod_group(job: JobRef, nodes: int, attempt: int) -> dict[str, Any]:
    """The attempt's PodGroup: the scheduler binds its pods only when all `nodes` of them fit."""
    return {
        "apiVersion": POD_GROUP_API_VERSION,
        "kind": "PodGroup",
        "metadata": {
            "name": pod_group_name(job.name, attempt),
            "namespace": job.namespace,
            "ownerReferences": [owner_reference(job)],
        },
        "spec": {"schedulingPolicy": {"gang": {"minCount": nodes}}},
    }


def place_in_gang(pod: dict[str, Any], mode: GangMode, job: JobRef, nodes: int, attempt: int) -> dict[str, Any]:
    """The pod, made a member of its attempt's gang (unchanged for mode none)."""
    group = pod_group_name(job.name, attempt)
    if mode == "native":
        pod["spec"]["schedulingGroup"] = {"podGroupName": group}
    elif mode == "kueue":
        pod["metadata"]["labels"][LABEL_KUEUE_POD_GROUP] = group
        annotations = pod["metadata"].setdefault("annotations", {})
        annotations[ANNOTATION_KUEUE_GROUP_TOTAL] = str(nodes)
        # A failed pod ends the group (the operator restarts the gang as a new group), releasing its quota.
        annotations[ANNOTATION_KUEUE_RETRIABLE] = "false"
    return pod
