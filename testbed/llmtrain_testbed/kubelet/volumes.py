"""Pod volumes as host directories that the launcher bind-mounts at each volumeMount's mountPath.

emptyDir -> <pod dir>/volumes/<name> (a tmpfs mounted there for medium Memory); configMap, secret, downwardAPI and
projected (incl. the service-account token from the TokenRequest API) -> files written into such a directory;
persistentVolumeClaim -> <state>/pvc/<namespace>/<claim>, which outlives pods; hostPath -> the path itself.
"""

from __future__ import annotations

import base64
import logging
import os
import subprocess
from collections.abc import Callable
from pathlib import Path

from .api import Api, ApiError
from .env import EnvError, PodFacts, field_ref_value, resource_ref_value

log = logging.getLogger("testbed.kubelet.volumes")

Lookup = Callable[[str], dict | None]
DEFAULT_TOKEN_SECONDS = 3607


class VolumeError(RuntimeError):
    """A volume cannot be set up yet (missing object, unsupported type); the pod waits in ContainerCreating."""


def pvc_dir(state_dir: Path, namespace: str, claim: str) -> Path:
    return state_dir / "pvc" / namespace / claim


def _write_files(target: Path, files: dict[str, tuple[bytes, int]]) -> None:
    """Write relative path -> (content, mode) under target, replacing what a previous setup left."""
    target.mkdir(parents=True, exist_ok=True)
    for rel, (content, mode) in files.items():
        if rel.startswith("/") or ".." in Path(rel).parts:
            raise VolumeError(f"volume item path {rel!r} must be relative and must not contain '..'")
        path = target / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_bytes(content)
        os.chmod(tmp, mode)
        os.replace(tmp, path)


def _object_bytes(obj: dict, is_secret: bool) -> dict[str, bytes]:
    data = obj.get("data") or {}
    if is_secret:
        return {k: base64.b64decode(v) for k, v in data.items()}
    out = {k: v.encode() for k, v in data.items()}
    out.update({k: base64.b64decode(v) for k, v in (obj.get("binaryData") or {}).items()})
    return out


def _key_files(source: dict, obj: dict | None, what: str, name: str, is_secret: bool, default_mode: int) -> dict:
    """Files of a configMap/secret source: every key, or just `items` (key -> path, mode)."""
    if obj is None:
        if source.get("optional"):
            return {}
        raise VolumeError(f"{what} {name!r} not found")
    data = _object_bytes(obj, is_secret)
    items = source.get("items")
    if not items:
        return {k: (v, default_mode) for k, v in data.items()}
    files = {}
    for item in items:
        if item["key"] not in data:
            if source.get("optional"):
                continue
            raise VolumeError(f"{what} {name!r} has no key {item['key']!r}")
        files[item["path"]] = (data[item["key"]], item.get("mode", default_mode))
    return files


