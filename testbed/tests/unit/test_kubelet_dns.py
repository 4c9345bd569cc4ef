"""The per-pod hosts file that stands in for cluster DNS."""

from __future__ import annotations

from llmtrain_testbed.kubelet.dns import pod_hostname, render_hosts, render_resolv_conf, write_in_place


def _pod(
    name: str, ip: str, *, subdomain: str | None = "job", ready: bool = False, ns: str = "t", uid: str = ""
) -> dict:
    spec = {"hostname": name}
    if subdomain:
        spec["subdomain"] = subdomain
    return {
        "metadata": {"name": name, "namespace": ns, "uid": uid or name, "labels": {"job": "job"}},
        "spec": spec,
        "status": {
            "podIP": ip,
            "phase": "Running",
            "conditions": [{"type": "Ready", "status": "True" if ready else "False"}],
        },
    }


def _headless(name: str = "job", *, not_ready: bool = True, ns: str = "t") -> dict:
    return {
        "metadata": {"name": name, "namespace": ns},
        "spec": {"clusterIP": "None", "selector": {"job": "job"}, "publishNotReadyAddresses": not_ready},
    }


def _lines(text: str) -> dict[str, str]:
    """name -> ip"""
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            ip, *names = line.split()
            for n in names:
                out.setdefault(n, ip)
    return out


def test_the_pod_itself_comes_first_with_its_fqdn():
    me = _pod("job-node-0", "10.88.0.2")
    text = render_hosts(me, "10.88.0.2", [me], [], "10.88.0.1")
    first_pod_line = text.splitlines()[3]
    assert first_pod_line.split() == ["10.88.0.2", "job-node-0.job.t.svc.cluster.local", "job-node-0"]


def test_peers_resolve_by_every_form_when_their_subdomain_is_a_headless_service():
    me, peer = _pod("job-node-0", "10.88.0.2"), _pod("job-node-1", "10.88.0.3")
    names = _lines(render_hosts(me, "10.88.0.2", [me, peer], [_headless()], "10.88.0.1"))
    for name in ("job-node-1.job.t.svc.cluster.local", "job-node-1.job.t.svc", "job-node-1.job.t", "job-node-1.job"):
        assert names[name] == "10.88.0.3"
    assert names["job-node-0.job"] == "10.88.0.2"
    assert names["job.t.svc.cluster.local"] in ("10.88.0.2", "10.88.0.3")


def test_not_ready_peers_are_hidden_unless_the_service_publishes_them():
    me, peer = _pod("job-node-0", "10.88.0.2"), _pod("job-node-1", "10.88.0.3")
    names = _lines(render_hosts(me, "10.88.0.2", [me, peer], [_headless(not_ready=False)], "10.88.0.1"))
    assert "job-node-1.job" not in names and "job" not in names


def test_no_peer_names_without_the_headless_service():
    me, peer = _pod("job-node-0", "10.88.0.2"), _pod("job-node-1", "10.88.0.3", ready=True)
    names = _lines(render_hosts(me, "10.88.0.2", [me, peer], [], "10.88.0.1"))
    assert "job-node-1.job" not in names
    assert names["kubernetes.default.svc"] == "10.88.0.1"


def test_other_namespaces_get_only_qualified_names():
    me = _pod("a", "10.88.0.2", subdomain=None, ns="x")
    peer = _pod("job-node-1", "10.88.0.3", ns="t", ready=True)
    names = _lines(render_hosts(me, "10.88.0.2", [me, peer], [_headless(ns="t")], "10.88.0.1"))
    assert names["job-node-1.job.t"] == "10.88.0.3" and names["job.t.svc"] == "10.88.0.3"
    assert "job-node-1.job" not in names and "job" not in names


def test_hostname_defaults_to_the_pod_name():
    assert pod_hostname({"metadata": {"name": "web-1"}, "spec": {}}) == "web-1"


def test_resolv_conf_searches_the_cluster_domains():
    assert "search t.svc.cluster.local svc.cluster.local cluster.local" in render_resolv_conf("t", "10.88.0.1")


def test_rewrites_keep_the_inode_a_bind_mount_pins(tmp_path):
    path = tmp_path / "hosts"
    assert write_in_place(path, "one\n")
    inode = path.stat().st_ino
    assert not write_in_place(path, "one\n")
    assert write_in_place(path, "two\n")
    assert path.stat().st_ino == inode and path.read_text() == "two\n"
