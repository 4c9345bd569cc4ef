"""What the operator may do in the cluster, as data: the Helm chart's ClusterRole is tested against RULES.

Each rule is (apiGroups, resources, verbs) in the shape of a Kubernetes PolicyRule.
"""

from __future__ import annotations

from .constants import GROUP, PLURAL

RULES: list[dict[str, list[str]]] = [
    # The custom resource: watched, read, deleted when ttlSecondsAfterFinished expires; status written.
    {"apiGroups": [GROUP], "resources": [PLURAL], "verbs": ["get", "list", "watch", "delete"]},
    {"apiGroups": [GROUP], "resources": [f"{PLURAL}/status"], "verbs": ["get", "patch", "update"]},
    # Children carry blockOwnerDeletion: under OwnerReferencesPermissionEnforcement that needs update on finalizers.
    {"apiGroups": [GROUP], "resources": [f"{PLURAL}/finalizers"], "verbs": ["update"]},
    # Children.
    {"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list", "watch", "create", "delete"]},
    {"apiGroups": [""], "resources": ["services"], "verbs": ["get", "create", "delete"]},
    # patch: a new attempt (gang restart, resume) re-renders the trainer config from the edited spec.
    {"apiGroups": [""], "resources": ["configmaps"], "verbs": ["get", "create", "delete", "patch"]},
    # Native gangs: one scheduling.k8s.io PodGroup per attempt (Kubernetes 1.37+, GenericWorkload).
    {"apiGroups": ["scheduling.k8s.io"], "resources": ["podgroups"], "verbs": ["get", "create", "delete"]},
    # Events for every transition (kopf posts its own errors too).
    {"apiGroups": ["", "events.k8s.io"], "resources": ["events"], "verbs": ["create", "patch"]},
    # kopf: discovers CRDs and, when cluster-wide, namespaces.
    {"apiGroups": ["apiextensions.k8s.io"], "resources": ["customresourcedefinitions"], "verbs": ["list", "watch"]},
    {"apiGroups": [""], "resources": ["namespaces"], "verbs": ["list", "watch"]},
    # The memory preflight: which nodes have GPUs and how much memory each has (label nvidia.com/gpu.memory).
    {"apiGroups": [""], "resources": ["nodes"], "verbs": ["get", "list", "watch"]},
]


# Cluster-scoped resources among RULES: granted cluster-wide even when the operator watches listed namespaces (kopf's
# discovery of CRDs and namespaces; nodes' GPU memory for the memory preflight). Read-only.
CLUSTER_SCOPED_RESOURCES = frozenset({"customresourcedefinitions", "namespaces", "nodes"})


def allows(api_group: str, resource: str, verb: str, rules: list[dict[str, list[str]]] | None = None) -> bool:
    """Whether `rules` (default: RULES) grant verb on group/resource."""
    return any(
        api_group in r["apiGroups"] and resource in r["resources"] and verb in r["verbs"] for r in rules or RULES
    )


# With leader election (the chart's default, two replicas): the Lease in the operator's own namespace only.
LEADER_ELECTION_RULES: list[dict[str, list[str]]] = [
    {"apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "verbs": ["get", "create", "patch", "update"]},
]
