"""A local-path volume provisioner (what kind ships as its default StorageClass), so PVCs bind on the test bed.

Without it a pod using a PVC would never be scheduled: the real scheduler waits for the claim to be bound. The
default StorageClass `standard` names this provisioner; for every pending claim of that class it creates a
hostPath PV pointing at <state>/pvc/<namespace>/<claim> (the directory the kubelet mounts) and lets the real PV
controller bind them. Released PVs are deleted together with their directory (reclaimPolicy Delete).
"""

from __future__ import annotations

import logging
import shutil
import threading
from pathlib import Path

from .api import Api, ApiError
from .volumes import pvc_dir

log = logging.getLogger("testbed.kubelet.provisioner")

PROVISIONER = "llmtrain.dev/local-path"
STORAGE_CLASS = "standard"


def storage_class() -> dict:
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


def volume_for_claim(claim: dict, path: Path) -> dict:
    """The PV that satisfies a pending claim of our class."""
    meta, spec = claim["metadata"], claim["spec"]
    size = ((spec.get("resources") or {}).get("requests") or {}).get("storage", "1Gi")
    return {
        "apiVersion": "v1",
        "kind": "PersistentVolume",
        "metadata": {"name": f"pvc-{meta['uid']}", "annotations": {"pv.kubernetes.io/provisioned-by": PROVISIONER}},
        "spec": {
            "capacity": {"storage": size},
            "accessModes": spec.get("accessModes") or ["ReadWriteOnce"],
            "persistentVolumeReclaimPolicy": "Delete",
            "storageClassName": spec.get("storageClassName", STORAGE_CLASS),
            "volumeMode": spec.get("volumeMode", "Filesystem"),
            "hostPath": {"path": str(path), "type": "DirectoryOrCreate"},
            "claimRef": {
                "apiVersion": "v1",
                "kind": "PersistentVolumeClaim",
                "namespace": meta["namespace"],
                "name": meta["name"],
                "uid": meta["uid"],
            },
        },
    }


class Provisioner:
    """Polls claims and volumes every 2 s (a handful of objects on a test bed)."""

    def __init__(self, api: Api, state_dir: Path, stop: threading.Event) -> None:
        self.api = api
        self.state_dir = state_dir
        self.stop = stop
        self.thread = threading.Thread(target=self._run, name="provisioner", daemon=True)

    def start(self) -> None:
        try:
            self.api.create("/apis/storage.k8s.io/v1/storageclasses", storage_class())
            log.info("created default StorageClass %s", STORAGE_CLASS)
        except ApiError as exc:
            if exc.status != 409:
                log.warning("cannot create StorageClass %s: %s", STORAGE_CLASS, exc)
        self.thread.start()

    def _ours(self) -> set[str]:
        classes = self.api.get("/apis/storage.k8s.io/v1/storageclasses").get("items", [])
        return {c["metadata"]["name"] for c in classes if c.get("provisioner") == PROVISIONER}

    def sync(self) -> None:
        classes = self._ours()
        for claim in self.api.get("/api/v1/persistentvolumeclaims").get("items", []):
            spec, meta = claim["spec"], claim["metadata"]
            if claim.get("status", {}).get("phase") != "Pending" or spec.get("volumeName"):
                continue
            if spec.get("storageClassName") not in classes or meta.get("deletionTimestamp"):
                continue
            path = pvc_dir(self.state_dir, meta["namespace"], meta["name"])
            path.mkdir(parents=True, exist_ok=True)
            volume = volume_for_claim(claim, path)
            try:
                self.api.create("/api/v1/persistentvolumes", volume)
                log.info("provisioned %s for claim %s/%s", path, meta["namespace"], meta["name"])
            except ApiError as exc:
                if exc.status != 409:
                    raise
            # Touch the claim: the PV controller binds on a claim event at once, else only at its 15 s resync.
            self.api.merge_patch(
                f"/api/v1/namespaces/{meta['namespace']}/persistentvolumeclaims/{meta['name']}",
                {"metadata": {"annotations": {"llmtrain.dev/provisioned-volume": volume["metadata"]["name"]}}},
            )
        for pv in self.api.get("/api/v1/persistentvolumes").get("items", []):
            annotations = pv["metadata"].get("annotations") or {}
            if annotations.get("pv.kubernetes.io/provisioned-by") != PROVISIONER:
                continue
            if pv.get("status", {}).get("phase") in ("Released", "Failed"):
                path = Path(pv["spec"].get("hostPath", {}).get("path", ""))
                if path.is_relative_to(self.state_dir / "pvc"):
                    shutil.rmtree(path, ignore_errors=True)
                try:
                    self.api.delete(f"/api/v1/persistentvolumes/{pv['metadata']['name']}")
                    log.info("deleted released volume %s", pv["metadata"]["name"])
                except ApiError as exc:
                    if exc.status != 404:
                        raise

    def _run(self) -> None:
        while not self.stop.is_set():
            try:
                self.sync()
            except Exception as exc:
                log.warning("provisioner sync failed: %s", exc)
            self.stop.wait(2)
