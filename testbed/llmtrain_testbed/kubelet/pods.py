"""One worker thread per pod: sandbox, init containers, containers, probes, restarts, status, deletion.

The worker is level-triggered: every tick (or when the watch says the pod changed) it compares what should run
with what runs, and writes the status it computes whenever that differs from what it wrote last.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import os
import shutil
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from .. import network
from . import dns
from .api import Api, ApiError
from .env import EnvError, PodFacts, container_argv, resolve_env
from .probes import ProbeTarget, ProbeTracker, new_tracker, probe_once
from .recovery import LOST_REASON, recover_container
from .runner import ContainerProcess, LaunchSpec, Mount
from .status import ContainerState, Terminated, pod_phase, pod_status, terminated_reason
from .volumes import Lookup, VolumeBuilder, VolumeError, unmount_under

log = logging.getLogger("testbed.kubelet.pods")

TICK_S = 0.25
MAX_BACKOFF_S = 10.0
BACKOFF_RESET_S = 60.0
MAX_TERMINATION_MESSAGE = 4096


def now_iso() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def backoff_delay(restarts: int) -> float:
    """1 s, 2 s, 4 s, 8 s, then 10 s: the kubelet's crash-loop back-off, capped short for a test bed."""
    return min(MAX_BACKOFF_S, 2.0 ** max(restarts, 0))


@dataclass(frozen=True)
class PodHost:
    """What a PodWorker needs from the kubelet that runs it, and nothing else.

    Like the real kubelet's pod workers (which get a sync function and an event recorder, not the kubelet), a
    worker sees only these values and callables: the Kubelet builds one for all its workers (`Kubelet.pod_host`),
    and a test can build one from plain functions.
    """

    api: Api  # the pod's status and final delete; the volume builder's PVC checks and TokenRequests
    state_dir: Path  # the pod's directory is <state_dir>/pods/<ns>_<name>_<uid>; PVC directories live here too
    host_ip: str  # the node's InternalIP: the pods' status.hostIP (also in the downward API) and nameserver
    allocatable: dict[str, str]  # the node's allocatable (resourceFieldRef without limits falls back to it)
    shutdown_grace_s: float  # the most a pod's processes get to exit when the kubelet stops
    stopping: Callable[[], bool]  # whether the kubelet is stopping (then the worker stops the pod and returns)
    allocate_ip: Callable[[str], str]  # pod uid -> a free pod IP, kept until release_ip(uid)
    release_ip: Callable[[str], None]
    lookup: Callable[[str, str], Lookup]  # (plural, namespace) -> name -> the ConfigMap/Secret, or None if absent
    render_hosts: Callable[[dict, str], str]  # (pod, pod IP) -> its /etc/hosts, from the cluster's pods and services
    base_env: Callable[[dict], dict[str, str]]  # pod -> the environment each of its containers starts from


class Container:
    """A container of this pod: its spec, its state, its current process and probes."""

    def __init__(self, spec: dict, init: bool) -> None:
        self.spec = spec
        self.name = spec["name"]
        self.init = init
        self.state = ContainerState(name=self.name, image=spec.get("image", ""))
        self.proc: ContainerProcess | None = None
        self.env: dict[str, str] = {}
        self.next_start = 0.0
        self.pending_restart = False  # the next start is a restart (restartCount + 1)
        self.started_mono = 0.0
        self.startup: ProbeTracker | None = None
        self.liveness: ProbeTracker | None = None
        self.readiness: ProbeTracker | None = None

    @property
    def running(self) -> bool:
        return self.proc is not None and self.state.running_since is not None

    def dir(self, pod_dir: Path) -> Path:
        return pod_dir / self.name


