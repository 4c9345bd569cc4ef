"""Helpers for the integration and e2e suites (the fixtures in pytest_plugin.py wrap these).

They work the same on the test bed and on any cluster KUBECONFIG points at (kind, a real cluster), so the very
same suites run there unchanged.
"""

from __future__ import annotations

import os
import re
import secrets
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

from . import cluster as testbed_cluster
from . import paths

if TYPE_CHECKING:
    from kubernetes.client import ApiClient

T = TypeVar("T")
KEEP_ENV = "LLMTRAIN_KEEP_CLUSTER"


def wait_for(
    predicate: Callable[[], T],
    timeout: float = 60.0,
    what: str = "condition",
    interval: float = 0.5,
    ignoring: tuple[type[BaseException], ...] = (),
) -> T:
    """Poll `predicate` until it returns something truthy and return that; fail naming `what` on timeout.

    Exceptions in `ignoring` count as "not yet" (e.g. a 404 while an object is being created).
    """
    deadline = time.monotonic() + timeout
    last: object = None
    while True:
        try:
            last = predicate()
            if last:
                return last
        except ignoring as error:
            last = error
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}; last value: {last!r}")
        time.sleep(interval)


@dataclass
class Cluster:
    """A reachable cluster: the test bed or whatever KUBECONFIG names."""

    kubeconfig: str  # a path (or a KUBECONFIG list) that kubectl, helm and the Python client all accept
    api_client: ApiClient
    is_testbed: bool

    def kubectl(
        self, *args: str, input: str | None = None, check: bool = True, timeout: float = 60.0
    ) -> subprocess.CompletedProcess[str]:
        """Run kubectl against this cluster; on failure (check=True) raise with its stderr in the message."""
        return self._run([paths.kubectl_binary(), *args], input=input, check=check, timeout=timeout)

    def helm(
        self, *args: str, input: str | None = None, check: bool = True, timeout: float = 120.0
    ) -> subprocess.CompletedProcess[str]:
        """Run helm against this cluster, with its caches in a scratch dir so runs do not share state."""
        built = paths.bin_dir() / "helm"
        helm = str(built) if built.is_file() else shutil.which("helm") or "helm"
        return self._run([helm, *args], input=input, check=check, timeout=timeout)

    def _run(self, argv: list[str], input: str | None, check: bool, timeout: float) -> subprocess.CompletedProcess[str]:
        scratch = Path(tempfile.gettempdir()) / "llmtrain-helm"
        env = {
            **os.environ,
            "KUBECONFIG": self.kubeconfig,
            "HELM_CACHE_HOME": str(scratch / "cache"),
            "HELM_CONFIG_HOME": str(scratch / "config"),
            "HELM_DATA_HOME": str(scratch / "data"),
        }
        result = subprocess.run(argv, input=input, capture_output=True, text=True, env=env, timeout=timeout)
        if check and result.returncode != 0:
            raise AssertionError(
                f"`{' '.join([Path(argv[0]).name, *argv[1:]])}` exited {result.returncode}:\n{result.stderr.strip()}"
            )
        return result


def _new_client(kubeconfig: str) -> ApiClient:
    from kubernetes import config

    return config.new_client_from_config(config_file=kubeconfig)


@contextmanager
def session_cluster(nodes: int | None = None, gpus_per_node: int | None = None) -> Iterator[Cluster]:
    """The cluster for a test session.

    KUBECONFIG set (and not the test bed's own): use that cluster as it is. Otherwise bring the test bed up
    (idempotent) and, if this session started it, bring it down afterwards unless LLMTRAIN_KEEP_CLUSTER=1.
    """
    external = os.environ.get("KUBECONFIG")
    own = testbed_cluster.admin_kubeconfig().resolve()
    if external and Path(external).expanduser().resolve() != own:
        client = _new_client(external)
        try:
            yield Cluster(kubeconfig=external, api_client=client, is_testbed=False)
        finally:
            client.close()
        return
    result = testbed_cluster.up(nodes=nodes, gpus_per_node=gpus_per_node)
    client = _new_client(str(result.kubeconfig))
    try:
        yield Cluster(kubeconfig=str(result.kubeconfig), api_client=client, is_testbed=True)
    finally:
        client.close()
        if "kube-apiserver" in result.started and os.environ.get(KEEP_ENV) != "1":
            testbed_cluster.down()


def namespace_name(test_name: str) -> str:
    """A valid, unique namespace name from a test's name: `test_foo[param]` -> `test-foo-param-3kq9x`."""
    base = re.sub(r"[^a-z0-9-]+", "-", test_name.lower()).strip("-")[:50].strip("-") or "test"
    alphabet = "abcdefghijklmnopqrstuvwxyz0123456789"
    return f"{base}-{''.join(secrets.choice(alphabet) for _ in range(5))}"


@contextmanager
def fresh_namespace(cluster: Cluster, test_name: str) -> Iterator[str]:
    """Create a namespace, wait for its `default` ServiceAccount (pods need it), delete it afterwards (no wait)."""
    from kubernetes import client

    core = client.CoreV1Api(cluster.api_client)
    name = namespace_name(test_name)
    body = client.V1Namespace(metadata=client.V1ObjectMeta(name=name, labels={"llmtrain.dev/test": "true"}))
    core.create_namespace(body)
    try:
        wait_for(
            lambda: core.list_namespaced_service_account(name, field_selector="metadata.name=default").items,
            timeout=30,
            what=f"the default ServiceAccount in namespace {name}",
        )
        yield name
    finally:
        core.delete_namespace(name, propagation_policy="Background")
