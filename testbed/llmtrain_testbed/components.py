"""Command lines of the real control-plane binaries, as pure functions of the state dir and the PKI."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from . import audit as audit_log
from . import paths
from .pki import Pki

ETCD_CLIENT_PORT = 12379  # not the default 2379/2380, so a host etcd does not clash
ETCD_PEER_PORT = 12380
APISERVER_PORT = 6443
CONTROLLER_MANAGER_PORT = 10257
SCHEDULER_PORT = 10259
ADVERTISE_ADDRESS = "10.88.0.1"  # the pod bridge's host address (network.py): pods reach the apiserver there
SERVICE_CIDR = "10.96.0.0/16"
SA_ISSUER = "https://kubernetes.default.svc.cluster.local"
# The Kubernetes Workload API (scheduling.k8s.io/v1beta1 PodGroup, gang scheduling) is beta and off by default in
# 1.37: the test bed turns it on in every component, so native gangs are tested against the real scheduler plugin.
FEATURE_GATES = "--feature-gates=GenericWorkload=true"
RUNTIME_CONFIG = "--runtime-config=scheduling.k8s.io/v1beta1=true"


@dataclass(frozen=True)
class Component:
    """One process of the control plane: its command line and the ports it must find free."""

    name: str
    argv: list[str]
    ports: tuple[tuple[str, int], ...]  # (bind host, port)


def etcd(state: Path) -> Component:
    client = f"http://127.0.0.1:{ETCD_CLIENT_PORT}"
    peer = f"http://127.0.0.1:{ETCD_PEER_PORT}"
    argv = [
        str(paths.binary("etcd")),
        "--name=testbed",
        f"--data-dir={state / 'etcd'}",
        f"--listen-client-urls={client}",
        f"--advertise-client-urls={client}",
        f"--listen-peer-urls={peer}",
        f"--initial-advertise-peer-urls={peer}",
        f"--initial-cluster=testbed={peer}",
        # Throwaway data on a shared 2-core machine: skipping fsync keeps the apiserver's writes fast.
        "--unsafe-no-fsync",
        "--log-level=warn",
    ]
    return Component("etcd", argv, (("127.0.0.1", ETCD_CLIENT_PORT), ("127.0.0.1", ETCD_PEER_PORT)))


def apiserver(state: Path, pki: Pki, audit: bool = False) -> Component:
    """`audit` adds the audit log (audit.py): write requests only, for benchmarks that count a client's writes."""
    argv = [
        str(paths.binary("kube-apiserver")),
        f"--etcd-servers=http://127.0.0.1:{ETCD_CLIENT_PORT}",
        "--bind-address=0.0.0.0",
        f"--secure-port={APISERVER_PORT}",
        f"--advertise-address={ADVERTISE_ADDRESS}",
        f"--cert-dir={state / 'apiserver'}",
        f"--tls-cert-file={pki.crt('apiserver')}",
        f"--tls-private-key-file={pki.key('apiserver')}",
        f"--client-ca-file={pki.ca_crt}",
        "--authorization-mode=Node,RBAC",
        # Added to the defaults, as on hardened clusters: setting blockOwnerDeletion needs update on owner/finalizers.
        "--enable-admission-plugins=OwnerReferencesPermissionEnforcement",
        f"--service-account-issuer={SA_ISSUER}",
        f"--service-account-key-file={pki.sa_pub}",
        f"--service-account-signing-key-file={pki.sa_key}",
        # No real endpoints for the `kubernetes` Service: pods are told 10.88.0.1:6443 directly.
        "--endpoint-reconciler-type=none",
        f"--service-cluster-ip-range={SERVICE_CIDR}",
        f"--kubelet-client-certificate={pki.crt('apiserver-kubelet-client')}",
        f"--kubelet-client-key={pki.key('apiserver-kubelet-client')}",
        f"--kubelet-certificate-authority={pki.ca_crt}",
        "--kubelet-preferred-address-types=InternalIP",
        "--allow-privileged=true",
        "--profiling=false",
        FEATURE_GATES,
        RUNTIME_CONFIG,
        *(audit_log.apiserver_flags(state) if audit else []),
    ]
    return Component("kube-apiserver", argv, (("0.0.0.0", APISERVER_PORT),))


def _api_client_component(name: str, state: Path, kubeconfig: Path, port: int, flags: list[str]) -> Component:
    """The controller-manager and the scheduler run alike: one kubeconfig for the API and for authn/authz of their
    own health endpoint (https on 127.0.0.1:`port`, self-signed certs in `<state>/<dir>`), no leader election."""
    argv = [
        str(paths.binary(name)),
        f"--kubeconfig={kubeconfig}",
        f"--authentication-kubeconfig={kubeconfig}",
        f"--authorization-kubeconfig={kubeconfig}",
        "--bind-address=127.0.0.1",
        f"--secure-port={port}",
        f"--cert-dir={state / name.removeprefix('kube-')}",
        "--leader-elect=false",
        FEATURE_GATES,
        *flags,
        "--profiling=false",
    ]
    return Component(name, argv, (("127.0.0.1", port),))


def controller_manager(state: Path, pki: Pki, kubeconfig: Path) -> Component:
    flags = [
        "--controllers=*",
        # Each controller acts as its own ServiceAccount, so RBAC sees the same identities as in a real cluster.
        "--use-service-account-credentials=true",
        f"--root-ca-file={pki.ca_crt}",
        f"--service-account-private-key-file={pki.sa_key}",
        f"--cluster-signing-cert-file={pki.ca_crt}",
        f"--cluster-signing-key-file={pki.key('ca')}",
        "--cluster-name=llmtrain",
    ]
    return _api_client_component("kube-controller-manager", state, kubeconfig, CONTROLLER_MANAGER_PORT, flags)


def scheduler(state: Path, kubeconfig: Path) -> Component:
    return _api_client_component("kube-scheduler", state, kubeconfig, SCHEDULER_PORT, [])


def kubelet(state: Path, pki: Pki, admin_kubeconfig: Path, nodes: int, gpus_per_node: int) -> Component:
    """The process kubelet (llmtrain_testbed.kubelet, owned by its own module); it runs in the project's venv."""
    argv = [
        paths.python(),
        "-m",
        "llmtrain_testbed.kubelet",
        f"--kubeconfig={admin_kubeconfig}",
        f"--state-dir={state / 'kubelet'}",
        f"--nodes={nodes}",
        f"--gpus-per-node={gpus_per_node}",
        f"--serving-cert={pki.crt('kubelet')}",
        f"--serving-key={pki.key('kubelet')}",
        f"--client-ca={pki.ca_crt}",
    ]
    return Component("kubelet", argv, ())