class PodWorker:
    """Runs one pod bound to one of our nodes, in its own thread, until it is deleted (or the kubelet stops)."""

    def __init__(self, host: PodHost, pod: dict) -> None:
        meta = pod["metadata"]
        self.thread = threading.Thread(target=self.run, name=f"pod-{meta['namespace']}/{meta['name']}", daemon=True)
        self.host = host
        self.pod = pod
        self.ns, self.pod_name, self.uid = meta["namespace"], meta["name"], meta["uid"]
        self.node = pod["spec"]["nodeName"]
        self.ctx = f"node={self.node} pod={self.ns}/{self.pod_name}"
        self.pod_dir = host.state_dir / "pods" / f"{self.ns}_{self.pod_name}_{self.uid}"
        self.wake = threading.Event()
        self.gone = False
        self.finished = threading.Event()
        self.finished_at = 0.0
        spec = pod["spec"]
        self.restart_policy = spec.get("restartPolicy", "Always")
        self.init_containers = [Container(c, True) for c in spec.get("initContainers") or []]
        self.containers = [Container(c, False) for c in spec.get("containers") or []]
        self.ip: str | None = None
        self.netns: str | None = None
        self.volumes: dict[str, Path] | None = None
        self.start_time = (pod.get("status") or {}).get("startTime") or now_iso()
        self.prev_conditions: list[dict] = (pod.get("status") or {}).get("conditions") or []
        self.last_sent: dict | None = None
        self.sandbox_error = ""
        self.next_sandbox_try = 0.0
        self.terminal_cleaned = False
        self.frozen = False  # a pod found terminal at start: its status is history, never rewritten

    # ----- inputs from the kubelet -----

    def start(self) -> None:
        self.thread.start()

    def update(self, pod: dict) -> None:
        self.pod = pod
        self.wake.set()

    def vanish(self) -> None:
        self.gone = True
        self.wake.set()

    # ----- main loop -----

    def run(self) -> None:
        log.info("%s: worker started", self.ctx)
        try:
            self._recover_previous_run()
            while True:
                if self.host.stopping():
                    self._stop_everything(min(self.host.shutdown_grace_s, self._grace()))
                    return
                if self.gone:
                    log.info("%s: pod vanished from the API; killing its processes", self.ctx)
                    self._stop_everything(0)
                    self._remove_pod_files()
                    return
                if self.pod["metadata"].get("deletionTimestamp"):
                    self._finalize_deletion()
                    return
                try:
                    self._step()
                    self._sync_status()
                except Exception:
                    log.exception("%s: sync failed; retrying", self.ctx)
                    self.wake.wait(1)
                self.wake.wait(TICK_S)
                self.wake.clear()
        except Exception:
            log.exception("%s: worker crashed; killing the pod's processes", self.ctx)
            self._stop_everything(0)
        finally:
            self.finished_at = time.monotonic()
            self.finished.set()

    def _grace(self) -> float:
        meta, spec = self.pod["metadata"], self.pod["spec"]
        grace = meta.get("deletionGracePeriodSeconds")
        if grace is None:
            grace = spec.get("terminationGracePeriodSeconds", 30)
        return float(grace)

    def phase(self) -> str:
        return pod_phase(
            self.restart_policy, [c.state for c in self.init_containers], [c.state for c in self.containers]
        )

    # ----- recovery after a kubelet restart -----

    def _recover_previous_run(self) -> None:
        """Adopt what a previous kubelet run reported (see recovery.py); terminal pods are left as they are."""
        status = self.pod.get("status") or {}
        self.ip = status.get("podIP")  # reported until a new sandbox gets a new address
        if status.get("phase") in ("Succeeded", "Failed"):
            self.frozen = True
            self.terminal_cleaned = True
            return
        previous = {
            s["name"]: s for s in (status.get("initContainerStatuses") or []) + (status.get("containerStatuses") or [])
        }
        now = now_iso()
        for container in [*self.init_containers, *self.containers]:
            prev = previous.get(container.name)
            if not prev:
                continue
            image = container.state.image
            container.state, container.pending_restart = recover_container(
                container.name, prev, init=container.init, restart_policy=self.restart_policy, now=now
            )
            container.state.image = image
            if any(
                t is not None and t.reason == LOST_REASON
                for t in (container.state.last_terminated, container.state.terminated)
            ):
                log.warning(
                    "%s container=%s: started by a previous kubelet run; its process is lost", self.ctx, container.name
                )

    # ----- one reconcile step -----

    def _step(self) -> None:
        if self.frozen:
            return
        if self.phase() in ("Succeeded", "Failed"):
            if not self.terminal_cleaned:
                log.info("%s: pod is %s; tearing down its sandbox", self.ctx, self.phase())
                self._stop_processes(0)
                self._teardown_sandbox(keep_ip=True)
                self.terminal_cleaned = True
            return
        if not self._ensure_sandbox():
            return
        pending_init = next((c for c in self.init_containers if not c.state.succeeded), None)
        if pending_init is not None:
            self._drive(pending_init)
            for container in self.containers:
                container.state.waiting_reason = "PodInitializing"
            return
        for container in self.containers:
            self._drive(container)

    def _ensure_sandbox(self) -> bool:
        if self.netns and self.volumes is not None:
            return True
        if time.monotonic() < self.next_sandbox_try:
            return False
        try:
            if not self.netns:
                self.pod_dir.mkdir(parents=True, exist_ok=True)
                self.ip = self.host.allocate_ip(self.uid)
                self.netns = network.create_pod_netns(self.uid, self.ip)
                self._write_dns_files()
                (self.pod_dir / "tmp").mkdir(exist_ok=True)
                os.chmod(self.pod_dir / "tmp", 0o1777)
                log.info("%s: sandbox ready with IP %s", self.ctx, self.ip)
            builder = VolumeBuilder(
                self.host.api,
                self.pod,
                self.pod_dir,
                self.host.state_dir,
                self._facts(),
                self.host.lookup("configmaps", self.ns),
                self.host.lookup("secrets", self.ns),
            )
            self.volumes = builder.build()
            self.sandbox_error = ""
            return True
        except (VolumeError, network.NetworkError, ApiError, OSError) as exc:
            self.sandbox_error = str(exc)
            log.warning("%s: cannot set up the pod yet: %s", self.ctx, exc)
            for container in [*self.init_containers, *self.containers]:
                container.state.waiting_reason, container.state.waiting_message = "ContainerCreating", str(exc)[:512]
            self.next_sandbox_try = time.monotonic() + 2
            return False

    def _facts(self) -> PodFacts:
        return PodFacts(pod_ip=self.ip or "", host_ip=self.host.host_ip, node_allocatable=self.host.allocatable)

    def _write_dns_files(self) -> None:
        self.refresh_hosts()
        dns.write_in_place(self.pod_dir / "resolv.conf", dns.render_resolv_conf(self.ns, self.host.host_ip))
        dns.write_in_place(self.pod_dir / "hostname", dns.pod_hostname(self.pod) + "\n")

    def refresh_hosts(self) -> None:
        """Rewrite this pod's hosts file in place if the cluster's pods/services changed it (DNS loop calls this)."""
        if self.ip and self.netns:
            dns.write_in_place(self.pod_dir / "hosts", self.host.render_hosts(self.pod, self.ip))

    # ----- containers -----

    def _drive(self, container: Container) -> None:
        now = time.monotonic()
        if container.proc is not None:
            code = container.proc.poll()
            if code is None:
                self._probe(container, now)
                return
            self._on_exit(container, code)
        if container.state.terminated is not None:
            return  # finished for good (not restarted per restartPolicy)
        if now >= container.next_start:
            self._start(container)

    def _start(self, container: Container) -> None:
        try:
            container.env = resolve_env(
                container.spec,
                self.pod,
                self.host.base_env(self.pod),
                self._facts(),
                self.host.lookup("configmaps", self.ns),
                self.host.lookup("secrets", self.ns),
            )
            argv = container_argv(container.spec, container.env)
            mounts = self._mounts(container)
        except (EnvError, VolumeError, ValueError) as exc:
            container.state.waiting_reason = "CreateContainerConfigError"
            container.state.waiting_message = str(exc)[:512]
            container.next_start = time.monotonic() + 2
            log.warning("%s container=%s: %s", self.ctx, container.name, exc)
            return
        if container.pending_restart:
            container.state.restart_count += 1
            container.pending_restart = False
        container_dir = container.dir(self.pod_dir)
        container_dir.mkdir(parents=True, exist_ok=True)
        (container_dir / "termination-log").write_bytes(b"")
        spec = LaunchSpec(
            argv=argv,
            env=container.env,
            hostname=dns.pod_hostname(self.pod),
            netns_path=str(network.NETNS_DIR / self.netns),
            mounts=mounts,
            working_dir=container.spec.get("workingDir"),
        )
        run_dir = container_dir / f"run-{container.state.restart_count}"
        shutil.rmtree(run_dir, ignore_errors=True)
        container.proc = ContainerProcess(spec, run_dir, container_dir / f"{container.state.restart_count}.log")
        container.started_mono = time.monotonic()
        container.state.running_since = now_iso()
        container.state.terminated = None
        container.state.waiting_reason, container.state.waiting_message = "", ""
        container.state.container_id = f"process://{container.proc.pid}"
        container.startup = new_tracker(container.spec.get("startupProbe"), None)
        container.liveness = new_tracker(container.spec.get("livenessProbe"), True)
        container.readiness = new_tracker(container.spec.get("readinessProbe"), False)
        container.state.started = container.startup is None
        container.state.ready = not container.init and container.readiness is None and container.state.started
        log.info(
            "%s container=%s: started pid %d (restart %d): %s",
            self.ctx,
            container.name,
            container.proc.pid,
            container.state.restart_count,
            " ".join(argv)[:200],
        )

    def _mounts(self, container: Container) -> list[Mount]:
        container_dir = container.dir(self.pod_dir)
        mounts = [
            Mount(str(self.pod_dir / "hosts"), "/etc/hosts"),
            Mount(str(self.pod_dir / "resolv.conf"), "/etc/resolv.conf"),
            Mount(str(self.pod_dir / "hostname"), "/etc/hostname"),
            Mount(str(self.pod_dir / "tmp"), "/tmp"),
            Mount(
                str(container_dir / "termination-log"),
                container.spec.get("terminationMessagePath") or "/dev/termination-log",
            ),
        ]
        for volume_mount in container.spec.get("volumeMounts") or []:
            if volume_mount["name"] not in (self.volumes or {}):
                raise VolumeError(f"volumeMount {volume_mount['mountPath']}: no volume named {volume_mount['name']!r}")
            source = self.volumes[volume_mount["name"]]
            if volume_mount.get("subPath"):
                source = source / volume_mount["subPath"]
                if not source.exists():
                    source.mkdir(parents=True)
            mounts.append(Mount(str(source), volume_mount["mountPath"], bool(volume_mount.get("readOnly"))))
        return sorted(mounts, key=lambda m: m.target.rstrip("/").count("/"))

    def _on_exit(self, container: Container, code: int) -> None:
        assert container.proc is not None
        container.proc.kill_tree()
        started = container.state.running_since or now_iso()
        message = self._termination_message(container, code)
        reason = terminated_reason(code)
        if code == 128 and message.startswith("launcher:"):
            reason = "StartError"
        term = Terminated(code, reason, started, now_iso(), message)
        log.info("%s container=%s: exited with %d (%s)", self.ctx, container.name, code, reason)
        container.proc = None
        container.state.running_since = None
        container.state.ready = False
        container.state.started = False
        restart = self.restart_policy == "Always" or (self.restart_policy == "OnFailure" and code != 0)
        if container.init:
            restart = code != 0 and self.restart_policy != "Never"
        if not restart:
            container.state.terminated = term
            container.state.ready = container.init and code == 0
            return
        ran_s = time.monotonic() - container.started_mono
        delay = 1.0 if ran_s >= BACKOFF_RESET_S else backoff_delay(container.state.restart_count)
        container.state.last_terminated = term
        container.state.terminated = None
        container.state.waiting_reason = "CrashLoopBackOff"
        container.pending_restart = True
        container.state.waiting_message = (
            f"back-off {delay:.0f}s restarting failed container={container.name} pod={self.pod_name}"
        )
        container.next_start = time.monotonic() + delay

    def _termination_message(self, container: Container, code: int) -> str:
        container_dir = container.dir(self.pod_dir)
        try:
            message = (
                (container_dir / "termination-log").read_bytes()[:MAX_TERMINATION_MESSAGE].decode(errors="replace")
            )
        except OSError:
            message = ""
        policy = container.spec.get("terminationMessagePolicy", "File")
        fallback = not message and code != 0 and policy == "FallbackToLogsOnError"
        if fallback or (code == 128 and not message):
            try:
                tail = (
                    (container_dir / f"{container.state.restart_count}.log")
                    .read_bytes()[-2048:]
                    .decode(errors="replace")
                )
            except OSError:
                tail = ""
            lines = tail.splitlines()[-80:]
            launcher = next((ln for ln in lines if ln.startswith("launcher:")), "")
            message = launcher if code == 128 and launcher else ("\n".join(lines) if fallback else "")
        return message

    def _probe(self, container: Container, now: float) -> None:
        assert container.proc is not None
        target = ProbeTarget(
            pod_ip=self.ip or "",
            pid=container.proc.pid,
            env=container.env,
            ports={p["name"]: int(p["containerPort"]) for p in container.spec.get("ports") or [] if p.get("name")},
            run_dir=container.dir(self.pod_dir),
        )
        if container.startup is not None and not container.state.started:
            if container.startup.due(now):
                ok, msg = probe_once(container.startup.probe, target)
                verdict = container.startup.observe(ok, msg, time.monotonic())
                if verdict is True:
                    container.state.started = True
                elif verdict is False:
                    log.info("%s container=%s: startup probe failed (%s); restarting", self.ctx, container.name, msg)
                    self._kill_for_restart(container)
                    return
            if not container.state.started:
                return
        if container.liveness is not None and container.liveness.due(now):
            ok, msg = probe_once(container.liveness.probe, target)
            if container.liveness.observe(ok, msg, time.monotonic()) is False:
                log.info("%s container=%s: liveness probe failed (%s); restarting", self.ctx, container.name, msg)
                self._kill_for_restart(container)
                return
        if container.readiness is not None and container.readiness.due(now):
            ok, msg = probe_once(container.readiness.probe, target)
            verdict = container.readiness.observe(ok, msg, time.monotonic())
            if bool(verdict) != container.state.ready:
                log.info("%s container=%s: readiness now %s (%s)", self.ctx, container.name, bool(verdict), msg)
        if not container.init:
            container.state.ready = container.state.started and (
                container.readiness is None or bool(container.readiness.result)
            )

    def _kill_for_restart(self, container: Container) -> None:
        assert container.proc is not None
        code = container.proc.stop(float(container.spec.get("terminationGracePeriodSeconds") or self._grace()))
        self._on_exit(container, 137 if code is None else code)

    # ----- status -----

    def _sync_status(self) -> None:
        if self.frozen:
            return
        status = pod_status(
            self.restart_policy,
            [c.state for c in self.init_containers],
            [c.state for c in self.containers],
            sandbox_ready=bool(self.netns),
            pod_ip=self.ip,
            host_ip=self.host.host_ip,
            start_time=self.start_time,
            prev_conditions=self.prev_conditions,
            now=now_iso(),
        )
        if status == self.last_sent:
            return
        try:
            self.host.api.merge_patch(
                f"/api/v1/namespaces/{self.ns}/pods/{self.pod_name}/status",
                {"metadata": {"uid": self.uid}, "status": status},
            )
        except ApiError as exc:
            if exc.status in (404, 409, 422):
                log.info("%s: status update refused (%s); the pod is gone", self.ctx, exc.status)
                self.gone = exc.status == 404
                return
            raise
        self.last_sent = status
        self.prev_conditions = status["conditions"]

    # ----- stopping -----

    def _stop_processes(self, grace_s: float) -> None:
        """SIGTERM every running container's process group, wait up to grace_s for all, then SIGKILL."""
        running = [c for c in [*self.init_containers, *self.containers] if c.proc is not None]
        for container in running:
            container.proc.signal_group(15)
        deadline = time.monotonic() + grace_s
        while any(c.proc.poll() is None for c in running) and time.monotonic() < deadline:
            time.sleep(0.05)
        for container in running:
            container.proc.kill_tree()
            code = container.proc.poll()
            container.state.terminated = Terminated(
                code if code is not None else 137,
                terminated_reason(code or 137),
                container.state.running_since or now_iso(),
                now_iso(),
                self._termination_message(container, code or 137),
            )
            container.state.running_since, container.state.ready, container.proc = None, False, None
        if running:
            log.info("%s: stopped %d container(s)", self.ctx, len(running))

    def _teardown_sandbox(self, keep_ip: bool = False) -> None:
        network.delete_pod_netns(self.uid)
        unmount_under(self.pod_dir)
        self.host.release_ip(self.uid)
        self.netns = None
        if not keep_ip:
            self.ip = None
        created = self.pod_dir / "host-created"
        if created.exists():
            for path in sorted(set(created.read_text().split()), key=len, reverse=True):
                with contextlib.suppress(OSError):
                    os.rmdir(path)

    def _stop_everything(self, grace_s: float) -> None:
        self._stop_processes(grace_s)
        self._teardown_sandbox(keep_ip=True)

    def _remove_pod_files(self) -> None:
        """Once the pod is gone: drop volumes, /tmp and overlay scratch; keep the logs for post-mortems."""
        shutil.rmtree(self.pod_dir / "volumes", ignore_errors=True)
        shutil.rmtree(self.pod_dir / "tmp", ignore_errors=True)
        for run_dir in self.pod_dir.glob("*/run-*"):
            shutil.rmtree(run_dir, ignore_errors=True)

    def _finalize_deletion(self) -> None:
        grace = self._grace()
        log.info("%s: deletion requested; stopping containers with %.0fs grace", self.ctx, grace)
        self._stop_everything(grace)
        try:
            self.last_sent = None
            self._sync_status()
        except Exception as exc:
            log.info("%s: last status update failed: %s", self.ctx, exc)
        try:
            self.host.api.delete(
                f"/api/v1/namespaces/{self.ns}/pods/{self.pod_name}",
                {"gracePeriodSeconds": 0, "preconditions": {"uid": self.uid}},
            )
            log.info("%s: deleted", self.ctx)
        except ApiError as exc:
            if exc.status not in (404, 409):
                log.warning("%s: final delete failed: %s", self.ctx, exc)
                return
        self._remove_pod_files()
