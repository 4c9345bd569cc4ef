"""A dynamic volume provisioner for the test bed: claims of the default StorageClass get a hostPath directory.

Every fake node lives on this one machine, so a host directory really is shared by all of them and can honestly
back ReadWriteMany claims (a training job's checkpoint volume), which the controller-manager's built-in hostPath
provisioner refuses. The real PV controller in kube-controller-manager still does the binding: this process only
creates PersistentVolumes pre-bound to a claim (claimRef), as external provisioners do, and deletes released
volumes whose reclaim policy is Delete.

    python -m testbed.provisioner --kubeconfig K --root DIR
"""

from __future__ import annotations

import argparse
import logging
import shutil
import signal
import threading
from pathlib import Path

from kubernetes import client, config
from kubernetes.client.rest import ApiException

PROVISIONER = "testbed.llmtrain.dev/hostpath"
STORAGE_CLASS = "standard"
log = logging.getLogger("testbed.provisioner")


def storage_class() -> dict:
    """The default StorageClass the test bed installs (the name kind uses too)."""
    return {
        "apiVersion": "storage.k8s.io/v1",
        "kind": "StorageClass",
        "metadata": {
            "name": STORAGE_CLASS,
            "annotations": {"storageclass.kubernetes.io/is-default-class": "true"},
        },
        "provisioner": PROVISIONER,
        "reclaimPolicy": "Delete",
        "volumeBindingMode": "Immediate",
    }


def volume_for(pvc: client.V1PersistentVolumeClaim, root: Path) -> dict:
    """The PV that satisfies a claim: a host directory, pre-bound to the claim (pure)."""
    name = f"pvc-{pvc.metadata.uid}"
    return {
        "apiVersion": "v1",
        "kind": "PersistentVolume",
        "metadata": {"name": name, "annotations": {"pv.kubernetes.io/provisioned-by": PROVISIONER}},
        "spec": {
            "capacity": {"storage": (pvc.spec.resources.requests or {}).get("storage", "1Gi")},
            "accessModes": pvc.spec.access_modes or ["ReadWriteOnce"],
            "persistentVolumeReclaimPolicy": "Delete",
            "storageClassName": STORAGE_CLASS,
            "volumeMode": pvc.spec.volume_mode or "Filesystem",
            "hostPath": {"path": str(root / name), "type": "DirectoryOrCreate"},
            "claimRef": {
                "apiVersion": "v1",
                "kind": "PersistentVolumeClaim",
                "namespace": pvc.metadata.namespace,
                "name": pvc.metadata.name,
                "uid": pvc.metadata.uid,
            },
        },
    }


def wants_volume(pvc: client.V1PersistentVolumeClaim) -> bool:
    """Pending claims of our class (or of no class: the admission plugin fills in the default) without a volume."""
    return (
        pvc.status.phase == "Pending"
        and not pvc.spec.volume_name
        and pvc.spec.storage_class_name in (STORAGE_CLASS, None)
        and pvc.metadata.deletion_timestamp is None
    )


def sync_once(core: client.CoreV1Api, root: Path) -> None:
    """Level-triggered: provision every waiting claim, delete every released volume of ours."""
    for pvc in core.list_persistent_volume_claim_for_all_namespaces().items:
        if not wants_volume(pvc):
            continue
        body = volume_for(pvc, root)
        Path(body["spec"]["hostPath"]["path"]).mkdir(parents=True, exist_ok=True, mode=0o777)
        Path(body["spec"]["hostPath"]["path"]).chmod(0o777)  # pods may run as any non-root user
        try:
            core.create_persistent_volume(body)
            log.info("provisioned %s for claim %s/%s", body["metadata"]["name"], pvc.metadata.namespace,
                     pvc.metadata.name)  # fmt: skip
        except ApiException as e:
            if e.status != 409:
                raise
    for pv in core.list_persistent_volume().items:
        ours = (pv.metadata.annotations or {}).get("pv.kubernetes.io/provisioned-by") == PROVISIONER
        if ours and pv.status.phase == "Released" and pv.spec.persistent_volume_reclaim_policy == "Delete":
            path = Path(pv.spec.host_path.path)
            if path.is_relative_to(root):
                shutil.rmtree(path, ignore_errors=True)
            try:
                core.delete_persistent_volume(pv.metadata.name)
                log.info("deleted released volume %s", pv.metadata.name)
            except ApiException as e:
                if e.status != 404:
                    raise


def ensure_storage_class(kubeconfig: str) -> None:
    api = client.StorageV1Api(config.new_client_from_config(config_file=kubeconfig))
    try:
        api.create_storage_class(storage_class())
    except ApiException as e:
        if e.status != 409:
            raise


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kubeconfig", required=True)
    parser.add_argument("--root", required=True, type=Path, help="host directory that holds the volumes")
    parser.add_argument("--interval", type=float, default=1.0, help="seconds between syncs")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    args.root.mkdir(parents=True, exist_ok=True)
    ensure_storage_class(args.kubeconfig)
    core = client.CoreV1Api(config.new_client_from_config(config_file=args.kubeconfig))
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    log.info("provisioning claims of StorageClass %s under %s", STORAGE_CLASS, args.root)
    while not stop.is_set():
        try:
            sync_once(core, args.root)
        except Exception:  # an API hiccup must not end provisioning; the next sync retries
            log.exception("sync failed")
        stop.wait(args.interval)


if __name__ == "__main__":
    main()
