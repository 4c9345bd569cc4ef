"""A container's environment and argv, resolved the way the kubelet does (pure functions, no API calls)."""

from __future__ import annotations

import base64
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from .quantity import parse_quantity, resource_field_value

Lookup = Callable[[str], dict | None]  # name -> the ConfigMap/Secret object in the pod's namespace, or None

_INDEXED = re.compile(r"^metadata\.(labels|annotations)\['(.+)'\]$")


class EnvError(ValueError):
    """A reference that cannot be resolved; the kubelet reports it as CreateContainerConfigError."""


def expand(text: str, env: Mapping[str, str]) -> str:
    """Kubernetes $(VAR) expansion: known variables are replaced, unknown ones kept, `$$` escapes a `$`."""
    out: list[str] = []
    i = 0
    while i < len(text):
        ch = text[i]
        if ch == "$" and i + 1 < len(text):
            nxt = text[i + 1]
            if nxt == "$":
                out.append("$")
                i += 2
                continue
            if nxt == "(":
                end = text.find(")", i + 2)
                if end != -1:
                    name = text[i + 2 : end]
                    out.append(env[name] if name in env else text[i : end + 1])
                    i = end + 1
                    continue
        out.append(ch)
        i += 1
    return "".join(out)


@dataclass
class PodFacts:
    """What env and downward-API resolution needs besides the pod object itself."""

    pod_ip: str
    host_ip: str
    node_allocatable: dict[str, str] = field(default_factory=dict)


def field_ref_value(pod: dict, field_path: str, facts: PodFacts) -> str:
    """The value of a `fieldRef.fieldPath` for this pod."""
    meta, spec = pod.get("metadata", {}), pod.get("spec", {})
    simple = {
        "metadata.name": meta.get("name", ""),
        "metadata.namespace": meta.get("namespace", ""),
        "metadata.uid": meta.get("uid", ""),
        "spec.nodeName": spec.get("nodeName", ""),
        "spec.serviceAccountName": spec.get("serviceAccountName", "default"),
        "status.podIP": facts.pod_ip,
        "status.podIPs": facts.pod_ip,
        "status.hostIP": facts.host_ip,
        "status.hostIPs": facts.host_ip,
    }
    if field_path in simple:
        return simple[field_path]
    match = _INDEXED.match(field_path)
    if match:
        return (meta.get(match.group(1)) or {}).get(match.group(2), "")
    if field_path in ("metadata.labels", "metadata.annotations"):
        items = meta.get(field_path.split(".")[1]) or {}
        return "\n".join(f'{k}="{v}"' for k, v in sorted(items.items()))
    raise EnvError(f"fieldRef.fieldPath {field_path!r} is not supported")


def resource_ref_value(container: dict, ref: dict, facts: PodFacts) -> str:
    """The value of a `resourceFieldRef` (limits fall back to the node's allocatable, like the kubelet)."""
    resource = ref.get("resource", "")
    kind, _, name = resource.partition(".")
    if kind not in ("limits", "requests") or not name:
        raise EnvError(f"resourceFieldRef.resource {resource!r} is not supported")
    resources = container.get("resources", {})
    text = (resources.get(kind) or {}).get(name)
    if text is None and kind == "requests":
        text = (resources.get("limits") or {}).get(name)
    if text is None:
        text = facts.node_allocatable.get(name) if kind == "limits" else "0"
    if text is None:
        raise EnvError(f"resourceFieldRef {resource!r}: no limit and no node allocatable for {name}")
    return resource_field_value(parse_quantity(text), ref.get("divisor"), resource)


def _object_data(obj: dict, is_secret: bool) -> dict[str, str]:
    """Key -> text of a ConfigMap (data, binaryData) or a Secret (data is base64)."""
    data = obj.get("data") or {}
    if is_secret:
        return {k: base64.b64decode(v).decode(errors="replace") for k, v in data.items()}
    out = dict(data)
    out.update({k: base64.b64decode(v).decode(errors="replace") for k, v in (obj.get("binaryData") or {}).items()})
    return out


def _key_ref(ref: dict, lookup: Lookup, what: str, var: str, is_secret: bool) -> str | None:
    name, key = ref.get("name", ""), ref.get("key", "")
    obj = lookup(name)
    if obj is None:
        if ref.get("optional"):
            return None
        raise EnvError(f"env {var}: {what} {name!r} not found")
    data = _object_data(obj, is_secret)
    if key not in data:
        if ref.get("optional"):
            return None
        raise EnvError(f"env {var}: key {key!r} not found in {what} {name!r}")
    return data[key]


def resolve_env(
    container: dict,
    pod: dict,
    base_env: Mapping[str, str],
    facts: PodFacts,
    config_maps: Lookup,
    secrets: Lookup,
) -> dict[str, str]:
    """base_env, then envFrom, then env in order; values may reference earlier variables with $(VAR)."""
    env = dict(base_env)
    for source in container.get("envFrom") or []:
        prefix = source.get("prefix", "")
        for ref_key, lookup, what, is_secret in (
            ("configMapRef", config_maps, "configMap", False),
            ("secretRef", secrets, "secret", True),
        ):
            ref = source.get(ref_key)
            if ref is None:
                continue
            obj = lookup(ref.get("name", ""))
            if obj is None:
                if ref.get("optional"):
                    continue
                raise EnvError(f"envFrom: {what} {ref.get('name')!r} not found")
            for key, value in _object_data(obj, is_secret).items():
                env[prefix + key] = value
    for var in container.get("env") or []:
        name = var["name"]
        if "valueFrom" not in var:
            env[name] = expand(var.get("value", ""), env)
            continue
        source = var["valueFrom"]
        value: str | None
        if "fieldRef" in source:
            value = field_ref_value(pod, source["fieldRef"]["fieldPath"], facts)
        elif "resourceFieldRef" in source:
            value = resource_ref_value(container, source["resourceFieldRef"], facts)
        elif "configMapKeyRef" in source:
            value = _key_ref(source["configMapKeyRef"], config_maps, "configMap", name, False)
        elif "secretKeyRef" in source:
            value = _key_ref(source["secretKeyRef"], secrets, "secret", name, True)
        else:
            raise EnvError(f"env {name}: unsupported valueFrom {sorted(source)}")
        if value is not None:
            env[name] = value
    return env


def container_argv(container: dict, env: Mapping[str, str]) -> list[str]:
    """command + args with $(VAR) expanded; the image's entrypoint does not exist here, so command is required."""
    command = container.get("command") or []
    if not command:
        raise EnvError(
            f"container {container.get('name')!r}: the process kubelet ignores images, so `command` is required"
        )
    return [expand(a, env) for a in [*command, *(container.get("args") or [])]]
