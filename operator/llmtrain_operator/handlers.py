"""kopf wiring: registers the handlers that drive a controller.Controller. No policy and no runtime logic here.

* LLMTrainingJob events and node-pod events both just *trigger* a reconcile of the job (the Controller coalesces);
  a job event also hands over the job's body, so the reconcile needs no GET. The reconcile runs in a task of its
  own: a handler that awaited it kept kopf's worker, and the event body it holds, for as long as the reconcile's
  writes took (at 1,000 jobs, thousands of pod bodies held at once).
* Node pods are kept in a kopf index (label llmtrain.dev/job-name) as PodViews, keyed by the job that controls
  them (its ownerReference: the label holds a shortened name for jobs named longer than 63), so a reconcile lists
  nothing.
* GPU nodes are kept in a second index (node name -> GpuNode: labels, allocatable GPUs, nvidia.com/gpu.memory) for
  the admission-time memory preflight, and nodes that stopped reporting in a third (pods there are never confirmed
  deleted); a node event triggers nothing.
* The index functions are coroutines: kopf runs a plain function in a worker thread, a hop per pod event.
* Startup starts the Controller's resync loop; login gives it its Kubernetes client.
"""

from __future__ import annotations

import functools
import logging
import os
from dataclasses import replace
from typing import Any

import kopf

from .constants import GROUP, LABEL_JOB, PLURAL, VERSION
from .controller import Controller, Key
from .gpu_nodes import GpuNode, gpu_node
from .kubeapi import KubeClient
from .observe import PodView, node_unreachable, owning_job, pod_view


def in_cluster_login(**kwargs: Any) -> kopf.ConnectionInfo | None:
    """kopf's service-account login, but addressing the API server the way client-go does.

    kopf's own helper hard-codes https://kubernetes.default.svc:443; the documented in-cluster contract is
    KUBERNETES_SERVICE_HOST/PORT, which also holds where the API server does not listen on 443.
    """
    info = kopf.login_with_service_account(**kwargs)
    host, port = os.environ.get("KUBERNETES_SERVICE_HOST"), os.environ.get("KUBERNETES_SERVICE_PORT")
    if info is None or not host or not port:
        return info
    host = f"[{host}]" if ":" in host else host
    return replace(info, server=f"https://{host}:{port}")


def configure_watching(settings: kopf.OperatorSettings) -> None:
    """Watch settings. The pod watch is filtered by the API server (labelSelector=llmtrain.dev/job-name): the
    handlers' own `labels=` filters are applied by kopf client-side, after every pod in the namespace (or the
    cluster) has been sent, deserialised and cached; only watching.label_selectors reaches the API server."""
    settings.watching.server_timeout = 300  # ask the API server to end each watch after 5 min...
    settings.watching.client_timeout = 330  # ...and give up on a silent connection a little later
    settings.watching.connect_timeout = 10
    settings.watching.label_selectors["pods"] = LABEL_JOB  # the label exists
    settings.posting.level = logging.WARNING  # our transition events are posted by the Controller


def log_in(**kwargs: Any) -> kopf.ConnectionInfo | None:
    """In the cluster: the service account (its token file is read anew on every call). Outside: the kubeconfig,
    read by the official client's loader, which runs exec plugins (EKS, GKE, OIDC helpers) and reads tokenFile
    anew on every call: a login after a 401 gets fresh credentials (kopf's own kubeconfig reader takes a static
    token only)."""
    return in_cluster_login(**kwargs) or kopf.login_via_client(**kwargs)


def register(registry: kopf.OperatorRegistry, controller: Controller) -> None:
    """Attach the handlers to `registry`, closing over `controller`."""

    @kopf.on.startup(registry=registry, id="configure")
    async def configure(settings: kopf.OperatorSettings, **_: Any) -> None:
        configure_watching(settings)
        controller.start()

    @kopf.on.cleanup(registry=registry, id="shutdown")
    async def shutdown(**_: Any) -> None:
        await controller.stop()

    @kopf.on.login(registry=registry, id="login")
    def login(**kwargs: Any) -> kopf.ConnectionInfo | None:
        info = log_in(**kwargs)
        if info is not None and controller.client is None:
            # kopf logs in again for its own watches when refused; our client does the same, with the same handler.
            controller.client = KubeClient(info, login=functools.partial(log_in, **kwargs))
        elif info is not None and isinstance(controller.client, KubeClient):
            controller.client.info = info  # kopf's re-login (a rotated token): our client uses it too
        return info

    @kopf.index("pods", labels={LABEL_JOB: kopf.PRESENT}, registry=registry, id="node_pods")
    async def node_pods(body: kopf.Body, namespace: str, labels: kopf.Labels, **_: Any) -> dict[Key, PodView]:
        return {(namespace, owning_job(dict(body)) or labels[LABEL_JOB]): pod_view(dict(body))}

    @kopf.index("nodes", registry=registry, id="gpu_nodes")
    async def gpu_nodes(body: kopf.Body, **_: Any) -> dict[str, GpuNode]:
        node = gpu_node(dict(body))
        return {node.name: node} if node is not None else {}  # {}, not None: a node that lost its GPUs drops out

    def adopt_indices(kwargs: dict[str, Any]) -> None:
        """kopf passes every index to every handler, by id; the controller reads them between events."""
        controller.pods_index, controller.nodes_index = kwargs["node_pods"], kwargs["gpu_nodes"]
        controller.unreachable_index = kwargs["unreachable_nodes"]

    @kopf.index("nodes", registry=registry, id="unreachable_nodes")
    async def unreachable_nodes(body: kopf.Body, name: str, **_: Any) -> dict[str, bool]:
        return {name: True} if node_unreachable(dict(body)) else {}

    @kopf.on.event(GROUP, VERSION, PLURAL, registry=registry, id="job_event")
    async def job_event(type: str, body: kopf.Body, namespace: str, name: str, **indices: Any) -> None:
        adopt_indices(indices)
        if type == "DELETED":
            controller.forget((namespace, name))
            return
        controller.watched((namespace, name), body)
        controller.spawn((namespace, name))

    @kopf.on.event("pods", labels={LABEL_JOB: kopf.PRESENT}, registry=registry, id="pod_event")
    async def pod_event(body: kopf.Body, namespace: str, labels: kopf.Labels, **indices: Any) -> None:
        adopt_indices(indices)
        key = (namespace, owning_job(dict(body)) or labels[LABEL_JOB])
        if key in controller.slots:  # pods of jobs we have never seen are not ours to act on yet
            controller.spawn(key)