class VolumeBuilder:
    """Materializes one pod's volumes; `build()` returns volume name -> host path."""

    def __init__(
        self,
        api: Api,
        pod: dict,
        pod_dir: Path,
        state_dir: Path,
        facts: PodFacts,
        config_maps: Lookup,
        secrets: Lookup,
    ) -> None:
        self.api = api
        self.pod = pod
        self.pod_dir = pod_dir
        self.state_dir = state_dir
        self.facts = facts
        self.config_maps = config_maps
        self.secrets = secrets
        self.ns = pod["metadata"]["namespace"]

    def build(self) -> dict[str, Path]:
        paths = {}
        for vol in self.pod.get("spec", {}).get("volumes") or []:
            paths[vol["name"]] = self._one(vol)
        return paths

    def _one(self, vol: dict) -> Path:
        name = vol["name"]
        target = self.pod_dir / "volumes" / name
        if "emptyDir" in vol:
            target.mkdir(parents=True, exist_ok=True)
            if (vol["emptyDir"] or {}).get("medium") == "Memory":
                self._mount_tmpfs(target, (vol["emptyDir"] or {}).get("sizeLimit"))
            return target
        if "persistentVolumeClaim" in vol:
            claim = vol["persistentVolumeClaim"]["claimName"]
            try:
                self.api.get(f"/api/v1/namespaces/{self.ns}/persistentvolumeclaims/{claim}")
            except ApiError as exc:
                raise VolumeError(f"volume {name}: persistentvolumeclaim {claim!r}: {exc}") from exc
            path = pvc_dir(self.state_dir, self.ns, claim)
            path.mkdir(parents=True, exist_ok=True)
            return path
        if "hostPath" in vol:
            path = Path(vol["hostPath"]["path"])
            kind = vol["hostPath"].get("type", "")
            if kind == "DirectoryOrCreate":
                path.mkdir(parents=True, exist_ok=True)
            elif kind == "FileOrCreate" and not path.exists():
                path.parent.mkdir(parents=True, exist_ok=True)
                path.touch()
            elif kind in ("Directory", "File") and not path.exists():
                raise VolumeError(f"volume {name}: hostPath {path} does not exist")
            return path
        if "configMap" in vol:
            src = vol["configMap"]
            files = _key_files(
                src, self.config_maps(src["name"]), "configmap", src["name"], False, src.get("defaultMode", 0o644)
            )
        elif "secret" in vol:
            src = vol["secret"]
            files = _key_files(
                src, self.secrets(src["secretName"]), "secret", src["secretName"], True, src.get("defaultMode", 0o644)
            )
        elif "downwardAPI" in vol:
            files = self._downward(vol["downwardAPI"].get("items") or [], vol["downwardAPI"].get("defaultMode", 0o644))
        elif "projected" in vol:
            files = self._projected(vol["projected"])
        else:
            kinds = sorted(k for k in vol if k != "name")
            raise VolumeError(f"volume {name}: type {kinds} is not supported by the process kubelet")
        _write_files(target, files)
        return target

    def _mount_tmpfs(self, target: Path, size: str | None) -> None:
        if os.path.ismount(target):
            return
        opts = "mode=1777" + (f",size={size}" if size else "")
        proc = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", opts, "tmpfs", str(target)], capture_output=True, text=True
        )
        if proc.returncode != 0:
            raise VolumeError(f"emptyDir Memory at {target}: {proc.stderr.strip()}")

    def _downward(self, items: list[dict], default_mode: int) -> dict:
        files = {}
        for item in items:
            try:
                if "fieldRef" in item:
                    value = field_ref_value(self.pod, item["fieldRef"]["fieldPath"], self.facts)
                else:
                    ref = item["resourceFieldRef"]
                    container = next(
                        (c for c in self.pod["spec"]["containers"] if c["name"] == ref.get("containerName")),
                        self.pod["spec"]["containers"][0],
                    )
                    value = resource_ref_value(container, ref, self.facts)
            except EnvError as exc:
                raise VolumeError(f"downwardAPI {item.get('path')}: {exc}") from exc
            files[item["path"]] = (value.encode(), item.get("mode", default_mode))
        return files

    def _projected(self, projected: dict) -> dict:
        mode = projected.get("defaultMode", 0o644)
        files: dict = {}
        for source in projected.get("sources") or []:
            if "serviceAccountToken" in source:
                sat = source["serviceAccountToken"]
                files[sat["path"]] = (self._token(sat).encode(), mode)
            elif "configMap" in source:
                src = source["configMap"]
                files.update(_key_files(src, self.config_maps(src["name"]), "configmap", src["name"], False, mode))
            elif "secret" in source:
                src = source["secret"]
                files.update(_key_files(src, self.secrets(src["name"]), "secret", src["name"], True, mode))
            elif "downwardAPI" in source:
                files.update(self._downward(source["downwardAPI"].get("items") or [], mode))
            else:
                raise VolumeError(f"projected source {sorted(source)} is not supported by the process kubelet")
        return files

    def _token(self, sat: dict) -> str:
        """A bound service-account token for this pod from the TokenRequest API (RBAC then sees the real SA)."""
        meta = self.pod["metadata"]
        service_account = self.pod["spec"].get("serviceAccountName") or "default"
        spec: dict = {
            "expirationSeconds": sat.get("expirationSeconds", DEFAULT_TOKEN_SECONDS),
            "boundObjectRef": {"kind": "Pod", "apiVersion": "v1", "name": meta["name"], "uid": meta["uid"]},
        }
        if sat.get("audience"):
            spec["audiences"] = [sat["audience"]]
        body = {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest", "spec": spec}
        try:
            answer = self.api.create(f"/api/v1/namespaces/{self.ns}/serviceaccounts/{service_account}/token", body)
        except ApiError as exc:
            raise VolumeError(f"service account token for {self.ns}/{service_account}: {exc}") from exc
        return answer["status"]["token"]


def unmount_under(root: Path) -> None:
    """Unmount every mount (emptyDir tmpfs) below root, deepest first, so the directory can be removed."""
    prefix = str(root.resolve()) + "/"
    with open("/proc/self/mountinfo") as f:
        points = [line.split()[4] for line in f]
    for point in sorted((p for p in points if p.startswith(prefix)), key=len, reverse=True):
        subprocess.run(["umount", "-l", point], capture_output=True)
